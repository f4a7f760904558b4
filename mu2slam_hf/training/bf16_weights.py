"""A bf16 copy of the model for the forward and backward passes, against fp32 master weights.

Under bf16 autocast the weights stay fp32: each forward casts every weight to bf16 again, and everything outside the
matrix products (layer norms, activations, residual additions and their backward) runs on fp32 activations, cast
to bf16 before each product. For a small model on a CPU those casts and fp32 passes are a large part of a step.
fairseq's ``--bf16`` and Megatron's bf16 training run the model itself in bf16 instead and keep fp32 master weights
for the optimizer; so does this: the run's model (the one the optimizer updates, the weight average follows, dev
evaluates and checkpoints save) stays fp32, and a bf16 copy of it does the forward and backward passes. After each
backward its gradients are added into the masters' fp32 gradients; after each optimizer step the updated masters are
copied back into it. An update below a bf16 weight's resolution is not lost: it accumulates in the master.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from .recipe import RecipeError


class Bf16Weights:
    """``module``: a bf16 copy of ``master`` (same configuration object, so settings changed on the run's config,
    such as SpecAugment being switched on, reach both) on ``device``.

    Call ``gradients_to_master()`` after each backward and ``weights_from_master()`` after each optimizer step (and
    after ``master`` is loaded from a checkpoint)."""

    def __init__(self, master: torch.nn.Module, config: Any, device: torch.device):
        self.module = copy.deepcopy(master, memo={id(config): config}).to(device=device, dtype=torch.bfloat16)
        self.module.train(master.training)
        pairs = list(zip(master.parameters(), self.module.parameters(), strict=True))
        self._all_masters, self._all_copies = [m for m, _ in pairs], [c for _, c in pairs]
        trainable = [(m, c) for m, c in pairs if m.requires_grad]
        self._masters, self._copies = [m for m, _ in trainable], [c for _, c in trainable]

    @torch.no_grad()
    def gradients_to_master(self) -> None:
        """Add the copy's gradients into the masters' (fp32) and clear them; a master whose copy got no gradient
        keeps ``None``, as it would training in fp32 (the optimizer then leaves it as it is)."""
        for master, bf16 in zip(self._masters, self._copies, strict=True):
            if bf16.grad is None:
                continue
            if master.grad is None:
                master.grad = bf16.grad.to(torch.float32)
            else:
                master.grad.add_(bf16.grad)
            bf16.grad = None

    @torch.no_grad()
    def weights_from_master(self, trainable_only: bool = True) -> None:
        """Copy the masters into the bf16 weights (rounded to nearest); all of them with ``trainable_only=False``."""
        copies, masters = (self._copies, self._masters) if trainable_only else (self._all_copies, self._all_masters)
        torch._foreach_copy_(copies, masters)


def use_bf16_weights(
    setting: bool | str, mixed_precision: str | None, num_processes: int, device_type: str
) -> tuple[bool, str]:
    """(whether the run trains a bf16 copy against fp32 masters, why) for the recipe's ``bf16_weights``, given the
    run's resolved mixed precision, processes and device.

    ``auto`` turns it on where autocast runs bf16 on a CPU in one process: there the demo's stage 2 steps took 8%
    less time than with autocast alone, with the same losses to bf16 rounding. It needs bf16 autocast (the copy's
    products run in it) and one process (the copy's gradients would bypass DDP's synchronisation of the master's),
    so ``true`` without them is an error that says so."""
    if setting is False:
        return False, "bf16_weights: false"
    problems = []
    if mixed_precision != "bf16":
        problems.append(f"mixed_precision is {mixed_precision!r}, not bf16")
    if num_processes > 1:
        problems.append(f"{num_processes} processes (the bf16 copy's gradients would bypass DDP)")
    if setting is True:
        if problems:
            raise RecipeError(
                f"bf16_weights: true needs bf16 autocast in a single process, but {'; '.join(problems)}. Set "
                "mixed_precision: bf16 (or auto) and train in one process, or set bf16_weights: false."
            )
        return True, "bf16_weights: true"
    if device_type != "cpu":
        problems.append(f"the device is {device_type} (auto turns it on for CPUs, where it was measured)")
    if problems:
        return False, f"bf16_weights: auto -> off ({'; '.join(problems)})"
    return True, "bf16_weights: auto -> on (bf16 autocast on a CPU, one process)"


__all__ = ["Bf16Weights", "use_bf16_weights"]
