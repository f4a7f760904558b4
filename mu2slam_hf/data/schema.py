"""The canonical example schema shared by every corpus, builder, loader and the mixture.

Every example, whatever its source, is a flat dict with these fields (``datasets`` features in
:data:`FEATURES`)::

    id            str         unique within its corpus, used in every error message
    task          str         one of TASKS: "speech" (speech-only), "text" (text-only), "asr", "ast", "mt"
    audio         dict|None   {"path": str|None, "bytes": bytes|None} before decoding (None for text/mt);
                              {"array": float32 ndarray, "sampling_rate": 16000, "path": ...} after
                              :func:`mu2slam_hf.data.audio.decode_example`
    source_text   str|None    text-only: the text; mt: the source sentence; asr/ast: the transcript of the
                              audio when known; speech-only: None
    target_text   str|None    the label: asr: the transcript; ast/mt: the translation; otherwise None
    source_lang   str         ISO 639-1 code of the audio / source text
    target_lang   str|None    ISO 639-1 code of target_text (asr: equal to source_lang)
    duration      float|None  audio length in seconds when known (used for length bucketing)
    speaker       str|None    speaker / voice id when known

The label of a labelled example is always ``target_text``; the input is the audio (speech tasks) or
``source_text`` (text tasks).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import datasets

from ..vocabulary import DEFAULT_LANGUAGES

TASKS = ("speech", "text", "asr", "ast", "mt")
SPEECH_TASKS = ("speech", "asr", "ast")
SPEECH_TEXT_TASKS = ("asr", "ast")  # speech in, text out: the speech tasks with a target
TEXT_TASKS = ("text", "mt")
LABELLED_TASKS = ("asr", "ast", "mt")
OnError = Literal["skip", "raise"]

FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "task": datasets.Value("string"),
        "audio": {"path": datasets.Value("string"), "bytes": datasets.Value("binary")},
        "source_text": datasets.Value("string"),
        "target_text": datasets.Value("string"),
        "source_lang": datasets.Value("string"),
        "target_lang": datasets.Value("string"),
        "duration": datasets.Value("float32"),
        "speaker": datasets.Value("string"),
    }
)
FIELDS = tuple(FEATURES)


def target_language(example: dict[str, Any]) -> str:
    """The language the model should produce for an example: the source language for ASR (and unlabelled data),
    else ``target_lang`` (falling back to the source language when it is missing). The one place this default
    lives: training instances, the Trainer collator, evaluation and dev decoding all call it."""
    if example["task"] == "asr":
        return example["source_lang"]
    return example.get("target_lang") or example["source_lang"]


class DataError(ValueError):
    """A bad example: the message starts with the example's id."""

    def __init__(self, example_id: str, reason: str):
        super().__init__(f"example {example_id!r}: {reason}")
        self.example_id = example_id
        self.reason = reason


def make_example(
    id: str,
    task: str,
    source_lang: str,
    *,
    audio: str | dict | None = None,
    source_text: str | None = None,
    target_text: str | None = None,
    target_lang: str | None = None,
    duration: float | None = None,
    speaker: str | None = None,
) -> dict[str, Any]:
    """Builds one example in the canonical schema; ``audio`` may be a path or a ``{"path", "bytes"}`` dict."""
    if isinstance(audio, str):
        audio = {"path": audio, "bytes": None}
    elif isinstance(audio, dict):
        audio = {"path": audio.get("path"), "bytes": audio.get("bytes")}
    if task == "asr" and target_lang is None:
        target_lang = source_lang
    return {
        "id": str(id),
        "task": task,
        "audio": audio,
        "source_text": source_text,
        "target_text": target_text,
        "source_lang": source_lang,
        "target_lang": target_lang,
        "duration": None if duration is None else float(duration),
        "speaker": None if speaker is None else str(speaker),
    }


def check_example(
    example: dict[str, Any], languages: Iterable[str] | None = DEFAULT_LANGUAGES, check_files: bool = False
) -> None:
    """Raises :class:`DataError` when the example breaks the schema (audio files are not decoded here).

    Checks: known task, audio present for speech tasks (and its file existing when ``check_files``),
    non-empty texts where the task needs them, and language codes in ``languages`` (``None``: any code).
    """
    eid, task = example.get("id", "<no id>"), example.get("task")
    if task not in TASKS:
        raise DataError(eid, f"unknown task {task!r}; expected one of {TASKS}")
    if task in SPEECH_TASKS and not _has_audio(example.get("audio")):
        raise DataError(eid, "no audio (neither a path, bytes nor an array)")
    audio = example.get("audio") or {}
    if check_files and audio.get("bytes") is None and audio.get("array") is None:
        if audio.get("path") and not os.path.exists(audio["path"]):
            raise DataError(eid, f"audio file not found: {audio['path']}")
    if task in ("text", "mt") and not (example.get("source_text") or "").strip():
        raise DataError(eid, "empty source text")
    if task in LABELLED_TASKS and not (example.get("target_text") or "").strip():
        raise DataError(eid, "empty target text / transcript")
    langs = set(languages) if languages is not None else None
    for key in ("source_lang", "target_lang") if task in LABELLED_TASKS else ("source_lang",):
        code = example.get(key)
        if not code or (langs is not None and code not in langs):
            raise DataError(eid, f"unknown language {key}={code!r}")


def _has_audio(audio: Any) -> bool:
    if not isinstance(audio, dict):
        return False
    return bool(audio.get("path")) or audio.get("bytes") is not None or audio.get("array") is not None


def handle_error(error: DataError, on_error: OnError, report: Callable[[DataError], None] | None = None) -> None:
    """Reports ``error`` (through ``report`` or a log warning) when skipping, re-raises it otherwise."""
    if on_error == "raise":
        raise error
    if on_error != "skip":
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    if report is not None:
        report(error)
    else:
        datasets.utils.logging.get_logger("mu2slam_hf.data").warning("skipping bad %s", error)


def filter_valid(
    examples: Iterable[dict[str, Any]],
    on_error: OnError = "skip",
    languages: Iterable[str] | None = DEFAULT_LANGUAGES,
    report: Callable[[DataError], None] | None = None,
    check_files: bool = False,
) -> Iterator[dict[str, Any]]:
    """Yields the examples that pass :func:`check_example`; bad ones are reported and skipped, or raised."""
    langs = tuple(languages) if languages is not None else None
    for example in examples:
        try:
            check_example(example, langs, check_files)
        except DataError as error:
            handle_error(error, on_error, report)
            continue
        yield example


def to_dataset(examples: Iterable[dict[str, Any]], chunk_size: int = 10_000) -> datasets.Dataset:
    """An in-memory ``datasets.Dataset`` with the canonical :data:`FEATURES`.

    Rows are converted ``chunk_size`` at a time, so a large corpus never exists as a list of Python dicts (several
    times the size of its Arrow table) and ``examples`` can be a generator reading a file.
    """
    iterator, chunks = iter(examples), []
    while chunk := list(itertools.islice(iterator, chunk_size)):
        chunks.append(datasets.Dataset.from_list(chunk, features=FEATURES))
    if not chunks:
        return datasets.Dataset.from_dict({k: [] for k in FIELDS}, features=FEATURES)
    return chunks[0] if len(chunks) == 1 else datasets.concatenate_datasets(chunks)


def column_values(source: Any, name: str) -> list[Any]:
    """The values of column ``name`` of ``source`` (a ``datasets.Dataset`` or a sequence of dicts), in order.

    A ``datasets.Dataset`` is read as one Arrow column: iterating ``dataset[name]`` formats the rows one by one, about
    a hundred times slower on a corpus of hundreds of thousands of rows (seconds per column).
    """
    if isinstance(source, datasets.Dataset):
        return source.with_format("arrow")[name].to_pylist()
    return [example.get(name) for example in source]


def column_rows(source: Any, names: list[str], batch_size: int = 10_000) -> Iterable[dict[str, Any]]:
    """The rows of ``source`` for code that reads only the columns ``names``: a ``datasets.Dataset`` yields dicts of
    those columns, read ``batch_size`` rows at a time as Arrow (see :func:`column_values`); other sources are
    returned as they are."""
    if not isinstance(source, datasets.Dataset):
        return source
    return _arrow_rows(source.select_columns(names).with_format("arrow"), batch_size)


def _arrow_rows(source: datasets.Dataset, batch_size: int) -> Iterator[dict[str, Any]]:
    for table in source.iter(batch_size=batch_size):
        yield from table.to_pylist()


def example_language(example: dict[str, Any]) -> str:
    """The key temperature sampling groups by: ``"src-tgt"`` for translation pairs, else the source language."""
    src, tgt = example.get("source_lang"), example.get("target_lang")
    if example.get("task") in ("ast", "mt") and tgt and src != tgt:
        return f"{src}-{tgt}"
    return src
