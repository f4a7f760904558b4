"""Learning-rate schedules: the Transformer schedule (Vaswani et al. 2017) of Mu2SLAM pre-training and fine-tuning,
the same warmup followed by a decay to zero at the run's last step (linear or cosine) for runs of a known length, or
followed by a constant rate (for runs whose length is a time budget, with a weight average doing the annealing).
"""

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


DECAYS = ("inverse_sqrt", "linear", "cosine", "constant")


def decay_factor(step: int, warmup_steps: int, total_steps: int, decay: str = "inverse_sqrt") -> float:
    """The learning rate at 1-based ``step`` as a fraction of the peak: a linear warmup to 1 at ``warmup_steps``,
    then ``decay``: "inverse_sqrt" (``sqrt(warmup / step)``, never reaching 0), "linear" or "cosine" (to 0 at
    ``total_steps``), or "constant" (the peak)."""
    step = max(step, 1)
    if decay == "inverse_sqrt":
        return inverse_sqrt_factor(step, warmup_steps) / inverse_sqrt_factor(warmup_steps, warmup_steps)
    if decay not in DECAYS:
        raise ValueError(f"unknown decay {decay!r}; choose from {DECAYS}")
    if step <= warmup_steps:
        return step / warmup_steps
    if decay == "constant":
        return 1.0
    # Counted from the step after the warmup, so the last step still has a rate above 0.
    progress = min(1.0, (step - 1 - warmup_steps) / max(1, total_steps - warmup_steps))
    return 1.0 - progress if decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))


def transformer_schedule(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int | None = None, decay: str = "inverse_sqrt"
) -> LambdaLR:
    """LambdaLR multiplying each group's ``lr`` (set it to the PEAK rate) by :func:`decay_factor`.

    The optimizer's learning rate after ``k`` scheduler steps is that of 1-based step ``k + 1``. ``total_steps``
    (the run's ``max_steps``) is needed by the decays to zero.
    """
    if decay in ("linear", "cosine") and total_steps is None:
        raise ValueError(f"decay {decay!r} needs total_steps, the step at which the rate reaches 0")
    total = total_steps or warmup_steps
    return LambdaLR(optimizer, lambda step: decay_factor(step + 1, warmup_steps, total, decay))
