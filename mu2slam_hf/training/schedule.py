"""The Transformer learning-rate schedule (Vaswani et al. 2017), used by Mu2SLAM pre-training and fine-tuning."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def inverse_sqrt_factor(step: int, warmup_steps: int) -> float:
    """``min(step^-0.5, step * warmup^-1.5)`` at 1-based ``step`` (``step`` 0 counts as 1)."""
    step = max(step, 1)
    return min(step**-0.5, step * warmup_steps**-1.5)


def transformer_lr(step: int, d_model: int, warmup_steps: int, scale: float = 1.0) -> float:
    """``scale * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)``; peaks at ``step == warmup_steps``."""
    return scale * d_model**-0.5 * inverse_sqrt_factor(step, warmup_steps)


def peak_lr(d_model: int, warmup_steps: int, scale: float) -> float:
    """The schedule's largest learning rate: ``scale * (d_model * warmup)^-0.5``."""
    return scale / math.sqrt(d_model * warmup_steps)


def transformer_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int) -> LambdaLR:
    """LambdaLR multiplying each group's ``lr`` (set it to the PEAK rate) by the normalised schedule.

    The optimizer's learning rate after ``k`` scheduler steps is that of 1-based step ``k + 1``.
    """
    peak = inverse_sqrt_factor(warmup_steps, warmup_steps)
    return LambdaLR(optimizer, lambda step: inverse_sqrt_factor(step + 1, warmup_steps) / peak)
