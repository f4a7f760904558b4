"""Shared steps of the builders of real recordings with known text (words, syllables, letters, dialogue lines).

A builder (:mod:`~mu2slam_hf.data.kde_games`, :mod:`~mu2slam_hf.data.gcompris`, :mod:`~mu2slam_hf.data.drascula`)
lists :class:`Clip` s (one recording, its language, its transcript, its speaker, the *item* it names: a word or a
line and its meaning across languages, and optionally the item's text in other languages); :func:`build_clip_corpus`
groups the clips into items that share an item key, a normalised text (of any language) or a recording
(:func:`~mu2slam_hf.data.manifest.connected_components`), sends each group to one split by a stable hash
(:func:`~mu2slam_hf.data.manifest.hash_split`), converts the audio to 16 kHz mono FLAC
(:func:`~mu2slam_hf.data.audio.convert_clips`), drops silent clips, and writes ``<split>.jsonl`` (ASR rows, and AST
rows to the translations a clip has) and ``summary.json`` (clips and minutes per language and split, what was
dropped and why).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soundfile as sf

from ..vocabulary import DEFAULT_LANGUAGES
from .audio import convert_clips
from .manifest import (
    connected_components,
    format_summary,
    hash_split,
    normalize_text,
    summarize,
    write_manifest,
    write_summary,
)
from .schema import make_example
from .tuxpaint import clip_table

SPLIT_FRACTIONS = {"train": 0.7, "dev": 0.1, "test": 0.2}
SILENCE_PEAK = 10 ** (-50 / 20)  # a clip whose loudest sample is below -50 dBFS holds no speech
# More letters a second than careful speech says: the text is not what the clip says (a word list newer than its
# recordings: GCompris' "un chariot de supermarché" over a 1.1 s "un chariot"). Careful single words run 5-13.
MAX_LETTERS_PER_SECOND = 15.0


@dataclass
class Clip:
    """One recording: ``path`` (the source file), ``lang``, ``text`` (its transcript), ``speaker``, ``item`` (what
    it names, shared by the recordings of the same word or meaning, in any language), ``key`` (unique in the
    corpus, file-name safe: the row id and the audio path come from it), ``kind`` (``word``, ``syllable``,
    ``letter``...: counted in the summary) and ``translations`` (the item's text in other languages, target language
    -> text: one AST row each)."""

    path: str
    lang: str
    text: str
    speaker: str
    item: str
    key: str
    kind: str = "word"
    split: str = "train"
    digest: str = ""
    translations: dict[str, str] = field(default_factory=dict)


def check_languages(languages: tuple[str, ...]) -> None:
    """Raises ValueError for a language outside the model's vocabulary."""
    unknown = sorted(set(languages) - set(DEFAULT_LANGUAGES))
    if unknown:
        raise ValueError(f"languages {unknown} are not in the model's vocabulary ({','.join(DEFAULT_LANGUAGES)})")


def file_digest(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def drop_duplicate_audio(clips: list[Clip], stats: Counter) -> list[Clip]:
    """The clips minus those whose file is byte for byte an earlier clip's (counted ``<lang>/duplicate_audio``);
    sets ``clip.digest``."""
    kept, seen = [], set()
    for clip in clips:
        clip.digest = clip.digest or file_digest(clip.path)
        if clip.digest in seen:
            stats[f"{clip.lang}/duplicate_audio"] += 1
            continue
        seen.add(clip.digest)
        kept.append(clip)
    return kept


def assign_splits(clips: list[Clip], corpus: str, fractions: dict[str, float] = SPLIT_FRACTIONS) -> None:
    """Sets ``clip.split``: clips sharing an item, a normalised text (in any language) or a recording form one
    group, whose split is ``hash_split(f"{corpus}:{first item}")``; so no word and no meaning is in two splits."""
    keys = [
        [f"item:{c.item}", f"text:{normalize_text(c.text)}", f"audio:{c.digest}"]
        + [f"text:{normalize_text(text)}" for text in c.translations.values()]
        for c in clips
    ]
    for component in connected_components(keys):
        split = hash_split(f"{corpus}:{min(clips[i].item for i in component)}", fractions)
        for i in component:
            clips[i].split = split


def is_silent(path: str) -> bool:
    """Whether the (converted) clip's loudest sample is below :data:`SILENCE_PEAK`."""
    array, _ = sf.read(path, dtype="float32")
    return not array.size or float(np.abs(array).max()) < SILENCE_PEAK


def too_fast(text: str, seconds: float, max_letters_per_second: float = MAX_LETTERS_PER_SECOND) -> bool:
    """Whether ``text`` has more than ``max_letters_per_second`` letters and digits a second of ``seconds``."""
    return sum(char.isalnum() for char in text) > max_letters_per_second * seconds


def build_clip_corpus(
    out: str,
    clips: list[Clip],
    corpus: str,
    stats: Counter,
    num_workers: int = 2,
    fractions: dict[str, float] = SPLIT_FRACTIONS,
    start: float | None = None,
    max_letters_per_second: float = MAX_LETTERS_PER_SECOND,
    **facts: Any,
) -> dict[str, Any]:
    """Splits, converts and writes ``clips`` as ASR (and AST) rows into ``out``; returns the summary
    (``summary.json``).

    Rows: :func:`clip_examples`, audio ``audio/<lang>/<key>.flac``. Clips that fail to decode are in ``failures``;
    silent and empty ones are removed and counted as ``<lang>/silent`` in ``dropped`` (with ``stats``), as are clips
    too short for their text (:func:`too_fast` at ``max_letters_per_second``, ``<lang>/too_fast``). ``facts`` are
    added to the summary (source, licence...).
    """
    start = time.time() if start is None else start
    clips = drop_duplicate_audio(clips, stats)
    assign_splits(clips, corpus, fractions)
    relative = [os.path.join("audio", clip.lang, f"{clip.key}.flac") for clip in clips]
    if len(set(relative)) != len(relative):
        raise ValueError(f"{corpus}: two clips of one language share a key")  # a builder's bug, not the data's
    durations = convert_clips(
        [(c.path, os.path.join(out, rel)) for c, rel in zip(clips, relative, strict=True)], num_workers
    )
    splits: dict[str, list[dict[str, Any]]] = {split: [] for split in fractions}
    failures: dict[str, str] = {}
    kinds: Counter = Counter()
    for clip, rel in zip(clips, relative, strict=True):
        target = os.path.join(out, rel)
        seconds = durations[target]
        if isinstance(seconds, str):
            if seconds == "empty audio":
                stats[f"{clip.lang}/silent"] += 1
            else:
                failures[rel] = seconds
            continue
        reason = (
            "silent" if is_silent(target)
            else "too_fast" if too_fast(clip.text, seconds, max_letters_per_second)
            else None
        )  # fmt: skip
        if reason:
            os.remove(target)
            stats[f"{clip.lang}/{reason}"] += 1
            continue
        kinds[f"{clip.lang}/{clip.kind}"] += 1
        splits[clip.split] += clip_examples(corpus, clip, rel, seconds, stats)
    os.makedirs(out, exist_ok=True)
    for split, rows in splits.items():
        write_manifest(os.path.join(out, f"{split}.jsonl"), rows)
    items = {split: len({c.item for c in clips if c.split == split}) for split in fractions}
    summary = summarize(splits) | clip_table(splits)
    summary.update(
        facts, items=items, speakers=sorted({c.speaker for c in clips}), kinds=dict(sorted(kinds.items())),
        dropped=dict(sorted(stats.items())), failures=failures, build_seconds=round(time.time() - start, 1),
    )  # fmt: skip
    write_summary(out, summary)
    return summary


def clip_examples(corpus: str, clip: Clip, audio: str, seconds: float, stats: Counter) -> list[dict[str, Any]]:
    """The clip's ASR row (id ``<corpus>-asr-<lang>-<key>``) and an AST row to each of its translations (id
    ``<corpus>-ast-<lang>-<target>-<key>``); a translation equal to the transcript once normalised (a name) is left
    out and counted as ``identical_pair``."""
    speech = dict(audio=audio, duration=seconds, speaker=clip.speaker, source_text=clip.text)
    rows = [make_example(f"{corpus}-asr-{clip.lang}-{clip.key}", "asr", clip.lang, target_text=clip.text, **speech)]
    for target, text in clip.translations.items():
        if normalize_text(text) == normalize_text(clip.text):
            stats["identical_pair"] += 1
            continue
        ast_id = f"{corpus}-ast-{clip.lang}-{target}-{clip.key}"
        rows.append(make_example(ast_id, "ast", clip.lang, target_text=text, target_lang=target, **speech))
    return rows


def format_clip_summary(summary: dict[str, Any]) -> str:
    """What a clip builder's command prints: :func:`~mu2slam_hf.data.manifest.format_summary`, then items, clips
    and minutes per split, and what was dropped."""
    return "\n".join(
        [
            format_summary(summary),
            f"items per split: {summary['items']}",
            f"clips per split: {summary['clips']}; minutes: {summary['minutes']}",
            f"dropped: {summary['dropped']}; unreadable audio: {len(summary['failures'])}",
        ]
    )
