"""Checks of what enters the package from outside, each failing with an error that names the problem and its fix.

- Tensors: `input_features` must be finite (`check_finite`, `FiniteCheck`), or the model returns empty text.
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

import numpy as np
import torch

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


# ----------------------------------------------------------------------------------------- saved folders


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
