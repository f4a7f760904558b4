"""Per-task and per-objective loss accounting (for logging; the optimised loss is the model's own weighted sum).

For every batch row the model's output carries the decoder and encoder-MLM cross-entropies summed (unweighted) with
their token counts (``row_losses``);
``loss/<task>`` is then the token mean of the decoder loss plus that of the MLM loss over the rows made from that
task's data, and ``decoder_loss/<objective>`` / ``mlm_loss/<objective>`` split it by objective. Sums are reduced
over processes before the division, so every process logs the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..data.schema import TASKS
from ..instances import OBJECTIVE_WEIGHT_KEYS, Mu2SlamInstance

OBJECTIVES = (*OBJECTIVE_WEIGHT_KEYS, "finetune")
KEYS = tuple(f"task/{task}" for task in TASKS) + tuple(f"objective/{name}" for name in OBJECTIVES)
AUXILIARY_LOSSES = ("ctc", "language_id", "retrieval")  # logged as the mean over the batches that had them
TOTALS = (
    "loss", "ctc_loss", "ctc_batches", "language_id_loss", "language_id_batches", "retrieval_loss", "retrieval_batches",
    "micro_batches", "speech_seconds", "text_tokens",
)  # fmt: skip


class LossTracker:
    """Accumulates row statistics by task and objective, and running totals, until `summary` is called."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.rows = torch.zeros(len(KEYS), 4, dtype=torch.float64, device=self.device)
        self.totals = torch.zeros(len(TOTALS), dtype=torch.float64, device=self.device)

    def add_rows(self, instances: Sequence[Mu2SlamInstance], stats: torch.Tensor) -> None:
        """``stats``: the model output's ``row_losses`` (B, 4) of the batch made from ``instances``."""
        stats = stats.to(self.rows)
        for instance, row in zip(instances, stats, strict=True):
            self.rows[KEYS.index(f"task/{instance.task}")] += row
            self.rows[KEYS.index(f"objective/{instance.objective}")] += row

    def add_output(self, instances: Sequence[Mu2SlamInstance], outputs) -> None:
        """Everything the model's output of the batch made from ``instances`` tells: its rows' decoder and MLM
        losses, and its CTC, language-identification and retrieval losses."""
        row_losses = getattr(outputs, "row_losses", None)
        if row_losses is not None:
            self.add_rows(instances, row_losses)
        for name in AUXILIARY_LOSSES:
            value = getattr(outputs, f"{name}_loss", None)
            if value is not None:
                self.add_total(f"{name}_loss", value.detach())
                self.add_total(f"{name}_batches", 1)

    def add_total(self, name: str, value: float | torch.Tensor) -> None:
        """Adds ``value`` to a total; a tensor is added where it lives (on the tracker's device, reading it would make
        the host wait for the GPU: `summary` reads everything at once)."""
        if isinstance(value, torch.Tensor):
            value = value.to(self.totals.device)
        self.totals[TOTALS.index(name)] += value

    def summary(self, accelerator=None) -> dict[str, float]:
        """Reduced (summed over processes) means; resets the tracker."""
        rows, totals = self.rows, self.totals
        if accelerator is not None and accelerator.num_processes > 1:
            rows, totals = accelerator.reduce(rows.clone(), "sum"), accelerator.reduce(totals.clone(), "sum")
        summary: dict[str, float] = {}
        micro = max(totals[TOTALS.index("micro_batches")].item(), 1.0)
        summary["loss"] = totals[TOTALS.index("loss")].item() / micro
        for name in AUXILIARY_LOSSES:
            batches = totals[TOTALS.index(f"{name}_batches")].item()
            if batches:
                summary[f"{name}_loss"] = totals[TOTALS.index(f"{name}_loss")].item() / batches
        for key, (dec_sum, dec_count, mlm_sum, mlm_count) in zip(KEYS, rows.tolist(), strict=True):
            kind, name = key.split("/")
            decoder = dec_sum / dec_count if dec_count else None
            mlm = mlm_sum / mlm_count if mlm_count else None
            if kind == "task" and decoder is not None:
                summary[f"loss/{name}"] = decoder + (mlm or 0.0)
            if kind == "objective":
                if decoder is not None:
                    summary[f"decoder_loss/{name}"] = decoder
                if mlm is not None:
                    summary[f"mlm_loss/{name}"] = mlm
        summary["speech_seconds"] = totals[TOTALS.index("speech_seconds")].item()
        summary["text_tokens"] = totals[TOTALS.index("text_tokens")].item()
        self.reset()
        return summary
