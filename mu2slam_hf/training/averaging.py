"""An exponential moving average of the model's weights, evaluated and saved in place of the last iterate.

Short, noisy runs end on a point of the optimizer's walk, not at the bottom of the valley it walks in; an average
of the recent weights is closer to the bottom (Polyak averaging). ESPnet averages its last checkpoints, icefall
keeps an averaged model, NeMo an EMA: the same idea. This one is torch's `AveragedModel` with a decay that grows
from 0 to ``decay`` as ``(1 + n) / (10 + n)`` after ``n`` updates, so the first weights (an initialisation, or a
fine-tuning start) do not linger in the average for ``1 / (1 - decay)`` steps.
"""

from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel


def warmed_up_ema(decay: float):
    """The ``multi_avg_fn`` of an EMA whose decay is ``min(decay, (1 + n) / (10 + n))`` at the n-th update."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: int | torch.Tensor) -> None:
        n = int(num_averaged)
        weight = 1.0 - min(decay, (1.0 + n) / (10.0 + n))
        floating = [(a, c) for a, c in zip(averaged, current, strict=True) if a.is_floating_point()]
        if floating:
            torch._foreach_lerp_([a for a, _ in floating], [c for _, c in floating], weight)
        for a, c in zip(averaged, current, strict=True):
            if not a.is_floating_point():  # counters (BatchNorm's num_batches_tracked) follow the model
                a.copy_(c)

    return update


class WeightAverage(AveragedModel):
    """The EMA of `model`'s parameters and buffers: ``update_parameters(model)`` after each optimizer step;
    ``.module`` is a model of `model`'s class to evaluate and save. Its ``state_dict`` (a checkpoint's) holds the
    average and the number of updates, so a resumed run continues the same average."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"The weight average's decay must be in (0, 1), got {decay}.")
        super().__init__(model, multi_avg_fn=warmed_up_ema(decay), use_buffers=True)
        self.module.eval()
        self.module.requires_grad_(False)
        self.updates: int | None = None  # `n_averaged` on the host; read from the device once, after a load

    @torch.no_grad()
    def update_parameters(self, model: torch.nn.Module) -> None:
        """One update (the first copies `model`). `AveragedModel`'s own reads its device counter three times, and
        each read makes the host wait for the GPU to finish the step, so it cannot queue the next one meanwhile."""
        if self.updates is None:
            self.updates = int(self.n_averaged)
        averaged = [*self.module.parameters(), *self.module.buffers()]
        current = [
            t.detach().to(a.device) for a, t in zip(averaged, [*model.parameters(), *model.buffers()], strict=True)
        ]
        if self.updates == 0:
            torch._foreach_copy_(averaged, current)
        else:
            self.multi_avg_fn(averaged, current, self.updates)
        self.n_averaged += 1
        self.updates += 1

    def load_state_dict(self, state_dict, *args, **kwargs):
        self.updates = None
        return super().load_state_dict(state_dict, *args, **kwargs)


__all__ = ["WeightAverage", "warmed_up_ema"]
