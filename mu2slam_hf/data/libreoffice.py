"""LibreOffice help (Debian ``libreoffice-help-<lang>``, MPL-2.0): a real n-way parallel text corpus.

Each package holds the help as HTML, one file per page, under ``usr/share/libreoffice/help/<dir>/text/...``
(``<dir>`` is ``en-US`` for English, the ISO code otherwise). Every paragraph and heading carries an id
(``<p id="par_id3149398" ...>``, ``<h2 id="hd_id3150040" ...>``) that is the same in every language, so
paragraphs are aligned on (page, id).

Cleaning (:func:`clean_fragment`, :func:`align_paragraphs`): markup is removed (platform/module switches
keep their default case only, images dropped, entities decoded). Dropped: code paragraphs; English
paragraphs with fewer than :data:`MIN_WORDS` words besides UI names (menu paths, keys, literals: UI-only
fragments, single terms, function names), mostly non-letters, or longer than :data:`MAX_WORDS` words; a
translation equal to the English (untranslated copy), of implausible length or with an unresolved link.
Every text occurs once per language in the whole corpus (the first occurrence, train pages first, is
kept), so no sentence is in two splits. A page goes to one split (:func:`page_split`, a hash of its path).

Output (:func:`build_libreoffice`, CLI ``mu2slam-build-text``): text-only examples per language, MT en<->xx
(and xx<->yy when asked) and, for a subset sized by ``speech_hours``, espeak-ng speech with ASR and AST
xx-en/en-xx (:func:`mu2slam_hf.data.synthetic.synthesize_lines`), in the manifest format of
:mod:`mu2slam_hf.data.manifest`.
"""

from __future__ import annotations

import glob
import html
import os
import re
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from .fillets import default_cache_dir, fetch_debian_packages
from .manifest import hash_split, normalize_text, summarize, write_manifest, write_summary
from .schema import SPEECH_TASKS, make_example
from .synthetic import TextGroup, check_espeak, group_examples, speakable, synthesize_lines, voice_settings

LANGUAGES = ("en", "de", "fr", "es", "it", "nl", "ru", "cs")
HELP_ROOT = os.path.join("usr", "share", "libreoffice", "help")
SPLIT_FRACTIONS = {"train": 0.9, "dev": 0.05, "test": 0.05}
SPEECH_FRACTIONS = {"train": 0.8, "dev": 0.1, "test": 0.1}  # of --speech-hours; enough dev/test audio to score
MIN_WORDS, MAX_WORDS, SPEECH_MAX_WORDS = 2, 80, 30
MAX_LENGTH_RATIO = 3.0  # translation/English characters (or the inverse) beyond this: misaligned
CODE_CLASSES = ("code", "codeintable", "smathcode")
UI_CLASSES = ("menuitem", "keycode", "literal", "input", "widget", "code")
LICENSE = "MPL-2.0"

_PARAGRAPH = re.compile(r'<(p|h[1-6])\s([^>]*\bid="((?:par|hd)_id[^"]*)"[^>]*)>(.*?)</\1>', re.S)
_TAG = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9]*)([^>]*)>")
_CLASS = re.compile(r'\bclass="([^"]*)"')
_VOID = {"img", "br", "input", "wbr", "hr"}
_BROKEN_EMBED = re.compile(r"\[text/[^\]]*not found\]")  # a link the help compiler could not resolve


@dataclass
class Paragraph:
    """One aligned paragraph: ``texts[lang]`` (English always present) on page ``page`` with id ``pid``."""

    page: str
    pid: str
    texts: dict[str, str]
    split: str = "train"

    @property
    def key(self) -> str:
        """A file-name-safe unique key, ``<page with dots>-<id>``."""
        return f"{os.path.splitext(self.page)[0].replace('/', '.')}-{self.pid}"


def help_dir_name(lang: str) -> str:
    """The folder of ``lang`` under ``usr/share/libreoffice/help`` (``en-US`` for English)."""
    return "en-US" if lang == "en" else lang


def package_name(lang: str) -> str:
    """The Debian package of ``lang``'s help: ``libreoffice-help-en-us``, ``libreoffice-help-de``, ..."""
    return f"libreoffice-help-{help_dir_name(lang).lower()}"


def fetch_help(languages: tuple[str, ...] = LANGUAGES, cache_dir: str | None = None) -> str:
    """Downloads and extracts the help packages once (cached); returns the help folder (``.../help``)."""
    packages = tuple(package_name(lang) for lang in languages)
    return os.path.join(
        fetch_debian_packages(cache_dir or default_cache_dir("libreoffice-help"), packages, _hint), HELP_ROOT
    )


def _hint(reason: str) -> str:
    return (
        f"Cannot fetch the LibreOffice help: {reason}. This needs a Debian/Ubuntu machine with apt-get and "
        "dpkg-deb and access to the Debian archive (run `apt-get update` first; packages "
        "libreoffice-help-<lang>, e.g. libreoffice-help-en-us, libreoffice-help-de). Alternatively extract them "
        f"yourself (`apt-get download ...; dpkg-deb -x <deb> <dir>`) and pass <dir>/{HELP_ROOT} as --help-dir."
    )


def page_split(page: str) -> str:
    """``"train"``, ``"dev"`` or ``"test"`` for a help page (``text/shared/01/06040000.html``), by a hash of it."""
    return hash_split(f"libreoffice-help:{page}", SPLIT_FRACTIONS)


def clean_fragment(fragment: str, drop_classes: tuple[str, ...] = ()) -> str:
    """The plain text of a paragraph's inner HTML: tags removed, entities decoded, whitespace collapsed.

    Platform/module switches (``<span hidden="true" id="MAC...">``) keep only their ``default...`` case;
    images are dropped; elements whose class is in ``drop_classes`` are dropped with their content.
    """
    parts, dropping, pos = [], [], 0  # dropping: one flag per open element
    for match in _TAG.finditer(fragment):
        if not any(dropping):
            parts.append(fragment[pos : match.start()])
        pos = match.end()
        closing, name, attrs = match.group(1), match.group(2).lower(), match.group(3)
        if name in _VOID or attrs.endswith("/"):
            parts.append(" " if name == "br" and not any(dropping) else "")
        elif closing:
            if dropping:
                dropping.pop()
        else:
            hidden = re.search(r"\bhidden\b", attrs) is not None and 'id="default' not in attrs
            css = _CLASS.search(attrs)
            dropping.append(hidden or (css is not None and css.group(1) in drop_classes))
    if not any(dropping):
        parts.append(fragment[pos:])
    return " ".join(html.unescape("".join(parts)).split())


def read_language(help_dir: str, lang: str) -> dict[tuple[str, str], tuple[str, int]]:
    """``{(page, id): (text, prose words)}`` for every paragraph/heading of one language's help.

    ``page`` is the path under the language folder (``text/shared/01/06040000.html``); ``prose words`` counts
    the words (:func:`_count_words`) left once UI names (:data:`UI_CLASSES`) are removed. Code paragraphs are skipped; a repeated
    id on a page keeps its first occurrence.
    """
    base = os.path.join(help_dir, help_dir_name(lang))
    if not os.path.isdir(os.path.join(base, "text")):
        raise FileNotFoundError(
            f"no LibreOffice help for {lang!r} in {base}/text; fetch it with fetch_help or "
            f"`apt-get download {package_name(lang)}` and `dpkg-deb -x`, then pass the .../{HELP_ROOT} folder"
        )
    table: dict[tuple[str, str], tuple[str, int]] = {}
    for path in sorted(glob.glob(os.path.join(base, "text", "**", "*.html"), recursive=True)):
        page = os.path.relpath(path, base).replace(os.sep, "/")
        with open(path, encoding="utf-8", errors="replace") as handle:
            source = handle.read()
        for _, attrs, pid, inner in _PARAGRAPH.findall(source):
            css = _CLASS.search(attrs)
            if (page, pid) in table or (css is not None and css.group(1) in CODE_CLASSES):
                continue
            table[(page, pid)] = (clean_fragment(inner), _count_words(clean_fragment(inner, UI_CLASSES)))
    return table


def _read_job(job: tuple[str, str]) -> dict[tuple[str, str], tuple[str, int]]:
    return read_language(*job)


def _count_words(text: str) -> int:
    """Words with at least one letter (``-``, ``+``, numbers and symbols are not words)."""
    return sum(any(ch.isalpha() for ch in word) for word in text.split())


def _is_prose(text: str, prose_words: int) -> bool:
    """Enough words, mostly letters, and at least :data:`MIN_WORDS` words besides UI names: worth translating."""
    letters = sum(ch.isalpha() for ch in text)
    return (
        not _BROKEN_EMBED.search(text)
        and MIN_WORDS <= prose_words
        and len(text.split()) <= MAX_WORDS
        and letters >= 0.5 * len(text.replace(" ", ""))
    )


def _plausible_translation(english: str, text: str) -> bool:
    """Translated (not an English copy), of a length compatible with the English, no unresolved link."""
    ratio = len(text) / max(1, len(english))
    in_range = 1 / MAX_LENGTH_RATIO <= ratio <= MAX_LENGTH_RATIO
    return in_range and normalize_text(text) != normalize_text(english) and not _BROKEN_EMBED.search(text)


def align_paragraphs(
    tables: dict[str, dict[tuple[str, str], tuple[str, int]]], stats: Counter | None = None
) -> list[Paragraph]:
    """Aligns :func:`read_language` tables on (page, id), cleans and deduplicates; one split per page.

    Args:
        tables: ``tables[lang]`` for every language, English included.
        stats: counts of what was dropped and why (``"en/too_short_or_ui"``, ``"de/untranslated"``, ...).
    Returns:
        The kept paragraphs, train pages first then dev then test, each in page and document order. Every
        text (normalised) occurs once per language: a later duplicate is removed from its paragraph (the
        whole paragraph when it is the English).
    """
    stats = stats if stats is not None else Counter()
    order = {split: rank for rank, split in enumerate(SPLIT_FRACTIONS)}
    english = tables["en"]
    keys = sorted(english, key=lambda k: (order[page_split(k[0])], k[0]))  # stable: document order kept
    seen: dict[str, set[str]] = {lang: set() for lang in tables}
    paragraphs = []
    for page, pid in keys:
        text, prose_words = english[(page, pid)]
        if not _is_prose(text, prose_words):
            stats["en/too_short_long_or_ui"] += 1
            continue
        if normalize_text(text) in seen["en"]:
            stats["en/duplicate"] += 1
            continue
        seen["en"].add(normalize_text(text))
        texts = {"en": text}
        for lang, table in tables.items():
            if lang != "en":
                texts.update(_translation(lang, table.get((page, pid)), text, seen[lang], stats))
        paragraphs.append(Paragraph(page, pid, texts, page_split(page)))
    return paragraphs


def _translation(
    lang: str, entry: tuple[str, int] | None, english: str, seen: set[str], stats: Counter
) -> dict[str, str]:
    """``{lang: text}`` when the translation is kept, ``{}`` (and the reason counted in ``stats``) when not."""
    if entry is None or not entry[0]:
        reason = "missing"
    elif not _plausible_translation(english, entry[0]):
        reason = "untranslated_or_length"
    elif normalize_text(entry[0]) in seen:
        reason = "duplicate"
    else:
        seen.add(normalize_text(entry[0]))
        return {lang: entry[0]}
    stats[f"{lang}/{reason}"] += 1
    return {}


def text_examples(paragraph: Paragraph, pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Text-only examples of every language of ``paragraph`` and MT examples of each (src, tgt) in ``pairs``
    that it has both sides of."""
    texts, key = paragraph.texts, paragraph.key
    examples = [make_example(f"lo-text-{lang}-{key}", "text", lang, source_text=t) for lang, t in texts.items()]
    for src, tgt in pairs:
        if src in texts and tgt in texts:
            pair = dict(source_text=texts[src], target_text=texts[tgt], target_lang=tgt)
            examples.append(make_example(f"lo-mt-{src}-{tgt}-{key}", "mt", src, **pair))
    return examples


def translation_pairs(languages: tuple[str, ...], extra_pairs: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """en->xx and xx->en for every other language, plus both directions of each ``"xx-yy"`` in ``extra_pairs``."""
    pairs = [(a, b) for lang in languages if lang != "en" for a, b in (("en", lang), (lang, "en"))]
    for item in extra_pairs:
        src, _, tgt = item.partition("-")
        if src not in languages or tgt not in languages or src == tgt:
            raise ValueError(f"MT pair {item!r} must be 'xx-yy' with two different languages of {languages}")
        pairs += [p for p in ((src, tgt), (tgt, src)) if p not in pairs]
    return pairs


def estimated_seconds(key: str, lang: str, text: str, seed: int) -> float:
    """espeak-ng duration of ``text`` at its seeded speed (words per minute): characters / speed, plus silence.

    The two constants are a least-squares fit on 876 lines this builder synthesised in the 8 languages
    (correlation 0.94; characters predict better than words across languages).
    """
    return len(text) * 10.4 / voice_settings(seed, key, lang)["speed"] + 0.56


def choose_speech(
    paragraphs: list[Paragraph], languages: tuple[str, ...], hours: float, seed: int = 0
) -> list[tuple[str, str, str]]:
    """The ``(key, lang, text)`` lines to synthesise: whole paragraphs (every language of ``languages`` it has,
    English included) in a seeded random order per split, until the split's share of ``hours``
    (:data:`SPEECH_FRACTIONS`, by :func:`estimated_seconds`) is reached. Paragraphs longer than
    :data:`SPEECH_MAX_WORDS` English words, or with a URL (:func:`~mu2slam_hf.data.synthetic.speakable`), are not
    spoken."""
    rng = np.random.default_rng([seed, 13])
    lines = []
    for split, fraction in SPEECH_FRACTIONS.items():
        budget = hours * 3600 * fraction
        members = [p for p in paragraphs if p.split == split and len(p.texts["en"].split()) <= SPEECH_MAX_WORDS]
        for index in rng.permutation(len(members)):
            if budget <= 0:
                break
            paragraph = members[index]
            if not speakable(paragraph.texts):  # skipped in the permutation: the other paragraphs' draws stay
                continue
            for lang in languages:
                if lang in paragraph.texts:
                    lines.append((f"lo-{paragraph.key}", lang, paragraph.texts[lang]))
                    budget -= estimated_seconds(lines[-1][0], lang, lines[-1][2], seed)
    return lines


def speech_examples(paragraph: Paragraph, audio: dict[str, tuple[str, float, str]]) -> list[dict[str, Any]]:
    """Speech-only, ASR and AST (xx-en, en-xx) examples of a spoken paragraph (``audio[lang]`` as returned by
    :func:`~mu2slam_hf.data.synthetic.synthesize_lines`)."""
    group = TextGroup(f"lo-{paragraph.key}", paragraph.texts)
    return [e for e in group_examples(group, audio) if e["task"] in SPEECH_TASKS]


def build_libreoffice(
    out: str,
    languages: tuple[str, ...] = LANGUAGES,
    help_dir: str | None = None,
    cache_dir: str | None = None,
    speech_hours: float = 0.0,
    speech_languages: tuple[str, ...] | None = None,
    extra_pairs: tuple[str, ...] = (),
    seed: int = 0,
    num_workers: int = 2,
) -> dict[str, Any]:
    """Builds the LibreOffice help corpus into ``out`` and returns its summary (also ``summary.json``).

    Args:
        out: output directory (``<split>.jsonl``, ``audio/<lang>/*.flac`` when speech is asked, ``summary.json``).
        languages: ISO codes of :data:`LANGUAGES`; English is always included (it is the pivot of alignment).
        help_dir: an extracted ``.../usr/share/libreoffice/help`` folder; fetched with apt when None.
        speech_hours: hours of espeak-ng speech (all languages and splits together; 0: text only).
        speech_languages: languages spoken (default: ``languages``).
        extra_pairs: ``"xx-yy"`` MT pairs besides en<->xx (both directions written).
    """
    languages = tuple(dict.fromkeys(("en", *languages)))
    unknown = [lang for lang in (*languages, *(speech_languages or ())) if lang not in LANGUAGES]
    if unknown:
        raise ValueError(f"no LibreOffice help package known for {unknown}; choose from {LANGUAGES}")
    pairs = translation_pairs(languages, extra_pairs)
    if speech_hours > 0:
        check_espeak()
    start = time.time()
    help_dir = help_dir or fetch_help(languages, cache_dir)
    with ProcessPoolExecutor(max(1, num_workers)) as pool:
        tables = dict(zip(languages, pool.map(_read_job, [(help_dir, lang) for lang in languages]), strict=True))
    stats: Counter = Counter({f"{lang}/raw": len(table) for lang, table in tables.items()})
    paragraphs = align_paragraphs(tables, stats)
    lines = choose_speech(paragraphs, speech_languages or languages, speech_hours, seed) if speech_hours > 0 else []
    audio, failures = synthesize_lines(lines, out, seed, num_workers) if lines else ({}, {})
    splits: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLIT_FRACTIONS}
    for paragraph in paragraphs:
        splits[paragraph.split] += text_examples(paragraph, pairs)
        if f"lo-{paragraph.key}" in audio:
            splits[paragraph.split] += speech_examples(paragraph, audio[f"lo-{paragraph.key}"])
    os.makedirs(out, exist_ok=True)
    for split, examples in splits.items():
        write_manifest(os.path.join(out, f"{split}.jsonl"), examples)
    summary = summarize(splits)
    summary.update(
        source=f"Debian {', '.join(package_name(lang) for lang in languages)}", license=LICENSE,
        languages=list(languages), build_seconds=round(time.time() - start, 1), seed=seed,
        pages={s: len({p.page for p in paragraphs if p.split == s}) for s in SPLIT_FRACTIONS},
        paragraphs={s: sum(p.split == s for p in paragraphs) for s in SPLIT_FRACTIONS},
        cleaning=dict(sorted(stats.items())), speech_failures=failures,
    )  # fmt: skip
    write_summary(out, summary)
    return summary
