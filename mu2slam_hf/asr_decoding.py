"""The one owner of a model's default ASR decoder: `AsrDecodingOptions`, saved in its generation_config.json.

Mu2SLAM transcribes with one of four decoders: the attention decoder alone, joint CTC/attention scoring, the CTC
head alone (its best path), or the CTC head's prefix beam search with a character n-gram language model fused in.
One `ctc_weight` picks the first three (0, between 0 and 1, 1); an attached language model with `lm_weight > 0`
makes the third the fourth. `generate`, `pipeline()`, evaluation, dev evaluation, the model card and the scripts
read the model's choice here and nowhere else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# ESPnet's usual CTC weight for joint CTC/attention decoding: the joint decoder dev evaluation scores.
JOINT_CTC_WEIGHT = 0.3
# What an attached n-gram language model is fused with until weights are chosen on dev (`set_asr_language_model`).
DEFAULT_LM_WEIGHT = 0.3
DEFAULT_LM_LENGTH_BONUS = 0.3
# Width of the CTC head's prefix beam search with a language model.
DEFAULT_CTC_BEAMS = 8
# The generation-config key of each field (a flat key each: what generation_config.json has always held).
GENERATION_CONFIG_KEYS = {
    "ctc_weight": "asr_ctc_weight",
    "lm_weight": "asr_lm_weight",
    "lm_length_bonus": "asr_lm_length_bonus",
    "ctc_beams": "asr_ctc_beams",
}


@dataclass(frozen=True)
class AsrDecodingOptions:
    """How `generate` transcribes when the call does not say (`generate(ctc_weight=..., lm_weight=...)` overrides).

    Args:
        ctc_weight: 0 the attention decoder alone, in (0, 1) joint CTC/attention scoring, 1 the CTC head alone;
            None when nothing chose one (a model whose run had no ASR dev results): the attention decoder.
        lm_weight / lm_length_bonus: per-token weight of the n-gram language model's log-probability and length
            bonus in the CTC head's prefix beam search (used only with an attached language model).
        ctc_beams: width of that beam search.
    """

    ctc_weight: float | None = None
    lm_weight: float = 0.0
    lm_length_bonus: float = 0.0
    ctc_beams: int = DEFAULT_CTC_BEAMS

    def __post_init__(self):
        if self.ctc_weight is not None and not 0.0 <= self.ctc_weight <= 1.0:
            raise ValueError(f"ctc_weight must be in [0, 1], got {self.ctc_weight}.")
        if self.lm_weight < 0 or self.lm_length_bonus < 0:
            raise ValueError(
                f"lm_weight and lm_length_bonus must be >= 0, got {self.lm_weight} and {self.lm_length_bonus}."
            )
        if isinstance(self.ctc_beams, bool) or not isinstance(self.ctc_beams, int) or self.ctc_beams < 1:
            raise ValueError(f"ctc_beams must be a positive integer, got {self.ctc_beams!r}.")

    @classmethod
    def from_generation_config(cls, generation_config: Any) -> AsrDecodingOptions:
        """The options saved in a generation config (a `GenerationConfig` or the dict of generation_config.json);
        defaults for the fields it lacks."""
        if isinstance(generation_config, Mapping):
            saved = {field: generation_config.get(key) for field, key in GENERATION_CONFIG_KEYS.items()}
        else:
            saved = {field: getattr(generation_config, key, None) for field, key in GENERATION_CONFIG_KEYS.items()}
        values = {field: value for field, value in saved.items() if value is not None}
        if "ctc_weight" in values:
            values["ctc_weight"] = float(values["ctc_weight"])
        for field in ("lm_weight", "lm_length_bonus"):
            values[field] = float(values.get(field) or 0.0)
        if "ctc_beams" in values:
            values["ctc_beams"] = int(values["ctc_beams"])
        return cls(**values)

    def save_to(self, generation_config: Any, *fields: str) -> None:
        """Write `fields` (default: all that are set) into `generation_config`, which `save_pretrained` saves as
        generation_config.json."""
        for field in fields or tuple(GENERATION_CONFIG_KEYS):
            value = getattr(self, field)
            if value is not None:
                setattr(generation_config, GENERATION_CONFIG_KEYS[field], value)
        # `from_pretrained` rebuilds a generation config marked as derived from the model config, dropping these.
        generation_config._from_model_config = False

    def replace(self, **changes: Any) -> AsrDecodingOptions:
        """A validated copy with `changes`."""
        return dataclasses.replace(self, **changes)

    @property
    def decoder(self) -> str:
        """The decoder: attention, joint or ctc (the CTC head, with its language model where `lm_weight` > 0)."""
        weight = self.ctc_weight or 0.0
        return "attention" if weight == 0.0 else "ctc" if weight == 1.0 else "joint"

    def default_ctc_weight(self) -> float:
        """`generate`'s CTC weight for ASR rows when the call gives none."""
        return self.ctc_weight or 0.0

    def ctc_search(
        self, lm_weight: float | None, length_bonus: float | None, num_beams: int | None, has_language_model: bool,
        greedy_beams: int,
    ) -> tuple[float, float, int]:  # fmt: skip
        """(lm_weight, length_bonus, num_beams) of the CTC head's search: the call's, else these options' where the
        model has a language model (and its weight is not 0), else no language model and `greedy_beams`."""
        if lm_weight is None:
            lm_weight = self.lm_weight if has_language_model else 0.0
        if length_bonus is None:
            length_bonus = self.lm_length_bonus if lm_weight else 0.0
        if num_beams is None:
            num_beams = self.ctc_beams if lm_weight else greedy_beams
        return lm_weight, length_bonus, num_beams

    def evaluation_options(self) -> dict[str, Any]:
        """The `evaluation.evaluate_model` options that decode ASR as these options do (a model without a chosen
        decoder: joint decoding at `JOINT_CTC_WEIGHT`)."""
        weight = JOINT_CTC_WEIGHT if self.ctc_weight is None else self.ctc_weight
        if weight != 1.0:
            return {"decoder": "attention", "ctc_weight": weight}
        return {"decoder": "ctc"} if self.lm_weight > 0 else {"decoder": "ctc", "lm_weight": 0.0}

    def describe(self, lm_weight: float | None = None) -> str:
        """The decoder in words (`lm_weight`: a weight the caller gives instead of these options')."""
        lm_weight = self.lm_weight if lm_weight is None else lm_weight
        if self.decoder == "attention":
            return "the attention decoder"
        if self.decoder == "ctc":
            return f"the CTC head with its n-gram LM (weight {lm_weight:g})" if lm_weight else "the CTC head"
        return f"joint CTC/attention (CTC weight {self.ctc_weight:g})"


__all__ = [
    "DEFAULT_CTC_BEAMS",
    "DEFAULT_LM_LENGTH_BONUS",
    "DEFAULT_LM_WEIGHT",
    "JOINT_CTC_WEIGHT",
    "AsrDecodingOptions",
]
