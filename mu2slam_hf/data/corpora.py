"""Loaders mapping public corpora into the canonical schema (:mod:`mu2slam_hf.data.schema`).

``load_corpus(name, split, data_dir=..., task=...)`` reads a local copy in the corpus's released layout;
``load_corpus(name, split, dataset=...)`` maps a ``datasets`` object with the Hugging Face dataset's
columns (audio columns are cast to ``Audio(decode=False)``, so nothing goes through torchcodec; audio is
decoded later by :func:`mu2slam_hf.data.audio.decode_example`). Local layouts:

- ``covost2``: ``covost_v2.<src>_<tgt>.<split>.tsv`` (or ``covost_v2.<src>_<tgt>.tsv`` with a ``split``
  column), columns ``path, sentence, translation, client_id``; audio in the Common Voice ``clips/`` folder
  (``data_dir/clips`` or ``clips_dir=``). HF ``facebook/covost2``: ``client_id, file, audio, sentence,
  translation, id``.
- ``common_voice``: ``<locale>/{clips/, train.tsv, dev.tsv, test.tsv, validated.tsv, ...}``, columns
  ``client_id, path, sentence, up_votes, down_votes, age, gender, accents, locale, segment``.
- ``voxpopuli``: ``transcribed_data/<lang>/asr_<split>.tsv`` (columns ``id, raw_text, normalized_text,
  speaker_id, split, gender, is_gold_transcript, accent``), audio ``transcribed_data/<lang>/<year>/<id>.ogg``.
  HF ``facebook/voxpopuli``: ``audio_id, language, audio, raw_text, normalized_text, gender, speaker_id, ...``.
- ``fleurs``: ``<lang>_<region>/<split>.tsv`` without header (``id, file_name, raw_transcription,
  transcription, chars, num_samples, gender``), audio ``<lang>_<region>/audio/<split>/<file_name>``; AST
  joins two languages on the shared sentence ``id``. HF ``google/fleurs``: ``id, num_samples, path, audio,
  transcription, raw_transcription, gender, lang_id, language, lang_group_id``.
- ``mls``: ``mls_<language>/<split>/transcripts.txt`` (``<speaker>_<book>_<utt>\\t<text>``), audio
  ``<split>/audio/<speaker>/<book>/<id>.flac`` (or ``.opus``). HF ``facebook/multilingual_librispeech``:
  ``audio, original_path, begin_time, end_time, transcript, audio_duration, speaker_id, chapter_id, file, id``.
- ``mc4``: ``c4-<lang>.tfrecord-*.json.gz`` (train) and ``c4-<lang>-validation.tfrecord-*.json.gz``, JSON
  lines with ``text, timestamp, url``.
- ``wmt``: line-aligned ``<split>.<lang>`` files, or ``<split>/<name>.<lang>`` (the released corpora, e.g.
  ``europarl-v7.de-en.de``); HF ``wmt14``/``wmt19``...: a ``translation`` dict column.
- ``ted``: the multilingual TED talks of Qi et al. (2018), ``all_talks_<split>.tsv`` with a ``talk_name``
  column and one column per language (``__NULL__`` when missing); HF ``ted_multi`` (``translations``) or
  ``ted_talks_iwslt`` / ``iwslt2017`` (``translation``).
- ``manifest`` (aliases ``synthetic``, ``fillets``): a corpus written by this package's builders.
"""

from __future__ import annotations

import csv
import glob
import gzip
import json
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import datasets

from ..vocabulary import DEFAULT_LANGUAGES
from .manifest import read_manifest
from .schema import FEATURES, SPEECH_TASKS, DataError, OnError, check_example, handle_error, make_example, to_dataset

MLS_LANGUAGES = {"english": "en", "german": "de", "dutch": "nl", "french": "fr", "spanish": "es",
                 "italian": "it", "portuguese": "pt", "polish": "pl"}  # fmt: skip
ISO_639_3_TO_1 = {"cmn": "zh", "fil": "tl", "ast": "ast", "ckb": "ckb"}
DEFAULT_TASKS = {"covost2": "ast", "common_voice": "asr", "voxpopuli": "asr", "fleurs": "asr", "mls": "asr",
                 "mc4": "text", "wmt": "mt", "ted": "mt", "manifest": None}  # fmt: skip
SPLIT_ALIASES = {"validation": "dev", "valid": "dev"}
csv.field_size_limit(2**31 - 1)


def iso_code(code: str) -> str:
    """``fr_fr`` / ``zh-CN`` / ``cmn_hans_cn`` / ``german`` -> an ISO 639-1 code where one exists."""
    code = code.strip()
    if code.lower() in MLS_LANGUAGES:
        return MLS_LANGUAGES[code.lower()]
    head = re.split(r"[_-]", code)[0].lower()
    return ISO_639_3_TO_1.get(head, head)


def _read_tsv(path: str, header: bool = True) -> list[dict[str, str]] | list[list[str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        reader = (csv.DictReader if header else csv.reader)(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        return list(reader)


def _speech(
    task: str,
    eid: str,
    lang: str,
    audio: Any,
    text: str | None,
    translation: str | None = None,
    target_lang: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One speech example of ``task`` from a transcribed (and maybe translated) utterance."""
    if task == "speech":
        return make_example(eid, "speech", lang, audio=audio, **extra)
    if task == "asr":
        return make_example(eid, "asr", lang, audio=audio, source_text=text, target_text=text, **extra)
    if task == "ast":
        return make_example(
            eid, "ast", lang, audio=audio, source_text=text, target_text=translation, target_lang=target_lang, **extra
        )
    raise ValueError(f"task {task!r} is not available from a speech corpus (speech, asr, ast)")


def _check_task(name: str, task: str, allowed: tuple[str, ...]) -> None:
    if task not in allowed:
        raise ValueError(f"{name} provides tasks {allowed}, not {task!r}")


# ---- local layouts -------------------------------------------------------------------------------------


def _covost2_local(
    data_dir: str,
    split: str,
    task: str,
    source_lang: str | None,
    target_lang: str | None,
    clips_dir: str | None = None,
    **_: Any,
) -> Iterator[dict]:
    _check_task("covost2", task, SPEECH_TASKS)
    pattern = f"covost_v2.{source_lang or '*'}_{target_lang or '*'}"
    files = sorted(glob.glob(os.path.join(data_dir, f"{pattern}.{split}.tsv"))) or sorted(
        glob.glob(os.path.join(data_dir, f"{pattern}.tsv"))
    )
    if not files:
        raise FileNotFoundError(f"no {pattern}.{split}.tsv or {pattern}.tsv in {data_dir}")
    clips = clips_dir or os.path.join(data_dir, "clips")
    for path in files:
        src, tgt = re.match(r"covost_v2\.([^_.]+(?:-[^_.]+)?)_([^_.]+(?:-[^_.]+)?)", os.path.basename(path)).groups()
        for row in _read_tsv(path):
            if "split" in row and row["split"] not in (split, f"{split}_covost"):
                continue
            yield _speech(
                task,
                f"covost2-{src}-{tgt}-{row['path']}",
                iso_code(src),
                os.path.join(clips, row["path"]),
                row["sentence"],
                row["translation"],
                iso_code(tgt),
                speaker=row.get("client_id"),
            )


def _common_voice_local(data_dir: str, split: str, task: str, language: str | None = None, **_: Any) -> Iterator[dict]:
    _check_task("common_voice", task, ("speech", "asr"))
    for row in _read_tsv(os.path.join(data_dir, f"{split}.tsv")):
        lang = iso_code(row.get("locale") or language or os.path.basename(os.path.normpath(data_dir)))
        yield _speech(
            task,
            f"common_voice-{lang}-{row['path']}",
            lang,
            os.path.join(data_dir, "clips", row["path"]),
            row["sentence"],
            speaker=row.get("client_id"),
        )


def _voxpopuli_local(data_dir: str, split: str, task: str, language: str | None = None, **_: Any) -> Iterator[dict]:
    _check_task("voxpopuli", task, ("speech", "asr"))
    root = (
        os.path.join(data_dir, "transcribed_data")
        if os.path.isdir(os.path.join(data_dir, "transcribed_data"))
        else data_dir
    )
    langs = [language] if language else sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    for lang in langs:
        tsv = os.path.join(root, lang, f"asr_{split}.tsv")
        if not os.path.exists(tsv):
            continue
        for row in _read_tsv(tsv):
            audio = os.path.join(root, lang, row["id"][:4], f"{row['id']}.ogg")
            text = row.get("raw_text") or row.get("normalized_text")
            yield _speech(
                task, f"voxpopuli-{lang}-{row['id']}", iso_code(lang), audio, text, speaker=row.get("speaker_id")
            )


def _fleurs_rows(lang_dir: str, split: str) -> list[list[str]]:
    return _read_tsv(os.path.join(lang_dir, f"{split}.tsv"), header=False)


def _fleurs_local(
    data_dir: str,
    split: str,
    task: str,
    source_lang: str | None = None,
    target_lang: str | None = None,
    language: str | None = None,
    **_: Any,
) -> Iterator[dict]:
    _check_task("fleurs", task, SPEECH_TASKS)
    source = source_lang or language
    if source is None:
        raise ValueError("fleurs needs language= (or source_lang=), a FLEURS folder name such as 'fr_fr'")
    lang_dir = os.path.join(data_dir, source)
    translations = {}
    if task == "ast":
        if target_lang is None:
            raise ValueError("fleurs AST needs target_lang=, e.g. 'en_us'")
        translations = {row[0]: row[2] for row in _fleurs_rows(os.path.join(data_dir, target_lang), split)}
    for row in _fleurs_rows(lang_dir, split):
        sentence_id, file_name, raw = row[0], row[1], row[2]
        if task == "ast" and sentence_id not in translations:
            continue
        yield _speech(
            task,
            f"fleurs-{source}-{file_name}",
            iso_code(source),
            os.path.join(lang_dir, "audio", split, file_name),
            raw,
            translations.get(sentence_id),
            iso_code(target_lang) if target_lang else None,
            speaker=None,
        )


def _mls_local(data_dir: str, split: str, task: str, language: str | None = None, **_: Any) -> Iterator[dict]:
    _check_task("mls", task, ("speech", "asr"))
    name = os.path.basename(os.path.normpath(data_dir))
    lang = iso_code(language or re.sub(r"^mls_|_opus$", "", name))
    split_dir = os.path.join(data_dir, split)
    with open(os.path.join(split_dir, "transcripts.txt"), encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            utt, _, text = line.rstrip("\n").partition("\t")
            speaker, book, _ = utt.split("_")
            stem = os.path.join(split_dir, "audio", speaker, book, utt)
            audio = (
                stem + ".flac"
                if os.path.exists(stem + ".flac") or not os.path.exists(stem + ".opus")
                else stem + ".opus"
            )
            yield _speech(task, f"mls-{lang}-{utt}", lang, audio, text, speaker=speaker)


def _mc4_local(data_dir: str, split: str, task: str, language: str | None = None, **_: Any) -> Iterator[dict]:
    _check_task("mc4", task, ("text",))
    lang = language or "*"
    suffix = "-validation" if split == "dev" else ""
    files = sorted(glob.glob(os.path.join(data_dir, f"c4-{lang}{suffix}.tfrecord-*.json.gz")))
    if split != "dev":
        files = [f for f in files if "-validation." not in f]
    if not files:
        raise FileNotFoundError(f"no c4-{lang}{suffix}.tfrecord-*.json.gz in {data_dir}")
    for path in files:
        file_lang = re.match(r"c4-(.+?)(?:-validation)?\.tfrecord", os.path.basename(path)).group(1)
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            for i, line in enumerate(handle):
                record = json.loads(line)
                shard = os.path.basename(path).split(".")[1]
                yield make_example(
                    f"mc4-{file_lang}-{shard}-{i}", "text", iso_code(file_lang), source_text=record["text"]
                )


def _parallel_files(data_dir: str, split: str, src: str, tgt: str) -> list[tuple[str, str]]:
    candidates = [os.path.join(data_dir, f"{split}.{src}")] + sorted(
        glob.glob(os.path.join(data_dir, split, f"*.{src}"))
    )
    pairs = [
        (p, p[: -len(src)] + tgt) for p in candidates if os.path.exists(p) and os.path.exists(p[: -len(src)] + tgt)
    ]
    if not pairs:
        raise FileNotFoundError(
            f"no line-aligned {split}.{src}/{split}.{tgt} or {split}/*.{src}/*.{tgt} in {data_dir}"
        )
    return pairs


def _wmt_local(
    data_dir: str, split: str, task: str, source_lang: str | None = None, target_lang: str | None = None, **_: Any
) -> Iterator[dict]:
    _check_task("wmt", task, ("mt", "text"))
    if not (source_lang and target_lang):
        raise ValueError("wmt needs source_lang= and target_lang=")
    for src_path, tgt_path in _parallel_files(data_dir, split, source_lang, target_lang):
        stem = os.path.basename(src_path)[: -len(source_lang) - 1]
        with open(src_path, encoding="utf-8") as fs, open(tgt_path, encoding="utf-8") as ft:
            for i, (s, t) in enumerate(zip(fs, ft, strict=True)):
                yield _text_pair(
                    task, f"wmt-{stem}-{source_lang}-{target_lang}-{i}", s.strip(), t.strip(), source_lang, target_lang
                )


def _text_pair(task: str, eid: str, source: str, target: str, src: str, tgt: str) -> dict[str, Any]:
    if task == "text":
        return make_example(eid, "text", iso_code(src), source_text=source)
    return make_example(eid, "mt", iso_code(src), source_text=source, target_text=target, target_lang=iso_code(tgt))


TED_NULLS = {"__NULL__", "_ _ NULL _ _", ""}


def _ted_local(
    data_dir: str, split: str, task: str, source_lang: str | None = None, target_lang: str | None = None, **_: Any
) -> Iterator[dict]:
    _check_task("ted", task, ("mt", "text"))
    if not (source_lang and target_lang):
        raise ValueError("ted needs source_lang= and target_lang= (column names of all_talks_<split>.tsv)")
    for i, row in enumerate(_read_tsv(os.path.join(data_dir, f"all_talks_{split}.tsv"))):
        source, target = row[source_lang].strip(), row[target_lang].strip()
        if source in TED_NULLS or target in TED_NULLS:
            continue
        yield _text_pair(task, f"ted-{source_lang}-{target_lang}-{i}", source, target, source_lang, target_lang)


def _manifest_local(data_dir: str, split: str, task: str | None, **_: Any) -> Iterator[dict]:
    path = os.path.join(data_dir, f"{split}.jsonl")
    yield from (row for row in read_manifest(path) if task is None or row["task"] == task)


LOCAL_LOADERS: dict[str, Callable[..., Iterator[dict]]] = {
    "covost2": _covost2_local, "common_voice": _common_voice_local, "voxpopuli": _voxpopuli_local,
    "fleurs": _fleurs_local, "mls": _mls_local, "mc4": _mc4_local, "wmt": _wmt_local, "ted": _ted_local,
    "manifest": _manifest_local,
}  # fmt: skip
ALIASES = {"synthetic": "manifest", "fillets": "manifest", "cv": "common_voice", "covost": "covost2"}


# ---- Hugging Face datasets -----------------------------------------------------------------------------


def _audio(row: dict) -> dict | None:
    audio = row.get("audio")
    if isinstance(audio, dict):
        return {"path": audio.get("path"), "bytes": audio.get("bytes")}
    return {"path": audio, "bytes": None} if isinstance(audio, str) else None


def _hf_row_mapper(
    name: str, task: str, config: str | None, features: Any, options: dict
) -> Callable[[dict, int], dict]:
    """A function ``(row, index) -> example`` for the Hugging Face version of corpus ``name``."""
    src, tgt, language = options.get("source_lang"), options.get("target_lang"), options.get("language")
    if name == "covost2":
        pair = (config or "").split("_")
        src, tgt = src or (pair[0] if len(pair) == 2 else None), tgt or (pair[1] if len(pair) == 2 else None)
        return lambda r, i: _speech(
            task,
            f"covost2-{src}-{tgt}-{r.get('id') or i}",
            iso_code(src or ""),
            _audio(r),
            r["sentence"],
            r.get("translation"),
            iso_code(tgt or ""),
            speaker=r.get("client_id"),
        )
    if name == "common_voice":
        return lambda r, i: _speech(
            task,
            f"common_voice-{r.get('path') or i}",
            iso_code(r.get("locale") or language or config or ""),
            _audio(r),
            r["sentence"],
            speaker=r.get("client_id"),
        )
    if name == "voxpopuli":
        label = features.get("language") if features is not None else None
        names = getattr(label, "names", None)

        def voxpopuli(r: dict, i: int) -> dict:
            lang = language or (
                names[r["language"]] if names and isinstance(r.get("language"), int) else r.get("language")
            )
            return _speech(
                task,
                f"voxpopuli-{r.get('audio_id') or i}",
                iso_code(lang or config or ""),
                _audio(r),
                r.get("raw_text") or r.get("normalized_text"),
                speaker=r.get("speaker_id"),
            )

        return voxpopuli
    if name == "fleurs":
        if task == "ast":
            raise ValueError(
                "fleurs AST from `datasets` objects: load both languages and join on 'id' yourself, "
                "or use the local layout (data_dir=) which does the join"
            )
        return lambda r, i: _speech(
            task,
            f"fleurs-{language or config}-{r.get('path') or i}",
            iso_code(language or config or ""),
            _audio(r),
            r.get("raw_transcription"),
            speaker=r.get("gender"),
        )
    if name == "mls":
        return lambda r, i: _speech(
            task,
            f"mls-{r.get('id') or i}",
            iso_code(language or config or ""),
            _audio(r),
            r["transcript"],
            speaker=r.get("speaker_id"),
            duration=r.get("audio_duration"),
        )
    if name == "mc4":
        return lambda r, i: make_example(
            f"mc4-{language or config}-{i}", "text", iso_code(language or config or ""), source_text=r["text"]
        )
    if name in ("wmt", "ted"):
        return _hf_translation_mapper(name, task, config, src, tgt)
    raise ValueError(f"no Hugging Face mapping for {name!r}")


def _hf_translation_mapper(name: str, task: str, config: str | None, src: str | None, tgt: str | None):
    pair = re.split(r"[-_]", config or "")
    src, tgt = src or (pair[0] if len(pair) == 2 else None), tgt or (pair[1] if len(pair) == 2 else None)
    if not (src and tgt):
        raise ValueError(f"{name}: pass source_lang= and target_lang= (config {config!r} names no pair)")

    def translation(r: dict, i: int) -> dict:
        if "translations" in r:  # ted_multi: {"language": [...], "translation": [...]}
            texts = dict(zip(r["translations"]["language"], r["translations"]["translation"], strict=True))
        else:
            texts = r["translation"]
        return _text_pair(task, f"{name}-{src}-{tgt}-{i}", texts.get(src) or "", texts.get(tgt) or "", src, tgt)

    return translation


def _map_hf(name: str, dataset: Any, split: str, task: str, options: dict) -> Any:
    if isinstance(dataset, datasets.DatasetDict | datasets.IterableDatasetDict):
        dataset = dataset[split] if split in dataset else dataset[{"dev": "validation"}.get(split, split)]
    features = dataset.features
    if features is not None and isinstance(features.get("audio"), datasets.Audio):
        dataset = dataset.cast_column("audio", datasets.Audio(decode=False))
    config = (
        options.get("config") or getattr(dataset, "config_name", None) or getattr(dataset.info, "config_name", None)
    )
    mapper = _hf_row_mapper(name, task, config, features, options)
    columns = list(features) if features is not None else None
    return dataset.map(mapper, with_indices=True, remove_columns=columns, features=FEATURES)


# ---- entry point ---------------------------------------------------------------------------------------


def load_corpus(
    name: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    dataset: Any = None,
    task: str | None = None,
    *,
    source_lang: str | None = None,
    target_lang: str | None = None,
    language: str | None = None,
    languages: tuple[str, ...] | None = DEFAULT_LANGUAGES,
    on_error: OnError = "skip",
    report: Callable[[DataError], None] | None = None,
    **options: Any,
) -> datasets.Dataset | datasets.IterableDataset:
    """A public corpus (or a corpus built here) as a dataset in the canonical schema.

    Args:
        name: ``covost2``, ``voxpopuli``, ``fleurs``, ``common_voice``, ``mls``, ``mc4``, ``wmt``, ``ted`` or
            ``manifest`` (aliases ``synthetic``, ``fillets``).
        split: ``train``, ``dev`` (alias ``validation``) or ``test``.
        data_dir: a local copy in the corpus's released layout (see the module docstring).
        dataset: instead of ``data_dir``, a ``datasets`` object with the Hugging Face dataset's columns.
        task: ``speech``, ``text``, ``asr``, ``ast`` or ``mt``; defaults to the corpus's natural task.
        source_lang, target_lang, language: languages or pair to read, in the corpus's own naming
            (e.g. CoVoST ``fr``/``en``, FLEURS ``fr_fr``, MLS ``german``); inferred where the layout names them.
        languages: allowed ISO codes (``None``: any); other examples count as bad data.
        on_error: ``"skip"`` reports bad examples (empty text, unknown language, missing audio file) with
            their id through ``report`` (or a warning) and drops them; ``"raise"`` raises :class:`DataError`.
        options: corpus-specific options, e.g. ``clips_dir`` for CoVoST 2, ``config`` for a ``datasets`` object.
    """
    name = ALIASES.get(name, name)
    if name not in LOCAL_LOADERS:
        raise ValueError(f"unknown corpus {name!r}; known: {sorted(LOCAL_LOADERS)} and aliases {sorted(ALIASES)}")
    split = SPLIT_ALIASES.get(split, split)
    task = task or DEFAULT_TASKS[name]
    langs = dict(source_lang=source_lang, target_lang=target_lang, language=language)
    if (data_dir is None) == (dataset is None):
        raise ValueError("pass exactly one of data_dir= (a local copy) or dataset= (a `datasets` object)")
    if dataset is not None:
        mapped = _map_hf(name, dataset, split, task, {**langs, **options})
        return mapped.filter(lambda e: _keep(e, languages, on_error, report, False))
    rows = LOCAL_LOADERS[name](os.fspath(data_dir), split, task, **langs, **options)
    return to_dataset(e for e in rows if _keep(e, languages, on_error, report, True))


def _keep(example: dict, languages: tuple[str, ...] | None, on_error: OnError, report: Any, check_files: bool) -> bool:
    try:
        check_example(example, languages, check_files)
    except DataError as error:
        handle_error(error, on_error, report)
        return False
    return True
