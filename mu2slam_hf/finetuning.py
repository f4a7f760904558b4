"""Deprecated: moved to :mod:`mu2slam_hf.training.hf_trainer` (fine-tuning with transformers' `Trainer`)."""

import warnings

from .training.hf_trainer import *  # noqa: F403
from .training.hf_trainer import __all__  # noqa: F401

warnings.warn(
    "mu2slam_hf.finetuning is deprecated: import from mu2slam_hf.training.hf_trainer instead.",
    DeprecationWarning,
    stacklevel=2,
)
