"""On-disk corpus format written by the builders: JSONL manifests next to 16 kHz mono FLAC files.

A corpus directory holds ``<split>.jsonl`` (one example a line, in the schema of
:mod:`mu2slam_hf.data.schema`, audio paths relative to the directory), ``audio/...flac`` and
``summary.json`` (counts per split, task and language; hours of audio). :func:`load_manifest` turns a
manifest into a ``datasets.Dataset`` with absolute audio paths.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from collections import Counter, defaultdict
from collections.abc import Collection, Hashable, Iterable, Iterator, Sequence
from typing import Any

import datasets
from datasets.exceptions import DatasetGenerationError

from .schema import FEATURES, FIELDS, TASKS, to_dataset


def write_manifest(path: str | os.PathLike, examples: Iterable[dict[str, Any]]) -> int:
    """Writes examples as JSONL (texts kept as UTF-8) and returns how many were written."""
    count = 0
    with open(path, "w", encoding="utf-8") as handle:
        for example in examples:
            handle.write(json.dumps({k: example.get(k) for k in FIELDS}, ensure_ascii=False) + "\n")
            count += 1
    return count


class ManifestError(ValueError):
    """A manifest line that is not a JSON object of a known task; the message starts with ``file:line``."""


def iter_manifest_lines(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any] | ManifestError]]:
    """(line number, example or the `ManifestError` of that line) for every non-blank line of a JSONL manifest,
    audio paths made absolute (relative to the manifest's folder)."""
    root = os.path.dirname(os.path.abspath(path))
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield number, _parse_line(line, f"{path}:{number}", root)


def _parse_line(line: str, where: str, root: str) -> dict[str, Any] | ManifestError:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        return ManifestError(f"{where}: invalid JSON ({error.msg} at column {error.colno}); fix or remove the line")
    if not isinstance(row, dict):
        return ManifestError(f"{where}: expected a JSON object (one example), got {type(row).__name__}")
    if row.get("task") not in TASKS:
        return ManifestError(f"{where}: unknown task {row.get('task')!r}; tasks are {', '.join(TASKS)}")
    audio = row.get("audio")
    if isinstance(audio, dict) and isinstance(audio.get("path"), str) and not os.path.isabs(audio["path"]):
        audio["path"] = os.path.join(root, audio["path"])
    return row


def read_manifest(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The examples of a JSONL manifest, audio paths made absolute (relative to the manifest's folder).

    Raises `ManifestError` naming ``file:line`` for the first line that is not a JSON object of a known task.
    """
    return list(iter_manifest(path))


def iter_manifest(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """`read_manifest`, one example at a time."""
    for _, row in iter_manifest_lines(path):
        if isinstance(row, ManifestError):
            raise row
        yield row


def manifest_path(data_dir: str | os.PathLike, split: str) -> str:
    """``<data_dir>/<split>.jsonl``, or a FileNotFoundError saying how to build it."""
    path = os.path.join(data_dir, f"{split}.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no manifest {path}; build the corpus first (mu2slam-build-synthetic / -fillets)")
    return path


# Part of the key of `load_manifest`'s cache: raise it when the rows read from a manifest change for the same file.
ROW_FORMAT = 1


def load_manifest(data_dir: str | os.PathLike, split: str, task: str | None = None) -> datasets.Dataset:
    """``<data_dir>/<split>.jsonl`` as a ``datasets.Dataset``, optionally only one task's examples.

    The rows are memory-mapped from an Arrow file that ``datasets`` writes to its cache (``HF_DATASETS_CACHE``) on
    the first load, so a corpus of millions of rows is not held in memory and later loads are near instant. The
    cache is keyed by the manifest's path, size and modification time (and `ROW_FORMAT`): a manifest written again
    is read again. Raises `ManifestError` naming ``file:line`` for a line that is not an example.
    """
    path = os.path.abspath(manifest_path(data_dir, split))
    stat = os.stat(path)
    key = {"path": path, "task": task, "size": stat.st_size, "modified": stat.st_mtime_ns, "inode": stat.st_ino,
           "row_format": ROW_FORMAT}  # fmt: skip
    try:
        return datasets.Dataset.from_generator(_manifest_rows, features=FEATURES, gen_kwargs=key)
    except DatasetGenerationError as error:
        if isinstance(error.__cause__, ManifestError):
            raise error.__cause__ from None
        raise
    except ValueError:
        # `datasets` refuses to build a dataset of no rows: an empty manifest, or none of this task
        if next(_manifest_rows(**key), None) is not None:
            raise
        return to_dataset(())


def _manifest_rows(path: str, task: str | None, **cache_key: Any) -> Iterator[dict[str, Any]]:
    """The examples of ``path`` (of ``task`` when given); ``cache_key`` only keys `load_manifest`'s Arrow cache."""
    for row in iter_manifest(path):
        if task is None or row["task"] == task:
            yield {field: row.get(field) for field in FIELDS}


def write_summary(corpus_dir: str | os.PathLike, summary: dict[str, Any]) -> None:
    """A corpus builder's ``summary.json`` (what `summarize` counted plus the builder's own facts)."""
    with open(os.path.join(corpus_dir, "summary.json"), "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2, ensure_ascii=False)


def summarize(splits: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Counts per split, task and language, and hours of distinct audio per split."""
    summary: dict[str, Any] = {"splits": {}}
    for split, rows in splits.items():
        by_task: dict[str, Counter] = defaultdict(Counter)
        seconds: dict[str, float] = {}
        for row in rows:
            lang = (
                row["source_lang"]
                if row["task"] in ("speech", "text", "asr")
                else (f"{row['source_lang']}-{row['target_lang']}")
            )
            by_task[row["task"]][lang] += 1
            if row.get("audio") and row.get("duration"):
                seconds[row["audio"]["path"]] = row["duration"]
        summary["splits"][split] = {
            "examples": len(rows),
            "audio_files": len(seconds),
            "hours": round(sum(seconds.values()) / 3600, 3),
            "tasks": {
                task: dict(sorted(c.items())) | {"total": sum(c.values())} for task, c in sorted(by_task.items())
            },
        }
    summary["total_hours"] = round(sum(s["hours"] for s in summary["splits"].values()), 3)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """A readable table of :func:`summarize`'s output."""
    lines = []
    for split, info in summary["splits"].items():
        lines.append(
            f"[{split}] {info['examples']} examples, {info['audio_files']} audio files, {info['hours']:.2f} h"
        )
        for task, counts in info["tasks"].items():
            per_lang = " ".join(f"{k}={v}" for k, v in counts.items() if k != "total")
            lines.append(f"  {task:<6} {counts['total']:>7}  {per_lang}")
    lines.append(f"total audio: {summary['total_hours']:.2f} h")
    for key in ("build_seconds", "languages"):
        if key in summary:
            lines.append(f"{key}: {summary[key]}")
    return "\n".join(lines)


def normalize_text(text: str) -> str:
    """Lower case, punctuation removed, whitespace collapsed: what "the same sentence" means for splits."""
    return " ".join(re.sub(r"[^\w]+", " ", text.lower()).split())


def hash_split(key: str, fractions: dict[str, float]) -> str:
    """The split of ``key`` (a level, page or stamp, prefixed by its corpus): a stable hash of it placed on the
    cumulative ``fractions`` (``{"train": 0.9, "dev": 0.05, "test": 0.05}``, in that order; the last split takes
    the rest)."""
    bucket = int(hashlib.sha256(key.encode()).hexdigest(), 16) % 1000 / 1000
    names, bound = list(fractions), 0.0
    for name in names[:-1]:
        bound += fractions[name]
        if bucket < bound:
            return name
    return names[-1]


def connected_components(keys: list[Iterable[Hashable]]) -> list[list[int]]:
    """Groups item indices so that items sharing any key (a normalised text, an audio hash) are together.

    ``keys[i]`` are item ``i``'s keys; returns the components, each a sorted list of indices, in order of their
    first item. A split decided per component keeps every shared sentence in one split.
    """
    parent = list(range(len(keys)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_seen: dict[Hashable, int] = {}
    for i, item_keys in enumerate(keys):
        for key in item_keys:
            parent[find(i)] = find(first_seen.setdefault(key, i))
    components: dict[int, list[int]] = defaultdict(list)
    for i in range(len(keys)):
        components[find(i)].append(i)
    return list(components.values())


def row_texts(row: dict[str, Any]) -> set[str]:
    """The normalised (:func:`normalize_text`) transcript/source and translation/label of an example."""
    return {normalize_text(row[key]) for key in ("source_text", "target_text") if row.get(key)}


def held_out_manifests(path: str | os.PathLike) -> list[str]:
    """The dev and test manifests of a corpus folder (``dev.jsonl``, ``test.jsonl``), or ``[path]`` for a
    ``.jsonl`` file; a FileNotFoundError saying what was expected otherwise."""
    if os.path.isfile(path) and str(path).endswith(".jsonl"):
        return [str(path)]
    found = [os.path.join(path, f"{split}.jsonl") for split in ("dev", "test")]
    found = [manifest for manifest in found if os.path.isfile(manifest)]
    if not found:
        raise FileNotFoundError(
            f"{path} is neither a .jsonl manifest nor a corpus folder with dev.jsonl or test.jsonl; pass a built "
            "corpus (e.g. the output folder of mu2slam-build-text) or one of its manifests"
        )
    return found


def held_out_texts(paths: Iterable[str | os.PathLike]) -> set[str]:
    """Every normalised text (:func:`row_texts`) of the dev/test manifests of ``paths``
    (:func:`held_out_manifests`), for leaving them out of a training split."""
    texts: set[str] = set()
    for path in paths:
        for manifest in held_out_manifests(path):
            for row in iter_manifest(manifest):
                texts |= row_texts(row)
    return texts


def repeated(rows: list[dict[str, Any]], times: int) -> list[dict[str, Any]]:
    """``rows``, then ``times - 1`` copies of them with the ids ``<id>#2``, ``<id>#3``, ..."""
    return rows + [{**row, "id": f"{row['id']}#{copy}"} for copy in range(2, times + 1) for row in rows]


def concatenated(sources: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The rows of every source, one source after the other."""
    return [row for rows in sources for row in rows]


def interleaved(sources: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The rows of every source, taking turns: the first of each source, then the second of each, and so on."""
    return [row for turn in itertools.zip_longest(*sources) for row in turn if row is not None]


def combine_corpora(
    out_dir: str | os.PathLike,
    sources: list[str | os.PathLike],
    tasks: Collection[str] | None = None,
    splits: tuple[str, ...] = ("train", "dev", "test"),
    target_langs: Collection[str] | None = None,
    train_repeats: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Writes a corpus folder whose manifests are the concatenation of ``sources``' manifests (only ``tasks``'
    rows when given, and only rows whose ``target_lang`` is in ``target_langs`` when given: translation into
    English alone, say), with absolute audio paths so no audio is copied, and returns its summary.

    ``train_repeats`` (one count per source) lists each train row of a source that many times, so a training run
    draws it that much more often than its share (a small real corpus beside a large synthetic one, say); a row's
    copies get the ids ``<id>#2``, ``<id>#3``, ...

    Training on several corpora at once (synthetic and real speech, say) then takes one ``--data`` folder. A
    split missing from every source is left out; one missing from some sources is taken from the others.
    ``out_dir`` must be new or a combination of the same sources and tasks (then it is rewritten): a folder of
    any other corpus raises ``FileExistsError`` rather than being mixed into.

    Each builder keeps its own splits apart, but two corpora of the same sentences need not agree: a sentence in
    one corpus's test split may be spoken in the other's train split. Train rows whose transcript or translation
    (normalised) occurs in any source's dev or test split, of any task, are therefore left out; their count is
    ``summary["held_out_text_dropped"]``.

    Dev and test rows take turns between the sources (the first row of each, then the second of each, ...): a run's
    dev evaluation and the test subsets read the first rows of each language, which then come from every source
    rather than from the first one alone. Train rows keep the sources' order (the training mixture shuffles them).
    """
    out_dir = os.path.abspath(out_dir)
    origin = {"sources": [os.path.abspath(s) for s in sources], "tasks": sorted(tasks) if tasks else None}
    if target_langs:
        origin["target_langs"] = sorted(target_langs)
    if train_repeats is not None:
        if len(train_repeats) != len(sources) or any(not isinstance(n, int) or n < 1 for n in train_repeats):
            raise ValueError(
                f"train_repeats takes one whole count of at least 1 per source ({len(sources)}), got {train_repeats}"
            )
        if any(n > 1 for n in train_repeats):
            origin["train_repeats"] = list(train_repeats)
    summary_path = os.path.join(out_dir, "summary.json")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        previous = None
        if os.path.exists(summary_path):
            with open(summary_path, encoding="utf-8") as handle:
                previous = json.load(handle).get("combined")
        if previous != origin:
            raise FileExistsError(
                f"{out_dir} already holds another corpus; choose a new folder for the combination of {sources}"
            )
    candidates = {split: [os.path.join(s, f"{split}.jsonl") for s in origin["sources"]] for split in splits}
    found = {split: [path for path in paths if os.path.exists(path)] for split, paths in candidates.items()}
    repeats = dict(zip(candidates.get("train", []), train_repeats or [], strict=False))  # train paths only
    source_rows = {
        split: (concatenated if split == "train" else interleaved)(
            [repeated(read_manifest(path), repeats.get(path, 1)) for path in paths]
        )
        for split, paths in found.items()
        if paths
    }
    if not source_rows:
        raise FileNotFoundError(f"none of {sources} holds a manifest of the splits {', '.join(splits)}")
    held_out = set().union(
        *(row_texts(row) for split, rows in source_rows.items() if split != "train" for row in rows)
    )
    os.makedirs(out_dir, exist_ok=True)
    rows_by_split, dropped = {}, 0
    for split, rows in source_rows.items():
        rows = [row for row in rows if (not tasks or row["task"] in tasks)
                and (not target_langs or row.get("target_lang") in target_langs)]  # fmt: skip
        if split == "train":
            kept = [row for row in rows if not row_texts(row) & held_out]
            rows, dropped = kept, len(rows) - len(kept)
        write_manifest(os.path.join(out_dir, f"{split}.jsonl"), rows)
        rows_by_split[split] = rows
    summary = summarize(rows_by_split) | {"combined": origin, "held_out_text_dropped": dropped}
    write_summary(out_dir, summary)
    return summary
