"""WMT newstest, Multi30k and Tatoeba: real parallel text between English and de, fr, es, it, nl, ru, cs.

The builder reads folders the user has downloaded (it downloads nothing):

- ``--testsets-dir``: the ``testsets`` folder of https://github.com/Helsinki-NLP/OPUS-MT-testsets (or the
  repository itself), laid out as ``<src>-<tgt>/<set>.<iso3>`` with ISO 639-3 codes and one sentence a line,
  e.g. ``deu-eng/newstest2019.deu`` and ``deu-eng/newstest2019.eng``. Both ``xxx-eng`` and ``eng-xxx`` are read.
- ``--multi30k-dir``: https://github.com/multi30k/dataset (or its ``data/task1/raw`` folder), whose
  ``train.<en|de|fr|cs>.gz`` hold 29,000 line-aligned image captions.

Splits (:func:`set_split`): newstest up to 2018, ``news-test2008``, ``newssyscomb2009``, the Tatoeba test files
and Multi30k train for training; newstest2019 for dev; newstest2020 for test. From 2019 on, WMT test sets are
source-original, so a dev/test set gives rows in its folder's direction only (``deu-eng/newstest2020``: de->en);
training sets give both directions. FLORES and NTREX files are other people's benchmarks: they are never opened.
Every other file (Multi30k and TICO-19 test sets, second references, later years) is not used.

Cleaning: pairs with an empty side or whose two sides are equal once normalised
(:func:`~mu2slam_hf.data.manifest.normalize_text`) are dropped, and a pair repeated in a split is kept once.
Held-out text: a training pair is dropped when either side, normalised, is a sentence of this corpus's dev or
test split or of the dev/test manifests passed as ``held_out`` (the LibreOffice help corpus, the synthetic
corpus...); a dev pair is dropped when either side is a test sentence.

Output (:func:`build_parallel_text`, CLI ``mu2slam-build-parallel-text``): ``text`` rows (each distinct sentence
of a language once per split) and ``mt`` rows xx->en and en->xx in the manifest format of
:mod:`mu2slam_hf.data.manifest`. Ids carry the set each row comes from (:func:`source_set`).
"""

from __future__ import annotations

import gzip
import os
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .libreoffice import LANGUAGES
from .manifest import held_out_texts, normalize_text, summarize, write_manifest, write_summary
from .schema import make_example

ISO3 = {"en": "eng", "de": "deu", "fr": "fra", "es": "spa", "it": "ita", "nl": "nld", "ru": "rus", "cs": "ces"}
MULTI30K_LANGUAGES = ("de", "fr", "cs")
OTHER_BENCHMARKS = ("flores", "ntrex")  # never read, whatever the split would be
LAST_TRAIN_YEAR, DEV_YEAR, TEST_YEAR = 2018, 2019, 2020
TRAIN_SETS = ("news-test2008", "newssyscomb2009")
SPLITS = ("train", "dev", "test")
MULTI30K_SET = "multi30k-train"
LICENSES = {
    "newstest": "WMT news test sets (statmt.org); OPUS-MT-testsets states no licence for them: check WMT's terms",
    "tatoeba": "CC-BY 2.0 FR (Tatoeba)",
    "multi30k": "non-commercial research or educational use, under the Flickr30k terms",
}

_NEWSTEST = re.compile(r"newstest(\d{4})")
_TATOEBA = re.compile(r"tatoeba-test-v[\d-]+")


@dataclass(frozen=True)
class SentencePair:
    """One aligned sentence: ``text`` in ``lang`` and its English ``english``.

    ``source_set`` is the set it comes from (``newstest2019``, ``tatoeba-test-v2021-08-07``, ``multi30k-train``),
    ``key`` a unique, file-name-safe key (``newstest2019.deu-eng.17``: set, folder, line), ``direction`` the only
    direction to write (``("de", "en")``) or None for both.
    """

    lang: str
    text: str
    english: str
    source_set: str
    key: str
    direction: tuple[str, str] | None = None

    def directions(self) -> list[tuple[str, str]]:
        """The (source, target) languages of the MT rows of this pair."""
        return [self.direction] if self.direction else [(self.lang, "en"), ("en", self.lang)]


def set_split(name: str) -> str | None:
    """``"train"``, ``"dev"`` or ``"test"`` for a set of OPUS-MT-testsets (``newstest2019``), None when unused.

    FLORES and NTREX (any name containing ``flores`` or ``ntrex``) are always None.
    """
    lowered = name.lower()
    if any(benchmark in lowered for benchmark in OTHER_BENCHMARKS):
        return None
    newstest = _NEWSTEST.fullmatch(name)
    if newstest:
        year = int(newstest.group(1))
        return "train" if year <= LAST_TRAIN_YEAR else {DEV_YEAR: "dev", TEST_YEAR: "test"}.get(year)
    return "train" if name in TRAIN_SETS or _TATOEBA.fullmatch(name) else None


def source_set(example_id: str) -> str:
    """The set an example of this corpus comes from: ``pt-mt-de-en-newstest2020.deu-eng.17`` -> ``newstest2020``."""
    parts = example_id.split("-")
    if parts[0] != "pt" or parts[1] not in ("mt", "text"):
        raise ValueError(f"{example_id!r} is not an id of the parallel text corpus (pt-mt-... or pt-text-...)")
    key = "-".join(parts[4:] if parts[1] == "mt" else parts[3:])
    return key.split(".")[0]


def check_languages(languages: Iterable[str]) -> tuple[str, ...]:
    """The non-English languages asked for, or a ValueError naming the unknown codes and the known ones."""
    languages = tuple(dict.fromkeys(languages))
    unknown = [lang for lang in languages if lang not in ISO3]
    if unknown:
        raise ValueError(f"unknown language code(s) {unknown}; choose ISO 639-1 codes from {LANGUAGES}")
    return tuple(lang for lang in languages if lang != "en")


def _read_lines(path: str) -> list[str]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [line.rstrip("\n").strip() for line in handle]


def _aligned(path: str, english_path: str) -> list[tuple[str, str]]:
    """Line-aligned (text, English) of two files, or a ValueError when their line counts differ."""
    lines, english = _read_lines(path), _read_lines(english_path)
    if len(lines) != len(english):
        raise ValueError(
            f"{path} has {len(lines)} lines but {english_path} has {len(english)}: the files must be line-aligned"
        )
    return list(zip(lines, english, strict=True))


def testsets_root(path: str) -> str:
    """The folder holding the ``<src>-<tgt>`` folders: ``path`` itself or its ``testsets`` subfolder."""
    if os.path.isdir(os.path.join(path, "testsets")):
        return os.path.join(path, "testsets")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no folder {path}; pass the testsets folder of OPUS-MT-testsets as --testsets-dir")
    return path


def read_testsets(path: str, languages: tuple[str, ...], stats: Counter) -> list[SentencePair]:
    """The pairs of every used set (:func:`set_split`) of ``<path>/<xxx>-eng`` and ``<path>/eng-<xxx>``.

    FLORES/NTREX files are counted in ``stats`` (``skipped_benchmark/<file>``) without being opened; other unused
    sets are counted as ``unused/<set>``. Raises FileNotFoundError naming the folders when a language has neither.
    """
    root = testsets_root(path)
    folders = {lang: [f for f in (f"{ISO3[lang]}-eng", f"eng-{ISO3[lang]}") if os.path.isdir(os.path.join(root, f))]
               for lang in languages}  # fmt: skip
    missing = [f"{ISO3[lang]}-eng or eng-{ISO3[lang]}" for lang, found in folders.items() if not found]
    if missing:
        raise FileNotFoundError(
            f"{root} has no folder {', '.join(missing)}; pass the testsets folder of OPUS-MT-testsets "
            "(<src>-<tgt>/<set>.<iso3>, e.g. deu-eng/newstest2019.deu) or leave those languages out of --langs"
        )
    pairs = []
    for lang, found in folders.items():
        for folder in found:
            pairs += _read_folder(os.path.join(root, folder), lang, stats)
    return pairs


def _read_folder(folder: str, lang: str, stats: Counter) -> Iterator[SentencePair]:
    """The pairs of the used sets of one ``<src>-<tgt>`` folder (files ``<set>.<iso3>`` and ``<set>.eng``)."""
    name = os.path.basename(folder)
    src, _, tgt = name.partition("-")
    codes = {iso: code for code, iso in ISO3.items()}
    for file in sorted(os.listdir(folder)):
        stem, _, ext = file.rpartition(".")
        if ext != ISO3[lang]:
            continue
        if any(benchmark in file.lower() for benchmark in OTHER_BENCHMARKS):
            stats[f"skipped_benchmark/{name}/{file}"] += 1
            continue
        split = set_split(stem)
        if split is None:
            stats[f"unused/{stem}"] += 1
            continue
        direction = (codes[src], codes[tgt]) if split != "train" else None
        aligned = _aligned(os.path.join(folder, file), os.path.join(folder, f"{stem}.eng"))
        for line, (text, english) in enumerate(aligned, 1):
            yield SentencePair(lang, text, english, stem, f"{stem}.{name}.{line}", direction)


def multi30k_root(path: str) -> str:
    """The folder holding ``train.<lang>.gz``: ``path`` itself or its ``data/task1/raw``."""
    for root in (path, os.path.join(path, "data", "task1", "raw")):
        if os.path.isfile(os.path.join(root, "train.en.gz")):
            return root
    raise FileNotFoundError(
        f"no Multi30k train.en.gz in {path} or {path}/data/task1/raw; pass the multi30k/dataset repository "
        "(or its data/task1/raw folder) as --multi30k-dir"
    )


def read_multi30k(path: str, languages: tuple[str, ...]) -> list[SentencePair]:
    """The Multi30k task 1 training captions of ``languages`` (de, fr, cs; others have none) with their English."""
    root = multi30k_root(path)
    english = os.path.join(root, "train.en.gz")
    pairs = []
    for lang in (lang for lang in languages if lang in MULTI30K_LANGUAGES):
        file = os.path.join(root, f"train.{lang}.gz")
        if not os.path.isfile(file):
            raise FileNotFoundError(f"no {file}; Multi30k has train.{{en,de,fr,cs}}.gz in data/task1/raw")
        for line, (text, eng) in enumerate(_aligned(file, english), 1):
            pairs.append(SentencePair(lang, text, eng, MULTI30K_SET, f"{MULTI30K_SET}.task1.{line}"))
    return pairs


def _pair_texts(pair: SentencePair) -> tuple[str, str]:
    return normalize_text(pair.text), normalize_text(pair.english)


def split_pairs(pairs: list[SentencePair], held_out: set[str], stats: Counter) -> dict[str, list[SentencePair]]:
    """The kept pairs of each split: cleaned, each pair once per split (and direction), held-out text left out.

    ``held_out``: normalised sentences a training pair must not contain, besides this corpus's dev and test
    sentences. Counts of what was dropped and why are added to ``stats`` (``train/held_out/<set>``, ...).
    """
    by_split: dict[str, list[SentencePair]] = defaultdict(list)
    for pair in pairs:
        texts = _pair_texts(pair)
        if not all(texts) or texts[0] == texts[1]:
            stats[f"empty_or_untranslated/{pair.source_set}"] += 1
            continue
        by_split["train" if pair.source_set == MULTI30K_SET else set_split(pair.source_set)].append(pair)
    test_texts = {text for pair in by_split["test"] for text in _pair_texts(pair)}
    dev_test_texts = test_texts | {text for pair in by_split["dev"] for text in _pair_texts(pair)}
    excluded = {"train": held_out | dev_test_texts, "dev": test_texts, "test": set()}
    kept = {}
    for split in SPLITS:
        seen, kept[split] = set(), []
        for pair in by_split[split]:
            texts = _pair_texts(pair)
            if (pair.lang, pair.direction, texts) in seen:
                stats[f"{split}/duplicate/{pair.source_set}"] += 1
                continue
            seen.add((pair.lang, pair.direction, texts))
            if texts[0] in excluded[split] or texts[1] in excluded[split]:
                stats[f"{split}/held_out/{pair.source_set}"] += 1
            else:
                kept[split].append(pair)
    return kept


def pair_examples(pairs: list[SentencePair]) -> list[dict[str, Any]]:
    """``mt`` rows of each pair (:meth:`SentencePair.directions`) and a ``text`` row for each distinct sentence of
    each language (ids ``pt-mt-<src>-<tgt>-<key>``, ``pt-text-<lang>-<key>``)."""
    examples, seen = [], set()
    for pair in pairs:
        texts = {pair.lang: pair.text, "en": pair.english}
        for lang, text in texts.items():
            if (lang, normalize_text(text)) not in seen:
                seen.add((lang, normalize_text(text)))
                examples.append(make_example(f"pt-text-{lang}-{pair.key}", "text", lang, source_text=text))
        for src, tgt in pair.directions():
            examples.append(
                make_example(f"pt-mt-{src}-{tgt}-{pair.key}", "mt", src, source_text=texts[src],
                             target_text=texts[tgt], target_lang=tgt)
            )  # fmt: skip
    return examples


def set_counts(splits: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, dict[str, int]]]:
    """``{split: {set: {"de-en": mt rows}}}``: what each source set gives, so each test set can be reported."""
    counts: dict[str, dict[str, Counter]] = {split: defaultdict(Counter) for split in splits}
    for split, rows in splits.items():
        for row in rows:
            if row["task"] == "mt":
                counts[split][source_set(row["id"])][f"{row['source_lang']}-{row['target_lang']}"] += 1
    return {
        split: {name: dict(sorted(c.items())) for name, c in sorted(sets.items())} for split, sets in counts.items()
    }


def missing_directions(splits: dict[str, list[dict[str, Any]]], languages: tuple[str, ...]) -> dict[str, list[str]]:
    """``{"dev": ["cs-en", ...], "test": [...]}``: the xx->en and en->xx directions with no row in a split."""
    wanted = [f"{a}-{b}" for lang in languages for a, b in ((lang, "en"), ("en", lang))]
    return {
        split: [d for d in wanted if d not in {f"{r['source_lang']}-{r['target_lang']}" for r in splits[split]
                                               if r["task"] == "mt"}]
        for split in ("dev", "test")
    }  # fmt: skip


def build_parallel_text(
    out: str,
    testsets_dir: str | None = None,
    multi30k_dir: str | None = None,
    languages: tuple[str, ...] = LANGUAGES,
    held_out: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Builds the WMT newstest / Multi30k / Tatoeba corpus into ``out`` and returns its summary (``summary.json``).

    Args:
        out: output directory (``train.jsonl``, ``dev.jsonl``, ``test.jsonl``, ``summary.json``).
        testsets_dir: the OPUS-MT-testsets ``testsets`` folder (newstest and Tatoeba); None: not used.
        multi30k_dir: the multi30k/dataset repository or its ``data/task1/raw`` folder; None: not used.
        languages: ISO 639-1 codes of :data:`~mu2slam_hf.data.libreoffice.LANGUAGES` (English is the pivot).
        held_out: corpus folders (their ``dev.jsonl``/``test.jsonl``) or manifests whose sentences no training
            pair may contain.
    Every input is checked before anything is written.
    """
    languages = check_languages(languages)
    if testsets_dir is None and multi30k_dir is None:
        raise ValueError("give --testsets-dir (OPUS-MT-testsets) and/or --multi30k-dir (multi30k/dataset)")
    start, stats = time.time(), Counter()
    pairs = read_testsets(testsets_dir, languages, stats) if testsets_dir else []
    pairs += read_multi30k(multi30k_dir, languages) if multi30k_dir else []
    extra = held_out_texts(held_out)
    kept = split_pairs(pairs, extra, stats)
    splits = {split: pair_examples(kept[split]) for split in SPLITS}
    os.makedirs(out, exist_ok=True)
    for split, examples in splits.items():
        write_manifest(os.path.join(out, f"{split}.jsonl"), examples)
    summary = summarize(splits)
    summary.update(
        source={"testsets_dir": testsets_dir, "multi30k_dir": multi30k_dir}, licenses=LICENSES,
        languages=["en", *languages], held_out=list(held_out), held_out_sentences=len(extra),
        sets=set_counts(splits), missing=missing_directions(splits, languages),
        dropped=_dropped(stats), cleaning=dict(sorted(stats.items())), build_seconds=round(time.time() - start, 1),
    )  # fmt: skip
    write_summary(out, summary)
    return summary


def _dropped(stats: Counter) -> dict[str, int]:
    """Pairs dropped per reason (``train/held_out``, ``train/duplicate``, ...), all sets together."""
    totals: Counter = Counter()
    for key, count in stats.items():
        if not key.startswith(("unused/", "skipped_benchmark/")):
            totals[key.rpartition("/")[0]] += count
    return dict(sorted(totals.items()))
