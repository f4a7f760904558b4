"""Pads `Mu2SlamInstance` rows into exactly the keyword arguments of `Mu2SlamForConditionalGeneration.forward`."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..configuration_mu2slam import Mu2SlamConfig
from ..vocabulary import IGNORE_INDEX, PAD_ID
from .objectives import Mu2SlamInstance

LAYOUT_NAMES = {(True, False): "speech", (False, True): "text", (True, True): "speech+text"}


def split_by_layout(instances: Sequence[Mu2SlamInstance]) -> list[list[Mu2SlamInstance]]:
    """Group instances that can share a batch (same encoder segments), in order of first appearance."""
    groups: dict[tuple[bool, bool], list[Mu2SlamInstance]] = {}
    for instance in instances:
        groups.setdefault(instance.layout, []).append(instance)
    return list(groups.values())


def _pad_1d(rows: Sequence[torch.Tensor], length: int, value, dtype: torch.dtype) -> torch.Tensor:
    """(B, length) tensor of the 1-D ``rows``, left-aligned, filled with ``value``."""
    padded = torch.full((len(rows), length), value, dtype=dtype)
    for index, row in enumerate(rows):
        padded[index, : row.shape[0]] = row
    return padded


def with_language_labels(batch: dict[str, torch.Tensor], only: bool = False) -> dict[str, torch.Tensor]:
    """A collated speech batch with `language_labels` (its source languages, the language-identification targets);
    with ``only``, just the speech and those labels (the forward then runs language identification alone). Batches
    without speech are returned as they are."""
    if "input_features" not in batch:
        return batch
    labels = {"language_labels": batch["src_lang_ids"]}
    if only:
        return {"input_features": batch["input_features"], "attention_mask": batch["attention_mask"], **labels}
    return {**batch, **labels}


def retrieval_pairs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A collated fine-tuning batch -> the keyword arguments of `Mu2SlamForRetrieval.forward`: each row's query
    (its clip, or for mt rows its source text) paired with its target text (the labels: transcript or translation,
    eos included) in its language."""
    if "labels" not in batch:
        raise ValueError("retrieval pairs a query with its target text: this batch has no labels.")
    text_mask = (batch["labels"] != IGNORE_INDEX).long()
    if "input_features" in batch:
        query = {"input_features": batch["input_features"]}
    elif "input_ids" in batch:
        query = {"source_input_ids": batch["input_ids"]}
    else:
        raise ValueError("retrieval pairs speech or a source text with its target: this batch has neither alone.")
    return {
        **query,
        "attention_mask": batch["attention_mask"],
        "input_ids": batch["labels"].masked_fill(text_mask == 0, PAD_ID),
        "text_attention_mask": text_mask,
        "src_lang_ids": batch["src_lang_ids"],
        "text_lang_ids": batch["tgt_lang_ids"],
    }


class Mu2SlamCollator:
    """List of `Mu2SlamInstance` -> dict of padded tensors named as the forward's parameters.

    Returns (B rows; T, L, U padded to the longest, or to ``pad_to_multiple_of``; S = speech_output_lengths(T)):
        input_features (B, T, F) zeros-padded and attention_mask (B, T): when the rows have speech;
        input_ids (B, L) pad-id-padded with attention_mask (text only) or text_attention_mask ([speech; text]);
        src_lang_ids (B,); text_lang_ids (B,) for [speech; text];
        speech_mlm_mask (B, S) bool: when some row masks speech;
        mlm_labels (B, S + L) in the encoder's layout (speech segment padded to S, then text), -100 padded:
            when some row has MLM targets;
        ctc_labels (B, C) -100 padded: when some row has CTC targets (rows without: all -100);
        decoder_input_ids (B, U) pad-id-padded, labels (B, U) -100 padded;
        tgt_lang_ids (B,), tgt_modality_ids (B,), example_weights (B,) float.

    All rows must have the same encoder segments (see `split_by_layout`).
    """

    def __init__(self, config: Mu2SlamConfig, pad_to_multiple_of: int | None = None):
        self.config = config
        self.pad_to_multiple_of = pad_to_multiple_of

    def _padded_length(self, length: int) -> int:
        multiple = self.pad_to_multiple_of
        return length if not multiple else -(-length // multiple) * multiple

    def __call__(self, instances: Sequence[Mu2SlamInstance]) -> dict[str, torch.Tensor]:
        if not instances:
            raise ValueError("Cannot collate an empty list of instances.")
        layouts = {instance.layout for instance in instances}
        if len(layouts) > 1:
            found = {
                LAYOUT_NAMES[layout]: sorted({i.objective for i in instances if i.layout == layout})
                for layout in layouts
            }
            raise ValueError(
                f"Instances with different encoder inputs cannot share a batch: {found}. Every row needs the same "
                "segments (speech, text, or [speech; text]); group them with `split_by_layout` first."
            )
        has_speech, has_text = layouts.pop()
        batch: dict[str, torch.Tensor] = {}
        speech_length = self._speech(instances, batch) if has_speech else 0
        text_length = self._text(instances, batch, has_speech) if has_text else 0
        batch["src_lang_ids"] = torch.tensor([i.src_lang_id for i in instances])
        if has_speech and has_text:
            batch["text_lang_ids"] = torch.tensor([i.text_lang_id for i in instances])
        self._mlm_labels(instances, batch, speech_length, text_length)
        self._decoder(instances, batch)
        self._ctc_labels(instances, batch)
        batch["tgt_lang_ids"] = torch.tensor([i.tgt_lang_id for i in instances])
        batch["tgt_modality_ids"] = torch.tensor([i.tgt_modality_id for i in instances])
        batch["example_weights"] = torch.tensor([i.example_weight for i in instances], dtype=torch.float32)
        return batch

    def _speech(self, instances: Sequence[Mu2SlamInstance], batch: dict) -> int:
        """Fills input_features, attention_mask and speech_mlm_mask; returns the padded S."""
        features = [i.input_features for i in instances]
        frames = self._padded_length(max(f.shape[0] for f in features))
        padded = torch.zeros(len(features), frames, self.config.num_mel_bins, dtype=features[0].dtype)
        for index, row in enumerate(features):
            padded[index, : row.shape[0]] = row
        batch["input_features"] = padded
        lengths = torch.tensor([f.shape[0] for f in features])
        batch["attention_mask"] = (torch.arange(frames) < lengths.unsqueeze(-1)).long()
        speech_length = int(self.config.speech_output_lengths(frames))
        if any(i.speech_mlm_mask is not None for i in instances):
            masks = [self._speech_row(i, i.speech_mlm_mask, "speech_mlm_mask") for i in instances]
            batch["speech_mlm_mask"] = _pad_1d(masks, speech_length, False, torch.bool)
        return speech_length

    def _speech_row(self, instance: Mu2SlamInstance, row: torch.Tensor | None, name: str) -> torch.Tensor:
        """A per-frame row (S,) of an instance, checked against its features; empty when absent."""
        frames = int(self.config.speech_output_lengths(instance.input_features.shape[0]))
        if row is None:
            return torch.zeros(0, dtype=torch.long)
        if row.shape != (frames,):
            raise ValueError(
                f"`{name}` of a {instance.objective!r} instance has shape {tuple(row.shape)}, but its "
                f"{instance.input_features.shape[0]} frames give {frames} speech positions."
            )
        return row

    def _text(self, instances: Sequence[Mu2SlamInstance], batch: dict, has_speech: bool) -> int:
        """Fills input_ids and their mask; returns the padded L."""
        ids = [i.input_ids for i in instances]
        length = self._padded_length(max(row.shape[0] for row in ids))
        batch["input_ids"] = _pad_1d(ids, length, self.config.pad_token_id, torch.long)
        lengths = torch.tensor([row.shape[0] for row in ids])
        batch["text_attention_mask" if has_speech else "attention_mask"] = (
            torch.arange(length) < lengths.unsqueeze(-1)
        ).long()
        return length

    def _mlm_labels(self, instances, batch: dict, speech_length: int, text_length: int) -> None:
        """(B, S + L) MLM targets: each row's speech part at [0, S_i), its text part at [S, S + L_i)."""
        if all(i.speech_mlm_labels is None and i.text_mlm_labels is None for i in instances):
            return
        labels = torch.full((len(instances), speech_length + text_length), IGNORE_INDEX, dtype=torch.long)
        for index, instance in enumerate(instances):
            if instance.speech_mlm_labels is not None:
                speech = self._speech_row(instance, instance.speech_mlm_labels, "speech_mlm_labels")
                labels[index, : speech.shape[0]] = speech
            if instance.text_mlm_labels is not None:
                text = instance.text_mlm_labels
                if text.shape != instance.input_ids.shape:
                    raise ValueError(
                        f"`text_mlm_labels` {tuple(text.shape)} of a {instance.objective!r} instance must match "
                        f"its input_ids {tuple(instance.input_ids.shape)}."
                    )
                labels[index, speech_length : speech_length + text.shape[0]] = text
        batch["mlm_labels"] = labels

    def _decoder(self, instances: Sequence[Mu2SlamInstance], batch: dict) -> None:
        for instance in instances:
            if instance.decoder_input_ids.shape != instance.labels.shape:
                raise ValueError(
                    f"A {instance.objective!r} instance has decoder_input_ids {tuple(instance.decoder_input_ids.shape)}"
                    f" but labels {tuple(instance.labels.shape)}."
                )
        length = self._padded_length(max(i.labels.shape[0] for i in instances))
        pad = self.config.pad_token_id
        batch["decoder_input_ids"] = _pad_1d([i.decoder_input_ids for i in instances], length, pad, torch.long)
        batch["labels"] = _pad_1d([i.labels for i in instances], length, IGNORE_INDEX, torch.long)

    def _ctc_labels(self, instances: Sequence[Mu2SlamInstance], batch: dict) -> None:
        if all(i.ctc_labels is None for i in instances):
            return
        rows = [i.ctc_labels if i.ctc_labels is not None else torch.zeros(0, dtype=torch.long) for i in instances]
        batch["ctc_labels"] = _pad_1d(rows, max(row.shape[0] for row in rows), IGNORE_INDEX, torch.long)
