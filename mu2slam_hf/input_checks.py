"""Checks of what enters the package from outside, each failing with an error that names the problem and its fix.

- Tensors: `input_features` must be finite (`check_finite`, `FiniteCheck`), or the model returns empty text. Every
  forward and `generate` check ids, languages and audio lengths (`RangeCheck`, `check_speech_inputs`) and gather the
  value checks in `check_ranges`: reading their results costs one device-to-host sync, so inputs are checked where
  they enter a forward, never per layer or per decoding step.
- Saved folders: each writer records the sha256 of the files it wrote in ``checksums.json`` (`record_checksums`),
  and loading compares them (`verify_checksums`): random bytes inside a safetensors file or an edited tokenizer.json
  keep the file's size and header, so nothing else would notice. Weights must also be finite (`check_finite_weights`).
  ``check_integrity=False`` (a `from_pretrained` argument) or the environment variable
  ``MU2SLAM_SKIP_INTEGRITY_CHECKS=1`` skips both.
- Audio files: a file cut short keeps its header, and libsndfile decodes what is left without an error
  (`audio_file_problem`, `decoded_length_problem`); float files can hold NaN/inf samples (`non_finite_samples_problem`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from transformers.utils.generic import TransformersKwargs

from .vocabulary import IGNORE_INDEX, UNKNOWN_LANGUAGE_ID

if TYPE_CHECKING:
    from .configuration_mu2slam import Mu2SlamConfig

CHECKSUMS_NAME = "checksums.json"
SKIP_ENV = "MU2SLAM_SKIP_INTEGRITY_CHECKS"
# The files each writer records, as fnmatch patterns: a writer replaces its own entries and keeps the others'.
WEIGHT_FILES = ("model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json",)
_READ_BLOCK = 1 << 20
# libsndfile's header log notes a chunk that claims more bytes than the file holds: "data : 96000 (should be 47978)".
_SHORT_CHUNK = re.compile(r"^\s*([A-Za-z][\w ]*?)\s*:\s*(\d+) \(should be (\d+)\)", re.MULTILINE)
# A chunk this many bytes short of its header is a file cut short; less is a writer's off-by-a-few size field.
MIN_MISSING_BYTES = 1024
# Sizes streaming writers put in a header before they know the length (0xFFFFFFFF, sox's 0x7FFFF000, ...).
_UNKNOWN_LENGTH = 0x7FFF0000
# A decoder may give a little less than the header's frame count (MP3 padding); more missing is a cut file.
MAX_MISSING_FRACTION = 0.01


# ------------------------------------------------------------------------------------------------ tensors


def check_finite(values: torch.Tensor | None, name: str = "input_features") -> None:
    """Raise a ValueError when ``values`` (any shape) holds NaN or inf. One host sync: call it where inputs enter."""
    check = FiniteCheck(name, values)
    if check.ids is not None and check.ids.numel() and bool(check.invalid().any()):
        raise check.error()


@dataclass
class FiniteCheck:
    """Values that must be finite, checked with the forward's `RangeCheck`s (`check_ranges`: one host sync for all).

    ``ids`` is the name `check_ranges` reads; here it holds float values such as `input_features` (B, T, F).
    """

    name: str
    ids: torch.Tensor | None

    def invalid(self) -> torch.Tensor:
        return ~torch.isfinite(self.ids)

    def error(self) -> ValueError:
        bad = int(self.invalid().sum())
        return ValueError(
            f"`{self.name}` holds {bad} NaN or inf value(s) of {self.ids.numel()}: the model would answer with empty "
            "or random text. Check the audio and how the features were made (`Mu2SlamFeatureExtractor` refuses "
            "NaN/inf audio); replace or drop these inputs."
        )


# --------------------------------------------------------------------------------------------- forward inputs


def resolve_language_ids(
    config: Mu2SlamConfig, lang_ids: torch.Tensor | None, batch: int, device: torch.device, role: str
) -> torch.Tensor:
    """(B,) language ids, defaulting to the only language of a one-language model (not range-checked here:
    `language_check` does that once per forward, together with the other checks)."""
    if lang_ids is None:
        if config.num_languages == 1:
            return torch.zeros(batch, dtype=torch.long, device=device)
        raise ValueError(
            f"`{role}` is required: this model knows {config.num_languages} languages ({', '.join(config.languages)}). "
            "Pass a (batch,) tensor of language ids (`config.language_id(code)`), or `src_lang=`/`tgt_lang=` codes "
            "to `generate`."
        )
    return torch.as_tensor(lang_ids, device=device).long().reshape(-1).expand(batch)


@dataclass
class RangeCheck:
    """Values that must lie in [low, high) (or be -100 where `allow_ignore`), and the error naming them.

    `kind` picks the message: "token" ids, "language" ids, or "frames" (utterance lengths in log-mel frames).
    """

    name: str
    ids: torch.Tensor | None
    high: int
    allow_ignore: bool = False
    kind: str = "token"
    low: int = 0

    def invalid(self) -> torch.Tensor:
        valid = (self.ids >= self.low) & (self.ids < self.high)
        if self.allow_ignore:
            valid |= self.ids == IGNORE_INDEX
        return ~valid

    def error(self) -> ValueError:
        bad = self.ids[self.invalid()].unique()[:8].tolist()
        if self.kind == "frames":
            return ValueError(
                f"Audio too short: an utterance has {min(bad)} log-mel frames, fewer than the {self.low} the speech "
                f"front end needs (about {(self.low - 1) * 10 + 25} ms at a 10 ms hop). Drop or pad such clips "
                "before batching."
            )
        if self.kind == "language":
            unknown = f" or {UNKNOWN_LANGUAGE_ID} (language unknown)" if self.low < 0 else ""
            return ValueError(
                f"`{self.name}` holds ids outside [0, {self.high}){unknown}: {bad}. "
                "Map language codes with `config.language_id(code)`."
            )
        return ValueError(
            f"`{self.name}` holds ids outside the model's vocabulary [0, {self.high}): {bad}. Was it made by a "
            "tokenizer for another model? The tokenizer's vocabulary must match `config.text_vocab_size`."
        )


def check_ranges(*checks: RangeCheck) -> None:
    """Raise the first failing check's ValueError. All checks cost one device-to-host sync together, which is
    why inputs are checked where they enter a forward, never per layer or per decoding step."""
    present = [check for check in checks if check.ids is not None and check.ids.numel()]
    if not present:
        return
    failed = torch.stack([check.invalid().any() for check in present]).tolist()
    for check, is_bad in zip(present, failed, strict=True):
        if is_bad:
            raise check.error()


# What every forward takes besides its named arguments: transformers' shared keyword arguments (output_attentions,
# output_hidden_states, num_items_in_batch, the attention kernels' arguments), passed down to the attention
# functions as transformers' own models do. Any other key is a TypeError: a misspelt `label=` would otherwise
# train without a loss, silently.
FORWARD_KWARGS = frozenset(TransformersKwargs.__annotations__)


def check_forward_kwargs(module: nn.Module, kwargs: dict) -> None:
    """Raise a TypeError naming the keyword arguments `module.forward` does not take."""
    unknown = sorted(set(kwargs) - FORWARD_KWARGS)
    if unknown:
        raise TypeError(
            f"{type(module).__name__}.forward() got unexpected keyword argument(s) {unknown}. It takes its named "
            f"arguments and transformers' shared ones ({', '.join(sorted(FORWARD_KWARGS))})."
        )


def language_check(
    config: Mu2SlamConfig, lang_ids: torch.Tensor | None, role: str, allow_unknown: bool = False
) -> RangeCheck:
    """Language ids in [0, num_languages); the encoder also takes `UNKNOWN_LANGUAGE_ID` (no language embedding)."""
    low = UNKNOWN_LANGUAGE_ID if allow_unknown else 0
    return RangeCheck(role, lang_ids, config.num_languages, kind="language", low=low)


def check_speech_inputs(
    config: Mu2SlamConfig, input_features: torch.Tensor, attention_mask: torch.Tensor | None
) -> RangeCheck:
    """Clear errors for features of the wrong shape and mismatched masks; returns the check of audio too short for
    the front end, to run with the forward's other value checks (one host sync)."""
    if input_features.ndim != 3 or input_features.shape[-1] != config.num_mel_bins:
        hint = ""
        if input_features.ndim == 3 and input_features.shape[1] == config.num_mel_bins:
            hint = " It looks transposed (batch, mel, frames): use `input_features.transpose(1, 2)`."
        raise ValueError(
            f"`input_features` must have shape (batch, frames, {config.num_mel_bins}) log-mel features, got "
            f"{tuple(input_features.shape)}.{hint} Use the model's Mu2SlamFeatureExtractor."
        )
    lengths = (
        attention_mask.long().sum(-1)
        if attention_mask is not None
        else torch.full(input_features.shape[:1], input_features.shape[1], device=input_features.device)
    )
    if attention_mask is not None and attention_mask.shape != input_features.shape[:2]:
        raise ValueError(
            f"`attention_mask` has shape {tuple(attention_mask.shape)} but `input_features` has "
            f"{tuple(input_features.shape[:2])} (batch, frames)."
        )
    return RangeCheck("input lengths", lengths, 2**62, kind="frames", low=config.min_input_frames)


# ------------------------------------------------------------------------------------------------ saved folders


def integrity_checks_enabled(check_integrity: bool = True) -> bool:
    """Whether loading verifies checksums and finite weights: the argument, unless the environment skips it."""
    return check_integrity and os.environ.get(SKIP_ENV, "").strip().lower() not in ("1", "true", "yes")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_READ_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def read_checksums(folder: str | os.PathLike) -> dict[str, str]:
    """{file name: sha256} recorded in ``folder``'s checksums.json; {} when there is none."""
    path = os.path.join(os.fspath(folder), CHECKSUMS_NAME)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            return dict(json.load(handle)["sha256"])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{path} is damaged ({type(error).__name__}: {error}). Save the model and processor again with "
            f"`save_pretrained`, or delete {CHECKSUMS_NAME} to load the folder without checksums."
        ) from error


def record_checksums(folder: str | os.PathLike, patterns: Iterable[str]) -> None:
    """Record the sha256 of the files of ``folder`` matching ``patterns`` (the files one writer owns), replacing that
    writer's earlier entries and keeping the others'."""
    folder, patterns = os.fspath(folder), tuple(patterns)
    try:
        recorded = read_checksums(folder)
    except ValueError:  # a damaged checksums.json: the other writers' entries are lost, theirs pass unchecked
        recorded = {}
    checksums = {name: digest for name, digest in recorded.items() if not _matches(name, patterns)}
    for name in sorted(os.listdir(folder)):
        if _matches(name, patterns) and os.path.isfile(os.path.join(folder, name)):
            checksums[name] = file_sha256(os.path.join(folder, name))
    temporary = os.path.join(folder, f".{CHECKSUMS_NAME}.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump({"sha256": dict(sorted(checksums.items()))}, handle, indent=2)
        handle.write("\n")
    os.replace(temporary, os.path.join(folder, CHECKSUMS_NAME))  # never a half-written file


def verify_checksums(folder: str | os.PathLike, patterns: Iterable[str], check_integrity: bool = True) -> None:
    """Raise a ValueError naming each file of ``folder`` (among ``patterns``) whose sha256 differs from the recorded
    one. Files without a record (folders saved before checksums, or copied in by hand) pass; so do Hub ids."""
    folder, patterns = os.fspath(folder), tuple(patterns)
    if not (integrity_checks_enabled(check_integrity) and os.path.isdir(folder)):
        return
    changed = [
        name
        for name, digest in read_checksums(folder).items()
        if _matches(name, patterns)
        and os.path.isfile(os.path.join(folder, name))
        and file_sha256(os.path.join(folder, name)) != digest
    ]
    if changed:
        raise ValueError(
            f"{', '.join(changed)} in {folder} is corrupt or truncated, or was changed after it was saved: its sha256 "
            f"differs from the one recorded in {CHECKSUMS_NAME} when it was written. A changed tokenizer.json no longer "
            "matches the model's embeddings. Re-download or re-save the folder (a training run's checkpoint-<step> "
            "folders are untouched). If the change is intended, save it again with `save_pretrained`, which records "
            f"the new checksum, or skip the check with `check_integrity=False` or {SKIP_ENV}=1."
        )


def check_finite_weights(model: torch.nn.Module, folder: str | os.PathLike, check_integrity: bool = True) -> None:
    """Raise a ValueError when a loaded parameter holds NaN or inf, naming the weights file(s) and parameters."""
    if not integrity_checks_enabled(check_integrity):
        return
    bad = [name for name, parameter in model.named_parameters() if not torch.isfinite(parameter).all()]
    if bad:
        folder = os.fspath(folder)
        names = (
            [name for name in sorted(os.listdir(folder)) if _matches(name, WEIGHT_FILES)]
            if os.path.isdir(folder)
            else []
        )
        files = ", ".join(os.path.join(folder, name) for name in names if name.endswith(".safetensors")) or folder
        raise ValueError(
            f"The weights in {files} hold NaN or inf in {len(bad)} tensor(s) (e.g. {bad[:3]}): the file is corrupt, "
            "or was saved from a run whose loss diverged. Load an earlier checkpoint-<step> folder or re-download "
            f"the model; `check_integrity=False` (or {SKIP_ENV}=1) loads it anyway."
        )


# -------------------------------------------------------------------------------------------------- audio


def audio_file_problem(sound, name: str) -> str | None:
    """Whether an open ``soundfile.SoundFile``'s header promises more data than the file holds (a file cut short,
    which libsndfile decodes to its end without an error). Only the header is read."""
    for chunk, declared, actual in _SHORT_CHUNK.findall(sound.extra_info):
        declared, actual = int(declared), int(actual)
        if declared - actual >= MIN_MISSING_BYTES and declared < _UNKNOWN_LENGTH:
            return (
                f"audio {name} is cut short: its header says the {chunk.strip()} chunk holds {declared} bytes, the "
                f"file has {actual}. Re-encode or re-download the file"
            )
    return None


def decoded_length_problem(decoded: int, declared: int, name: str) -> str | None:
    """Whether fewer frames were decoded than the header's frame count promised (beyond a decoder's padding)."""
    if declared > 0 and declared - decoded > MAX_MISSING_FRACTION * declared:
        return (
            f"audio {name} is cut short or corrupt: its header says {declared} frames, only {decoded} decode. "
            "Re-encode or re-download the file"
        )
    return None


def non_finite_samples_problem(sound, name: str) -> str | None:
    """Whether a float-sample file (WAV/AIFF FLOAT or DOUBLE) holds NaN or inf; integer and compressed formats
    cannot, so only float files are decoded."""
    if sound.subtype not in ("FLOAT", "DOUBLE"):
        return None
    sound.seek(0)
    bad = sum(int(np.count_nonzero(~np.isfinite(block))) for block in sound.blocks(blocksize=_READ_BLOCK))
    sound.seek(0)
    if bad:
        return f"audio {name} holds {bad} NaN or inf sample(s): re-export it from its source or drop the row"
    return None


__all__ = [
    "CHECKSUMS_NAME",
    "SKIP_ENV",
    "TOKENIZER_FILES",
    "WEIGHT_FILES",
    "FiniteCheck",
    "audio_file_problem",
    "check_finite",
    "check_finite_weights",
    "decoded_length_problem",
    "integrity_checks_enabled",
    "non_finite_samples_problem",
    "read_checksums",
    "record_checksums",
    "verify_checksums",
]
