"""LoRA adapters through PEFT: add them for fine-tuning, fold them back in for saving and `pipeline()`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .modeling_mu2slam import Mu2SlamForConditionalGeneration

DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def add_lora(
    model: Mu2SlamForConditionalGeneration,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.05,
    target_modules: Sequence[str] = DEFAULT_LORA_TARGETS,
    modules_to_save: Sequence[str] | None = None,
) -> Any:
    """Wrap `model` in a PEFT LoRA model (adapters on every attention projection by default); only the adapters
    (and `modules_to_save`) are trainable. The result trains with `Seq2SeqTrainer` and has `generate`."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        modules_to_save=list(modules_to_save) if modules_to_save else None,
    )
    return get_peft_model(model, config)


def merge_lora(model: Any) -> Mu2SlamForConditionalGeneration:
    """Fold the LoRA adapters into the weights and return the plain model (not a `PeftModel`), which
    `pipeline("automatic-speech-recognition")` accepts and `save_pretrained` saves as a normal checkpoint."""
    return model.merge_and_unload()


__all__ = ["DEFAULT_LORA_TARGETS", "add_lora", "merge_lora"]
