"""Check a corpus once, before any work depends on it, and report every problem at once.

A manifest line is checked for what would otherwise stop a run later (at the step that first draws it): that it is a
JSON object of a known task (`manifest.iter_manifest_lines`), that it fits the schema with languages the model knows
(`schema.check_example`), and that its audio file exists, has a readable header and is long enough for the model.
Only the header is read (and the samples of float files, the only ones that can hold NaN/inf), so checking a corpus
costs a fraction of decoding it. A file cut short is found when its header promises more bytes than the file holds
(WAV, AIFF, W64, RF64); a cut FLAC or MP3 shows only when decoded (`read_audio` refuses it then).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

import soundfile as sf

from ..input_checks import audio_file_problem, non_finite_samples_problem
from .manifest import ManifestError, iter_manifest_lines, manifest_path
from .schema import DataError, check_example

# The model's shortest input: 7 log-mel frames of 25 ms every 10 ms (`Mu2SlamFeatureExtractor.min_num_samples`).
MIN_AUDIO_SECONDS = 0.085
# Problems listed in the error; the rest are counted.
MAX_LISTED = 20


class CorpusError(ValueError):
    """Problems found in a corpus; ``problems`` lists each as ``where: what`` (``file:line`` or ``split row N``)."""

    def __init__(
        self,
        data_dir: str | os.PathLike,
        problems: list[str],
        languages: Collection[str] | None,
        when: str = "nothing has been run yet",
    ):
        self.problems = problems
        listed = "\n".join(f"  - {problem}" for problem in problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        known = f" The model knows the languages {', '.join(languages)}." if languages is not None else ""
        super().__init__(
            f"{len(problems)} problem(s) in the corpus {data_dir}; {when}:\n{listed}{more}\n"
            f"Fix or remove these rows.{known}"
        )


def check_corpus(
    data_dir: str | os.PathLike,
    splits: Mapping[str, Collection[str]],
    languages: Collection[str] | None,
    optional_splits: Iterable[str] = (),
    min_audio_seconds: float = MIN_AUDIO_SECONDS,
    selected: Callable[[dict[str, Any]], bool] | None = None,
) -> None:
    """Raise a `CorpusError` listing every problem of the rows of ``splits`` (split -> the tasks that will be used).

    Rows of other tasks, and rows ``selected`` turns down (e.g. other language pairs), are only parsed. A missing
    manifest is a FileNotFoundError, unless its split is in ``optional_splits``. ``languages``: the codes the model
    knows (None: any code).
    """
    optional = set(optional_splits)
    problems: list[str] = []
    audio_checked: dict[str, str | None] = {}
    for split, tasks in splits.items():
        if split in optional and not os.path.exists(os.path.join(data_dir, f"{split}.jsonl")):
            continue
        path = manifest_path(data_dir, split)
        rows = (
            (f"{path}:{number}", row)
            for number, row in iter_manifest_lines(path)
            if selected is None or isinstance(row, ManifestError) or selected(row)
        )
        problems += row_problems(rows, tasks, languages, min_audio_seconds, audio_checked)
    if problems:
        raise CorpusError(data_dir, problems, languages)


def row_problems(
    rows: Iterable[tuple[str, dict[str, Any] | ManifestError]],
    tasks: Collection[str],
    languages: Collection[str] | None,
    min_audio_seconds: float = MIN_AUDIO_SECONDS,
    audio_checked: dict[str, str | None] | None = None,
) -> list[str]:
    """``where: what`` for every problem of ``(where, row)`` pairs in the canonical schema (see `check_corpus`)."""
    audio_checked = {} if audio_checked is None else audio_checked
    problems = []
    for where, row in rows:
        problem = _row_problem(row, tasks, languages, min_audio_seconds, audio_checked)
        if problem:
            problems.append(problem if isinstance(row, ManifestError) else f"{where}: {problem}")
    return problems


def _row_problem(
    row: dict[str, Any] | ManifestError,
    tasks: Collection[str],
    languages: Collection[str] | None,
    min_audio_seconds: float,
    audio_checked: dict[str, str | None],
) -> str | None:
    """What is wrong with one manifest row, or None (rows of tasks not in ``tasks`` only need to parse)."""
    if isinstance(row, ManifestError):
        return str(row)
    if row["task"] not in tasks:
        return None
    try:
        check_example(row, languages, check_files=True)
    except DataError as error:
        return str(error)
    audio = row.get("audio") or {}
    if audio.get("bytes") is not None:
        problem = _audio_problem(
            io.BytesIO(audio["bytes"]), min_audio_seconds, f"the audio bytes of {row.get('id')!r}"
        )
    elif audio.get("path"):
        if audio["path"] not in audio_checked:
            audio_checked[audio["path"]] = _audio_problem(audio["path"], min_audio_seconds)
        problem = audio_checked[audio["path"]]
    else:
        return None
    return f"example {row.get('id')!r}: {problem}" if problem else None


def _audio_problem(source: str | io.BytesIO, min_audio_seconds: float, name: str | None = None) -> str | None:
    """Whether an audio file's header reads, promises no more data than the file holds, and its clip is long enough
    (the samples are decoded only in float files, which alone can hold NaN/inf)."""
    path = name or source
    try:
        with sf.SoundFile(source) as sound:
            return _sound_problem(sound, str(path), min_audio_seconds)
    except Exception as error:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
        return f"unreadable audio {path} ({type(error).__name__}: {error})"


def _sound_problem(sound: sf.SoundFile, path: str, min_audio_seconds: float) -> str | None:
    if sound.frames == 0:
        return f"empty audio {path}"
    if sound.frames / sound.samplerate < min_audio_seconds:
        return (
            f"audio {path} lasts {1000 * sound.frames / sound.samplerate:.0f} ms, shorter than the model's "
            f"{1000 * min_audio_seconds:.0f} ms minimum"
        )
    return audio_file_problem(sound, path) or non_finite_samples_problem(sound, path)


__all__ = ["MIN_AUDIO_SECONDS", "CorpusError", "check_corpus", "row_problems"]
