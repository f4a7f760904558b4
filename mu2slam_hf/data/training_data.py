"""Training data from wherever a user keeps it, as canonical-schema datasets for the training loop.

One :class:`TrainingData` names the data and how its columns map to the canonical schema
(:mod:`mu2slam_hf.data.schema`), with the argument names of transformers' example scripts
(``run_speech_recognition_seq2seq.py``, ``run_translation.py``). ``dataset_name`` is any of:

- a corpus folder of this project's manifests (``train.jsonl``, ``dev.jsonl``; the builders' output): read as is;
  ``source_lang`` / ``target_lang`` then select a language or pair;
- a ``datasets`` ``save_to_disk`` folder (a ``Dataset`` or a ``DatasetDict`` of splits);
- an audiofolder: a folder with ``metadata.csv`` / ``metadata.jsonl`` (a ``file_name`` column of audio paths
  relative to it), at its top or in one sub-folder per split (``train/``, ``validation/``, ...);
- a name for ``datasets.load_dataset`` (with ``dataset_config_name``; needs the Hub or its cache), or a local
  snapshot of a Hub dataset (a folder of parquet or arrow files, e.g. from ``huggingface-cli download``).

or ``train_file`` (and ``validation_file``) is a CSV, TSV or JSON Lines table with an audio-path column (paths
relative to the table) and text columns.

Audio is never decoded here: ``datasets`` 5 decodes ``Audio`` columns through torchcodec, which must match the
installed torch and needs FFmpeg, so ``Audio`` columns are read as ``{"path", "bytes"}`` and the loop decodes
them with soundfile (libsndfile: WAV, FLAC, OGG, MP3). Clip durations come from the audio headers, for
length-bucketed batches. Languages come from ``source_lang`` / ``target_lang`` or from per-row columns; the task
from ``task`` or, per row, from the data: text only -> ``mt``; audio -> ``ast`` when the target language differs
from the source language, else ``asr``.
"""

from __future__ import annotations

import io
import os
from collections.abc import Collection
from dataclasses import dataclass, field, fields
from typing import Any

import datasets
import soundfile as sf
from datasets.distributed import split_dataset_by_node

from .corpora import _speech, _text_pair, iso_code
from .manifest import load_manifest
from .schema import FEATURES, LABELLED_TASKS, SPEECH_TASKS
from .validation import CorpusError, check_corpus, row_problems

TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".jsonl": None, ".json": None}
METADATA_FILES = ("metadata.csv", "metadata.jsonl")
EVAL_SPLIT_NAMES = ("dev", "validation", "valid")
# Never a dev split by default: decoders and LM weights chosen on it would be tuned on the figures they report.
TEST_SPLIT_NAME = "test"
DATA_FILE_SUFFIXES = (".parquet", ".arrow")


class DataSourceError(ValueError):
    """Training data that cannot be read as asked (missing column, empty split, unknown layout)."""


@dataclass
class TrainingData:
    """Where training data lives and how its columns map to the canonical schema.

    Args:
        dataset_name: a manifest folder, a ``save_to_disk`` folder, an audiofolder or a ``load_dataset`` name.
        dataset_config_name: the ``load_dataset`` configuration (e.g. a Common Voice language).
        train_file, validation_file: CSV / TSV / JSON Lines tables instead of ``dataset_name``.
        train_split_name: the training split (manifest folders: ``train``).
        eval_split_name: the split the run's dev metrics use; default the first of dev, validation, valid that
            exists (none: no dev evaluation). Data whose only held-out split is the test split is refused unless
            ``eval_split_name="test"`` says so: dev chooses the ASR decoder and LM weights, which would then be
            tuned on test.
        task: ``asr``, ``ast`` or ``mt`` for every row; default per row from the data (see the module docstring).
        audio_column_name: the audio (an ``Audio`` column, a path, or ``{"path", "bytes"}``).
        text_column_name: the label: the transcript (ASR) or the translation (AST, MT).
        source_text_column_name: the MT source sentence; for AST, the transcript (optional).
        source_lang, target_lang: ISO 639-1 codes (or names such as ``fr_fr``, ``german``) of every row.
        source_lang_column_name, target_lang_column_name: per-row languages instead.
        id_column_name: a column of example ids (default: ``<split>-<row number>``).
        streaming: read the training split as a stream (:meth:`stream`: ``datasets.IterableDataset``, rows
            mapped to the canonical schema as they are read, a Hub dataset without downloading it first) instead
            of a table with random access; the run then batches each window of rows (see
            `mu2slam_hf.data.streaming.StreamingTaskMixture`).
    """

    dataset_name: str | None = None
    dataset_config_name: str | None = None
    train_file: str | None = None
    validation_file: str | None = None
    train_split_name: str = "train"
    eval_split_name: str | None = None
    task: str | None = None
    audio_column_name: str = "audio"
    text_column_name: str = "text"
    source_text_column_name: str | None = None
    source_lang: str | None = None
    target_lang: str | None = None
    source_lang_column_name: str | None = None
    target_lang_column_name: str | None = None
    id_column_name: str | None = None
    streaming: bool = False
    # split -> canonical rows: the pre-flight check, the train sources and the dev subset read a split once
    _canonical: dict[str, datasets.Dataset] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        if (self.dataset_name is None) == (self.train_file is None):
            raise DataSourceError("Pass exactly one of dataset_name (a folder or dataset name) and train_file.")
        if self.validation_file is not None and self.train_file is None:
            raise DataSourceError("validation_file goes with train_file; with dataset_name use eval_split_name.")
        if self.task is not None and self.task not in LABELLED_TASKS:
            raise DataSourceError(f"task must be one of {LABELLED_TASKS} for training data, got {self.task!r}.")
        self.dataset_name = os.fspath(self.dataset_name) if self.dataset_name is not None else None

    # ---- what the data is --------------------------------------------------------------------------------

    @classmethod
    def coerce(cls, data: str | os.PathLike | TrainingData) -> TrainingData:
        """A `TrainingData` from itself or from a folder / dataset name."""
        return data if isinstance(data, TrainingData) else cls(dataset_name=os.fspath(data))

    @property
    def kind(self) -> str:
        """``manifest``, ``disk``, ``audiofolder``, ``table`` or ``hub`` (a Hub name or a local snapshot)."""
        if self.train_file is not None:
            return "table"
        path = self.dataset_name
        if os.path.isfile(os.path.join(path, "train.jsonl")):
            return "manifest"  # rows not in the schema are named by the check before training
        if any(os.path.isfile(os.path.join(path, name)) for name in ("dataset_dict.json", "state.json")):
            return "disk"
        if _audiofolder_metadata(path):
            return "audiofolder"
        if _has_data_files(path):
            return "hub"  # a local snapshot of a Hub dataset: datasets.load_dataset reads its parquet/arrow files
        if os.path.isdir(path):
            raise DataSourceError(
                f"{path}: not a corpus folder this package can read: no train.jsonl manifest (build one with "
                f"mu2slam-build-synthetic, mu2slam-build-fillets or mu2slam-build-text), no datasets save_to_disk "
                f"folder (dataset_dict.json or state.json), no audiofolder (metadata.csv or metadata.jsonl with a "
                f"file_name column). For a CSV/TSV/JSONL table pass it as train_file."
            )
        if os.path.isfile(path):
            raise DataSourceError(f"{path} is a file: pass a table as train_file (--train_file), not dataset_name.")
        if path.startswith((".", "/", "~")) or path.count("/") > 1:
            raise DataSourceError(
                f"{path}: no such folder (and not a Hub dataset name, which is 'name' or 'org/name')."
            )
        return "hub"

    def __str__(self) -> str:
        return self.dataset_name or self.train_file or ""

    def resolved_eval_split(self) -> str | None:
        """The split used for dev metrics, or None when the data has none."""
        available = self.split_names()
        if self.eval_split_name is not None:
            if self.eval_split_name not in available:
                raise DataSourceError(
                    f"{self}: no split {self.eval_split_name!r} (eval_split_name); its splits are {available}."
                )
            return self.eval_split_name
        split = next((name for name in EVAL_SPLIT_NAMES if name in available), None)
        if split is None and TEST_SPLIT_NAME in available:
            raise DataSourceError(
                f"{self} has no dev split ({', '.join(EVAL_SPLIT_NAMES)}), only {TEST_SPLIT_NAME!r}: dev evaluation "
                "chooses the ASR decoder and the language model's weights, which would then be tuned on the test set. "
                "Add a dev split, or pass eval_split_name='test' (--eval_split_name test) to use the test split "
                "knowingly."
            )
        return split

    def split_names(self) -> list[str]:
        """The splits the data has."""
        kind = self.kind
        if kind == "table":
            return [self.train_split_name] + (["validation"] if self.validation_file else [])
        if kind == "manifest":
            return [
                s for s in ("train", "dev", "test") if os.path.isfile(os.path.join(self.dataset_name, f"{s}.jsonl"))
            ]
        if kind == "audiofolder":
            return sorted(_audiofolder_metadata(self.dataset_name))
        if kind == "disk":
            loaded = datasets.load_from_disk(self.dataset_name)
            return list(loaded) if isinstance(loaded, datasets.DatasetDict) else [self.train_split_name]
        return list(datasets.get_dataset_split_names(self.dataset_name, self.dataset_config_name))

    # ---- loading -----------------------------------------------------------------------------------------

    def load(self, split: str, task: str | None = None) -> datasets.Dataset:
        """Split ``split`` in the canonical schema (only rows of ``task`` when given), with clip durations."""
        if self.kind == "manifest":
            split = {"validation": "dev"}.get(split, split)
            dataset = load_manifest(self.dataset_name, split, task)
            if not (self.source_lang or self.target_lang):
                return dataset
            return dataset.filter(self._wanted_languages, input_columns=["source_lang", "target_lang"])
        if split not in self._canonical:
            self._canonical[split] = self._canonical_split(split)
        canonical = self._canonical[split]
        return canonical.filter(lambda t: t == task, input_columns="task") if task else canonical

    def stream(
        self, split: str, task: str | None = None, rank: int = 0, world_size: int = 1
    ) -> datasets.IterableDataset:
        """Split ``split`` as an `IterableDataset` of canonical rows (only ``task``'s when given), in the data's
        order, with clip durations read from the audio headers as rows arrive. Under several processes each
        ``rank`` reads its own part (``datasets.distributed.split_dataset_by_node``)."""
        if self.kind == "manifest":
            rows = self.load(split, task).to_iterable_dataset()
        else:
            raw, base_dir = self._raw_stream(split)
            self._check_columns(raw, split)
            rows = _undecoded(raw).map(
                self._canonical_row,
                with_indices=True,
                fn_kwargs={"split": split, "base_dir": base_dir},
                remove_columns=self._column_names(raw),
                features=FEATURES,
            )
            if task:
                rows = rows.filter(lambda t: t == task, input_columns="task")
        return split_dataset_by_node(rows, rank, world_size) if world_size > 1 else rows

    def _raw_stream(self, split: str) -> tuple[datasets.IterableDataset, str]:
        """The split as the user's columns, streamed: `load_dataset(streaming=True)` for a Hub name or snapshot
        (nothing downloaded ahead), a local table or folder read in order from its Arrow file."""
        if self.kind != "hub":
            raw, base_dir = self._raw_split(split)
            if len(raw) == 0:
                raise DataSourceError(f"{self}: the {split!r} split has no rows.")
            return raw.to_iterable_dataset(), base_dir
        try:
            return datasets.load_dataset(
                self.dataset_name, self.dataset_config_name, split=split, streaming=True
            ), os.getcwd()
        except (OSError, ValueError) as error:
            raise DataSourceError(
                f"{self.dataset_name}: datasets.load_dataset({self.dataset_name!r}, {self.dataset_config_name!r}, "
                f"split={split!r}, streaming=True) failed: {type(error).__name__}: {error}"
            ) from error

    @staticmethod
    def _column_names(raw: datasets.Dataset | datasets.IterableDataset) -> list[str]:
        """The columns, from the features or (a stream without them) its first row."""
        if raw.column_names is not None:
            return list(raw.column_names)
        first = next(iter(raw.take(1)), None)
        if first is None:
            raise DataSourceError("the stream has no rows.")
        return list(first)

    def _canonical_split(self, split: str) -> datasets.Dataset:
        raw, base_dir = self._raw_split(split)
        if len(raw) == 0:
            raise DataSourceError(f"{self}: the {split!r} split has no rows.")
        self._check_columns(raw, split)
        raw = _undecoded(raw)
        return raw.map(
            self._canonical_row,
            with_indices=True,
            fn_kwargs={"split": split, "base_dir": base_dir},
            remove_columns=raw.column_names,
            features=FEATURES,
            desc=f"{self} [{split}] to the canonical schema",
        )

    def check(self, splits: dict[str, Collection[str]], languages: Collection[str] | None) -> None:
        """Raise a `CorpusError` listing every problem of the rows of ``splits`` (split -> tasks), before training."""
        if self.kind == "manifest":
            optional = [s for s in splits if s != self.train_split_name]
            selected = self._selected_row if self.source_lang or self.target_lang else None
            check_corpus(self.dataset_name, splits, languages, optional_splits=optional, selected=selected)
            return
        problems = []
        for split, tasks in splits.items():
            rows = self.load(split)
            problems += row_problems(((f"{split} row {i}", row) for i, row in enumerate(rows)), tasks, languages)
        if problems:
            raise CorpusError(str(self), problems, languages)

    def _selected_row(self, row: dict[str, Any]) -> bool:
        return self._wanted_languages(row.get("source_lang"), row.get("target_lang"))

    def _wanted_languages(self, source_lang: str, target_lang: str | None) -> bool:
        if self.source_lang and source_lang != iso_code(self.source_lang):
            return False
        return not (self.target_lang and (target_lang or source_lang) != iso_code(self.target_lang))

    def _raw_split(self, split: str) -> tuple[datasets.Dataset, str]:
        """The split as the user's columns, and the folder relative audio paths start from."""
        kind, name = self.kind, self.dataset_name
        if kind == "table":
            path = self.train_file if split == self.train_split_name else self.validation_file
            if split not in (self.train_split_name, "validation") or path is None:
                raise DataSourceError(f"no {split!r} split: the tables are train_file and validation_file.")
            return _read_table(path), os.path.dirname(os.path.abspath(path))
        if kind == "audiofolder":
            metadata = _audiofolder_metadata(name)
            if split not in metadata:
                raise DataSourceError(f"{name}: no {split!r} split; its splits are {sorted(metadata)}.")
            return _read_table(metadata[split]), os.path.dirname(os.path.abspath(metadata[split]))
        if kind == "disk":
            loaded = datasets.load_from_disk(name)
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise DataSourceError(f"{name}: no {split!r} split; its splits are {list(loaded)}.")
                loaded = loaded[split]
            return loaded, os.path.abspath(name)
        try:
            return datasets.load_dataset(name, self.dataset_config_name, split=split), os.getcwd()
        except (OSError, ValueError) as error:  # offline, unknown name or config, missing split
            raise DataSourceError(
                f"{name}: not a local folder, and datasets.load_dataset({name!r}, {self.dataset_config_name!r}, "
                f"split={split!r}) failed: {type(error).__name__}: {error}"
            ) from error

    def _check_columns(self, raw: datasets.Dataset | datasets.IterableDataset, split: str) -> None:
        wanted = {
            "text_column_name": self.text_column_name,
            "source_text_column_name": self.source_text_column_name,
            "source_lang_column_name": self.source_lang_column_name,
            "target_lang_column_name": self.target_lang_column_name,
            "id_column_name": self.id_column_name,
        }
        if self.task in SPEECH_TASKS or (self.task is None and not self.source_text_column_name):
            wanted["audio_column_name"] = self.audio_column_name  # without a source text column, rows are speech
        if self.task == "mt" and not self.source_text_column_name:
            raise DataSourceError("task 'mt' needs source_text_column_name (the column of source sentences).")
        columns = self._column_names(raw)
        for argument, column in wanted.items():
            if column is not None and column not in columns:
                raise DataSourceError(
                    f"{self} [{split}]: no column {column!r} ({argument}); its columns are {columns}. "
                    f"Pass --{argument} with one of them."
                )
        if not (self.source_lang or self.source_lang_column_name):
            raise DataSourceError(
                f"{self}: the language of the data is unknown. Pass --source_lang (e.g. en) or "
                f"--source_lang_column_name (and --target_lang / --target_lang_column_name for translation)."
            )

    def _canonical_row(self, row: dict[str, Any], index: int, split: str, base_dir: str) -> dict[str, Any]:
        source_lang = iso_code(str(self._value(row, self.source_lang, self.source_lang_column_name) or ""))
        target_lang = self._value(row, self.target_lang, self.target_lang_column_name)
        target_lang = iso_code(str(target_lang)) if target_lang else source_lang
        audio = _audio_reference(row.get(self.audio_column_name), base_dir)
        task = self.task or ("mt" if audio is None else "ast" if target_lang != source_lang else "asr")
        eid = str(row[self.id_column_name]) if self.id_column_name else f"{split}-{index}"
        label = row.get(self.text_column_name)
        source = row.get(self.source_text_column_name) if self.source_text_column_name else None
        if task == "mt":
            return _text_pair("mt", eid, source or "", label or "", source_lang, target_lang)
        return _speech(task, eid, source_lang, audio, source if task == "ast" else label, label, target_lang,
                       duration=_duration(audio))  # fmt: skip

    @staticmethod
    def _value(row: dict[str, Any], fixed: str | None, column: str | None) -> Any:
        return row.get(column) if column else fixed

    # ---- the command line ---------------------------------------------------------------------------------

    @classmethod
    def add_arguments(cls, parser: Any) -> None:
        """The data arguments of the training scripts (names as in transformers' example scripts)."""
        group = parser.add_argument_group("training data (see `mu2slam_hf.data.TrainingData`)")
        where = group.add_mutually_exclusive_group(required=True)
        where.add_argument(
            "--data",
            "--dataset_name",
            dest="dataset_name",
            help="a manifest folder, a datasets save_to_disk folder, an audiofolder, or a dataset name",
        )
        where.add_argument("--train_file", help="a CSV, TSV or JSON Lines table of the training rows")  # fmt: skip
        group.add_argument("--validation_file", help="a table of the dev rows (with --train_file)")
        group.add_argument("--streaming", action="store_true", help=_HELP["streaming"])
        for argument in fields(cls):
            if argument.init and argument.name not in ("dataset_name", "train_file", "validation_file", "streaming"):
                group.add_argument(f"--{argument.name}", default=argument.default, help=_HELP[argument.name])

    @classmethod
    def from_arguments(cls, args: Any) -> TrainingData:
        return cls(**{argument.name: getattr(args, argument.name) for argument in fields(cls) if argument.init})


_HELP = {
    "dataset_config_name": "the datasets configuration (e.g. a language)",
    "train_split_name": "the training split (default: train)",
    "eval_split_name": "the split for dev metrics (default: dev, validation or valid, whichever exists; 'test' only "
    "when given)",
    "task": "asr, ast or mt for every row (default: from the data)",
    "audio_column_name": "the audio column (default: audio)",
    "text_column_name": "the label column: transcript or translation (default: text)",
    "source_text_column_name": "the MT source column; for AST, the transcript column",
    "source_lang": "ISO code of the source language of every row",
    "target_lang": "ISO code of the target language of every row",
    "source_lang_column_name": "a column of source languages instead of --source_lang",
    "target_lang_column_name": "a column of target languages instead of --target_lang",
    "id_column_name": "a column of example ids (default: <split>-<row>)",
    "streaming": "read the training split as a stream, in windows of dataloader.stream_window rows (corpora larger "
    "than the disk or memory; a Hub dataset without downloading it first)",
}


def _audiofolder_metadata(path: str) -> dict[str, str]:
    """split -> metadata file of an audiofolder (top-level metadata is the train split)."""
    found = {}
    for name in METADATA_FILES:
        if os.path.isfile(os.path.join(path, name)):
            found["train"] = os.path.join(path, name)
    if os.path.isdir(path):
        for entry in sorted(os.listdir(path)):
            for name in METADATA_FILES:
                if os.path.isfile(os.path.join(path, entry, name)):
                    found[entry] = os.path.join(path, entry, name)
    return found


def _has_data_files(path: str) -> bool:
    """Whether a folder holds parquet or arrow files (at its top or one level down, as Hub snapshots do)."""
    if not os.path.isdir(path):
        return False
    for root, folders, files in os.walk(path):
        if any(name.endswith(DATA_FILE_SUFFIXES) for name in files):
            return True
        if root != path:
            folders.clear()
    return False


def _read_table(path: str) -> datasets.Dataset:
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in TABLE_SUFFIXES:
        raise DataSourceError(f"{path}: tables are {sorted(TABLE_SUFFIXES)} files.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no table {path}")
    if not _has_rows(path, header=TABLE_SUFFIXES[suffix] is not None):
        return datasets.Dataset.from_dict({})  # `datasets` cannot build a split of no rows
    if TABLE_SUFFIXES[suffix] is None:
        return datasets.Dataset.from_json(path)
    return datasets.Dataset.from_csv(path, sep=TABLE_SUFFIXES[suffix], keep_default_na=False)


def _has_rows(path: str, header: bool) -> bool:
    with open(path, encoding="utf-8") as handle:
        lines = (line for line in handle if line.strip())
        return next(lines, None) is not None and (not header or next(lines, None) is not None)


def _undecoded(raw: datasets.Dataset) -> datasets.Dataset:
    """``Audio`` columns as ``{"path", "bytes"}``: no torchcodec (see the module docstring)."""
    for name, feature in raw.features.items():
        if isinstance(feature, datasets.Audio) and feature.decode:
            raw = raw.cast_column(name, datasets.Audio(decode=False))
    return raw


def _audio_reference(value: Any, base_dir: str) -> dict[str, Any] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return {"path": value if os.path.isabs(value) else os.path.join(base_dir, value), "bytes": None}
    if isinstance(value, dict):
        path = value.get("path")
        if path and value.get("bytes") is None and not os.path.isabs(path):
            path = os.path.join(base_dir, path)
        return {"path": path, "bytes": value.get("bytes")}
    raise DataSourceError(f"audio values must be paths or {{'path', 'bytes'}} dicts, got {type(value).__name__}.")


def _duration(audio: dict[str, Any] | None) -> float | None:
    """Seconds, from the header only; None when unreadable (the data check then names the file)."""
    if audio is None:
        return None
    try:
        info = sf.info(io.BytesIO(audio["bytes"]) if audio.get("bytes") is not None else audio["path"])
    except Exception:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
        return None
    return info.frames / info.samplerate if info.samplerate else None


__all__ = ["DataSourceError", "TrainingData"]
