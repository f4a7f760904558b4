"""Audio decoding without torchcodec/FFmpeg: ``soundfile`` (libsndfile: FLAC, WAV, OGG Vorbis/Opus, MP3)
to read, ``soxr`` to resample to 16 kHz, channels averaged to mono."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import soundfile as sf
import torch

from ..feature_extraction_mu2slam import read_audio, resample, to_mono_16k  # noqa: F401  (one reader, one resampler)
from ..vocabulary import SAMPLING_RATE
from .schema import DataError, OnError, handle_error


def speed_perturb(array: np.ndarray, factor: float, sampling_rate: int = SAMPLING_RATE) -> np.ndarray:
    """The clip played ``factor`` times faster (Kaldi's speed perturbation: tempo and pitch change together).

    Resampled from ``sampling_rate`` to ``sampling_rate / factor`` and read back at ``sampling_rate``, so a
    clip of N samples gets about N / factor. ``array``: (N,) float32 mono.
    """
    if factor == 1.0:
        return array
    rate = round(sampling_rate / factor)
    return resample(array, sampling_rate, rate)


def draw_speed_factors(speeds: Sequence[float], count: int, generator: torch.Generator | None) -> list[float]:
    """One speed factor per clip, drawn uniformly from ``speeds`` with ``generator`` (torch's global generator when
    None); 1.0 for every clip when ``speeds`` is empty."""
    if not speeds:
        return [1.0] * count
    draws = torch.randint(len(speeds), (count,), generator=generator).tolist()
    return [float(speeds[i]) for i in draws]


def write_flac(path: str | os.PathLike, array: np.ndarray, sampling_rate: int = SAMPLING_RATE) -> float:
    """Writes 16-bit FLAC (parent folders created) and returns the duration in seconds."""
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    sf.write(path, np.clip(array, -1.0, 1.0), sampling_rate, format="FLAC", subtype="PCM_16")
    return len(array) / sampling_rate


def convert_clip(job: tuple[str, str]) -> float | str:
    """Writes the audio file ``job[0]`` (any format soundfile reads, any rate, any channels) to ``job[1]`` as 16 kHz
    mono FLAC; returns its duration in seconds, or the reason it failed (a builder reports it and goes on)."""
    source, target = job
    try:
        array = read_audio(source)
    except Exception as error:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
        return f"{type(error).__name__}: {error}"
    return write_flac(target, array) if array.size else "empty audio"


def convert_clips(jobs: list[tuple[str, str]], num_workers: int = 2) -> dict[str, float | str]:
    """:func:`convert_clip` of every ``(source, target)`` in ``num_workers`` processes: ``{target: seconds or
    the reason it failed}``."""
    with ProcessPoolExecutor(max(1, num_workers)) as pool:
        results = pool.map(convert_clip, jobs, chunksize=16)
        return dict(zip((target for _, target in jobs), results, strict=True))


def decode_example(example: dict[str, Any], target_rate: int = SAMPLING_RATE) -> dict[str, Any]:
    """A copy of ``example`` whose ``audio`` is ``{"array", "sampling_rate", "path"}``.

    Raises :class:`DataError` (with the example's id) for a missing or unreadable file. Examples without
    audio, or already decoded at ``target_rate``, come back unchanged.
    """
    audio = example.get("audio")
    if not audio or (audio.get("array") is not None and audio.get("sampling_rate") == target_rate):
        return example
    eid, path = example.get("id", "<no id>"), audio.get("path")
    try:
        if audio.get("array") is not None:
            array = to_mono_16k(audio["array"], audio["sampling_rate"], target_rate)
        elif audio.get("bytes") is not None:
            array = read_audio(audio["bytes"], target_rate)
        elif path and not os.path.exists(path):
            raise DataError(eid, f"audio file not found: {path}")
        elif path:
            array = read_audio(path, target_rate)
        else:
            raise DataError(eid, "no audio to decode")
    except DataError:
        raise
    except Exception as error:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
        raise DataError(eid, f"unreadable audio {path or '<bytes>'}: {type(error).__name__}: {error}") from error
    if array.size == 0:
        raise DataError(eid, f"empty audio {path or '<bytes>'}")
    return {**example, "audio": {"array": array, "sampling_rate": target_rate, "path": path}}


def decode_examples(
    examples: Iterable[dict[str, Any]],
    on_error: OnError = "skip",
    report: Callable[[DataError], None] | None = None,
    target_rate: int = SAMPLING_RATE,
) -> Iterator[dict[str, Any]]:
    """Decodes each example's audio; bad examples are reported with their id and skipped, or raised."""
    for example in examples:
        try:
            yield decode_example(example, target_rate)
        except DataError as error:
            handle_error(error, on_error, report)
