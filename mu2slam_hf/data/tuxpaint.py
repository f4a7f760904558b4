"""Tux Paint stamps (Debian ``tuxpaint-stamps-default``, GPL-2+): real read speech with transcripts and translations.

Every stamp is an image with a description under ``usr/share/tuxpaint/stamps/<category>/.../<stamp>``:

- ``<stamp>.txt``: the English description on the first line, then one ``<locale>.utf8=<text>`` line per
  translation (about 60 locales, all eight of :data:`LANGUAGES`);
- ``<stamp>_desc_<lang>.ogg``: the description read aloud in ``<lang>`` (``<stamp>_desc.ogg``: English), by
  volunteers (French, Spanish and Russian for nearly every stamp; English and Dutch for a few). Other ``.ogg``
  files are sound effects (or, for the digit stamps, the spoken digit) and are not used.

:func:`build_tuxpaint` (CLI ``mu2slam-build-tuxpaint``) pairs each clip with its own language's text (ASR) and
with the description in every other language (AST, English first), and writes MT rows between the texts
(en<->xx); audio is resampled to 16 kHz mono FLAC. Splits are by stamp (:func:`assign_stamp_splits`): stamps
that share a description (``frog`` and ``frog-1``) or a recording form one group, and each group goes to one
split by a stable hash of its first stamp's path, so no sentence and no recording is in two splits. A
language's readings come from one volunteer, so speakers cannot be held out: the test split holds out stamps
(sentences), not voices.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from ..vocabulary import DEFAULT_LANGUAGES
from .audio import convert_clips
from .fillets import default_cache_dir, fetch_debian_packages
from .libreoffice import LANGUAGES, translation_pairs
from .manifest import (
    connected_components,
    hash_split,
    normalize_text,
    summarize,
    write_manifest,
    write_summary,
)
from .schema import make_example

PACKAGE = "tuxpaint-stamps-default"
STAMPS_DIR = os.path.join("usr", "share", "tuxpaint", "stamps")
SPLIT_FRACTIONS = {"train": 0.7, "dev": 0.1, "test": 0.2}
LICENSE = "GPL-2.0-or-later"

_TRANSLATION = re.compile(r"^([A-Za-z_@]+)\.utf8=(.*)$")
_CLIP = re.compile(r"^(?P<stamp>.+)_desc(?:_(?P<lang>[a-z]{2,3}))?\.ogg$")  # no language: the English reading


@dataclass
class Stamp:
    """One stamp: ``name`` (its path under the stamps folder, no extension), ``texts[lang]`` (its description in
    each language that has one), ``clips[lang]`` (the path of each kept reading) and ``digests[lang]`` (the
    SHA-256 of that file)."""

    name: str
    texts: dict[str, str]
    clips: dict[str, str] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)
    split: str = "train"

    @property
    def key(self) -> str:
        """A file-name-safe unique key, ``animals.amphibians.frog``."""
        return self.name.replace("/", ".")


def fetch_tuxpaint(cache_dir: str | None = None) -> str:
    """Downloads (``apt-get download``) and extracts (``dpkg-deb -x``) the stamps package once; returns the
    stamps folder (``.../usr/share/tuxpaint/stamps``)."""
    root = fetch_debian_packages(cache_dir or default_cache_dir("tuxpaint"), (PACKAGE,), _install_hint)
    return os.path.join(root, STAMPS_DIR)


def _install_hint(reason: str) -> str:
    return (
        f"Cannot fetch the Tux Paint stamps: {reason}. This needs a Debian/Ubuntu machine with apt-get and "
        f"dpkg-deb and access to the Debian archive (run `apt-get update` first; package {PACKAGE}, in Debian "
        f"main). Alternatively extract it yourself (`apt-get download {PACKAGE}; dpkg-deb -x <deb> <dir>`) and "
        "pass <dir> as --stamps-dir."
    )


def read_description(path: str) -> dict[str, str]:
    """``{locale: text}`` of a stamp's ``.txt``: ``"en"`` from the first line, ``"de"``, ``"pt_BR"``... from the
    ``<locale>.utf8=<text>`` lines; whitespace collapsed, empty texts left out."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        lines = handle.read().splitlines()
    texts = {}
    for number, line in enumerate(lines):
        match = _TRANSLATION.match(line.strip())
        if match is None and number > 0:
            continue
        locale, text = match.groups() if match else ("en", line)
        if " ".join(text.split()):
            texts.setdefault(locale, " ".join(text.split()))
    return texts


def find_stamps_dir(path: str) -> str:
    """The stamps folder in ``path``: ``path`` itself or ``path/usr/share/tuxpaint/stamps`` (an extraction root).

    Raises:
        ValueError: neither holds a stamp description (a ``.txt`` with ``<locale>.utf8=`` lines), with what to pass.
    """
    for candidate in (os.path.join(path, STAMPS_DIR), path):
        for txt in glob.iglob(os.path.join(candidate, "**", "*.txt"), recursive=True):
            if len(read_description(txt)) > 1:
                return candidate
    raise ValueError(
        f"{path} is not a Tux Paint stamps folder: no stamp description (<stamp>.txt with '<locale>.utf8=' lines) "
        f"in it or in {os.path.join(path, STAMPS_DIR)}. Pass the folder {PACKAGE} was extracted to (`dpkg-deb -x`) "
        "or its .../usr/share/tuxpaint/stamps, or leave --stamps-dir out to fetch the package with apt."
    )


def read_stamps(
    stamps_dir: str, languages: tuple[str, ...], speech_languages: tuple[str, ...], stats: Counter
) -> list[Stamp]:
    """The stamps that have a description in ``languages`` or a reading in ``speech_languages``, sorted by name.

    A reading is dropped, and counted in ``stats`` as ``"<lang>/no_txt"`` (no ``.txt`` beside it),
    ``"<lang>/no_text"`` (the ``.txt`` has no text in its language) or ``"<lang>/duplicate_audio"`` (the same
    file as the reading of an earlier stamp, which keeps it).
    """
    stamps: dict[str, Stamp] = {}
    for path in sorted(glob.glob(os.path.join(stamps_dir, "**", "*.txt"), recursive=True)):
        name = os.path.relpath(path, stamps_dir)[: -len(".txt")].replace(os.sep, "/")
        description = read_description(path)
        texts = {lang: description[lang] for lang in languages if lang in description}  # English first
        stamps[name] = Stamp(name, texts)
    seen_audio: set[tuple[str, str]] = set()
    for path in sorted(glob.glob(os.path.join(stamps_dir, "**", "*_desc*.ogg"), recursive=True)):
        match = _CLIP.match(os.path.relpath(path, stamps_dir).replace(os.sep, "/"))
        lang = match and (match.group("lang") or "en")
        if lang not in speech_languages:
            continue
        stamp = stamps.get(match.group("stamp"))
        with open(path, "rb") as handle:
            digest = hashlib.sha256(handle.read()).hexdigest()
        reason = (
            "no_txt" if stamp is None
            else "no_text" if lang not in stamp.texts
            else "duplicate_audio" if (lang, digest) in seen_audio
            else None
        )  # fmt: skip
        if reason:
            stats[f"{lang}/{reason}"] += 1
            continue
        seen_audio.add((lang, digest))
        stamp.clips[lang], stamp.digests[lang] = path, digest
    return [stamp for stamp in stamps.values() if stamp.texts or stamp.clips]


def stamp_split(name: str) -> str:
    """``"train"``, ``"dev"`` or ``"test"`` for a stamp path (``animals/amphibians/frog``), by a stable hash of it."""
    return hash_split(f"tuxpaint:{name}", SPLIT_FRACTIONS)


def assign_stamp_splits(stamps: list[Stamp]) -> None:
    """Sets ``stamp.split``: stamps sharing a normalised description (in any language) or a recording form one
    group, whose split is :func:`stamp_split` of its first stamp's path."""
    keys = [[normalize_text(text) for text in s.texts.values()] + list(s.digests.values()) for s in stamps]
    for component in connected_components(keys):
        split = stamp_split(min(stamps[i].name for i in component))
        for i in component:
            stamps[i].split = split


def stamp_examples(
    stamp: Stamp,
    audio: dict[str, tuple[str, float]],
    pairs: list[tuple[str, str]],
    seen_pairs: set[tuple[str, ...]],
    stats: Counter,
) -> list[dict[str, Any]]:
    """ASR and AST rows of each reading (``audio[lang] = (relative path, seconds)``) and MT rows of the texts.

    AST goes from each reading to every other language the stamp has a text in, English first; MT goes along
    ``pairs``. A pair whose two sides are the same normalised text (an untranslated name) is left out (counted as
    ``"identical_pair"``), as is an MT pair already written for an earlier stamp (``"duplicate_mt"``).
    """
    texts, key, examples = stamp.texts, stamp.key, []
    for lang, (path, seconds) in audio.items():
        speech = dict(audio=path, duration=seconds, speaker=f"tuxpaint-{lang}", source_text=texts[lang])
        examples.append(make_example(f"tuxpaint-asr-{lang}-{key}", "asr", lang, target_text=texts[lang], **speech))
        for target in texts:  # in the order of the languages asked, English first
            if target != lang and _distinct(texts[lang], texts[target], stats):
                examples.append(
                    make_example(
                        f"tuxpaint-ast-{lang}-{target}-{key}", "ast", lang,
                        target_text=texts[target], target_lang=target, **speech,
                    )
                )  # fmt: skip
    for src, tgt in pairs:
        if src not in texts or tgt not in texts or not _distinct(texts[src], texts[tgt], stats):
            continue
        seen = (src, tgt, normalize_text(texts[src]), normalize_text(texts[tgt]))
        if seen in seen_pairs:
            stats["duplicate_mt"] += 1
            continue
        seen_pairs.add(seen)
        pair = dict(source_text=texts[src], target_text=texts[tgt], target_lang=tgt)
        examples.append(make_example(f"tuxpaint-mt-{src}-{tgt}-{key}", "mt", src, **pair))
    return examples


def _distinct(source: str, target: str, stats: Counter) -> bool:
    if normalize_text(source) != normalize_text(target):
        return True
    stats["identical_pair"] += 1
    return False


def _check_languages(languages: tuple[str, ...], speech_languages: tuple[str, ...]) -> None:
    unknown = sorted(set(languages + speech_languages) - set(DEFAULT_LANGUAGES))
    if unknown:
        raise ValueError(f"languages {unknown} are not in the model's vocabulary ({','.join(DEFAULT_LANGUAGES)})")
    if not set(speech_languages) <= set(languages):
        raise ValueError(f"speech languages {speech_languages} must be among the text languages {languages}")


def build_tuxpaint(
    out: str,
    stamps_dir: str | None = None,
    cache_dir: str | None = None,
    languages: tuple[str, ...] = LANGUAGES,
    speech_languages: tuple[str, ...] | None = None,
    extra_pairs: tuple[str, ...] = (),
    num_workers: int = 2,
) -> dict[str, Any]:
    """Builds the Tux Paint real-speech corpus into ``out`` and returns its summary (also ``summary.json``).

    Args:
        out: output corpus directory (``<split>.jsonl``, ``audio/<lang>/<stamp path>.flac``, ``summary.json``).
        stamps_dir: an extracted package (its root or its ``usr/share/tuxpaint/stamps``); fetched with
            :func:`fetch_tuxpaint` into ``cache_dir`` when None.
        languages: the description languages written (English always added; any language of the model's
            vocabulary, :data:`~mu2slam_hf.vocabulary.DEFAULT_LANGUAGES`; default the eight of :data:`LANGUAGES`).
        speech_languages: the readings used (default: every one of ``languages``).
        extra_pairs: ``"xx-yy"`` MT pairs besides en<->xx (both directions written).
    Raises:
        ValueError: an unknown language, or ``stamps_dir`` is not a Tux Paint stamps folder (before writing).
    """
    languages = tuple(dict.fromkeys(("en", *languages)))
    speech_languages = tuple(speech_languages or languages)
    _check_languages(languages, speech_languages)
    pairs = translation_pairs(languages, extra_pairs)
    start = time.time()
    stamps_dir = find_stamps_dir(stamps_dir) if stamps_dir else fetch_tuxpaint(cache_dir)
    stats: Counter = Counter()
    stamps = read_stamps(stamps_dir, languages, speech_languages, stats)
    assign_stamp_splits(stamps)
    relative = {(s.name, lang): os.path.join("audio", lang, f"{s.name}.flac") for s in stamps for lang in s.clips}
    jobs = [(s.clips[lang], os.path.join(out, relative[(s.name, lang)])) for s in stamps for lang in s.clips]
    durations = convert_clips(jobs, num_workers)
    splits: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLIT_FRACTIONS}
    failures, seen_pairs = {}, set()
    for stamp in stamps:
        audio = {}
        for lang in stamp.clips:
            rel = relative[(stamp.name, lang)]
            result = durations[os.path.join(out, rel)]
            if isinstance(result, str):
                failures[rel] = result
            else:
                audio[lang] = (rel, result)
        splits[stamp.split] += stamp_examples(stamp, audio, pairs, seen_pairs, stats)
    os.makedirs(out, exist_ok=True)
    for split, examples in splits.items():
        write_manifest(os.path.join(out, f"{split}.jsonl"), examples)
    summary = summarize(splits) | clip_table(splits)
    summary.update(
        source=f"Debian {PACKAGE}", license=LICENSE, languages=list(languages),
        speech_languages=list(speech_languages), build_seconds=round(time.time() - start, 1),
        stamps={s: sum(stamp.split == s for stamp in stamps) for s in SPLIT_FRACTIONS},
        dropped=dict(sorted(stats.items())), failures=failures,
    )  # fmt: skip
    write_summary(out, summary)
    return summary


def clip_table(splits: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """``{"clips": {split: {lang: n}}, "minutes": {split: {lang: m}}}`` of the readings (one ASR row each)."""
    clips: dict[str, Counter] = {split: Counter() for split in splits}
    seconds: dict[str, defaultdict] = {split: defaultdict(float) for split in splits}
    for split, rows in splits.items():
        for row in rows:
            if row["task"] == "asr":
                clips[split][row["source_lang"]] += 1
                seconds[split][row["source_lang"]] += row["duration"]
    return {
        "clips": {split: dict(sorted(counts.items())) for split, counts in clips.items()},
        "minutes": {split: {k: round(v / 60, 1) for k, v in sorted(s.items())} for split, s in seconds.items()},
    }
