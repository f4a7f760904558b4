"""Synthetic multilingual speech corpus: n-way parallel text spoken by espeak-ng (and Festival) with varied voices.

Text groups (one sentence and its translations) come from the Fish Fillets NG dialogues (real 10-way
parallel text, :mod:`mu2slam_hf.data.fillets`) and from number words (``num2words``). Every line of a
real-speech test level (:func:`~mu2slam_hf.data.fillets.level_split`) is excluded, as is any group sharing
a normalised text with one; groups from real-speech dev levels go to the synthetic dev split. Groups that
share any normalised text are joined, and a joined component goes to one split only, so no sentence crosses
splits. Groups with a URL are left out (:func:`speakable`). The real-speech corpus splits the same lines by
level, so most synthetic dev and test sentences (in cs and nl) are spoken in its train split:
:func:`~mu2slam_hf.data.manifest.combine_corpora` leaves those clips out when both corpora train together.

Each (group, language) is synthesised once (voice variant +m1..m7/+f1..f5, speed 120-200, pitch 20-80,
amplitude and word gap, all seeded per line), resampled to 16 kHz mono FLAC. With ``festival_fraction`` > 0 that
share of the lines in a language with a Festival voice (:data:`FESTIVAL_VOICES`: en, it, cs, ru) is spoken by one
of its Festival voices instead (seeded per line, with a seeded duration stretch and volume): diphone, HTS and unit
selection voices that sound unlike espeak-ng's formant synthesis. From a group in languages L:
speech-only and ASR (same audio) and text-only per language, AST xx-en and en-xx, MT xx-en and en-xx.
Output: the manifest format of :mod:`mu2slam_hf.data.manifest` (``<split>.jsonl``, ``audio/<lang>/*.flac``,
``summary.json``).

CLI: ``mu2slam-build-synthetic --langs en,de,fr,es,it,nl,ru,cs --out data/synth [--small] [--festival-fraction 0.3]``.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import tempfile
import time
import unicodedata
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soundfile as sf

from .audio import to_mono_16k, write_flac
from .fillets import PARALLEL_LANGUAGES, fetch_fillets, level_split, read_dialogs
from .manifest import (
    connected_components,
    hash_split,
    normalize_text,
    summarize,
    write_manifest,
    write_summary,
)
from .schema import make_example

DEFAULT_LANGUAGES = ("en", "de", "fr", "es", "it", "nl", "ru", "cs")
ESPEAK_VOICES = {"en": "en-us", "fr": "fr-fr"}  # others: the ISO code is the espeak-ng voice name
VARIANTS = tuple(f"m{i}" for i in range(1, 8)) + tuple(f"f{i}" for i in range(1, 6))
# Festival's voices by language, each with its Debian package; other languages are spoken by espeak-ng alone. The
# Russian voice (unit selection) ignores the duration stretch; its package is 179 MB, the others 1-10 MB each.
FESTIVAL_VOICES: dict[str, dict[str, str]] = {
    "en": {
        "kal_diphone": "festvox-kallpc16k",
        "ked_diphone": "festvox-kdlpc16k",
        "cmu_us_slt_arctic_hts": "festvox-us-slt-hts",
    },
    "it": {"pc_diphone": "festvox-itapc16k", "lp_diphone": "festvox-italp16k"},
    "cs": {
        "czech_dita": "festvox-czech-dita",
        "czech_krb": "festvox-czech-krb",
        "czech_machac": "festvox-czech-machac",
        "czech_ph": "festvox-czech-ph",
    },
    "ru": {"msu_ru_nsh_clunits": "festvox-ru"},
}
# The text encoding each language's voices read. Given UTF-8, the Czech voices spell every byte of a letter with a
# diacritic out (a sentence lasts five times as long) and the Italian ones drop the line.
FESTIVAL_ENCODINGS = {"en": "ascii", "it": "iso-8859-1", "cs": "iso-8859-2", "ru": "utf-8"}
_TYPOGRAPHIC = str.maketrans(
    {"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u00ab": '"', "\u00bb": '"',
     "\u2014": "-", "\u2013": "-", "\u2026": "...", "\u00a0": " "}
)  # fmt: skip
SPLIT_FRACTIONS = {"train": 0.88, "dev": 0.02, "test": 0.10}
SMALL = {"max_groups": 48, "num_numbers": 16}
FULL = {"max_groups": None, "num_numbers": 600}


@dataclass
class TextGroup:
    """One sentence and its translations: ``texts[lang]``; ``level`` for Fish Fillets lines."""

    key: str
    texts: dict[str, str]
    level: str | None = None
    split: str = field(default="train")


# Text a voice cannot say as written: espeak-ng spells a URL out ("aitch tee tee pee colon slash slash ..."), so its
# audio never matches the written transcript, and a group with one would put an unlearnable clip into every
# language's ASR and AST rows (Common Voice's sentence rules exclude URLs for the same reason).
_UNSPEAKABLE = re.compile(r"\w+://|\bwww\.", re.IGNORECASE)


def speakable(texts: dict[str, str]) -> bool:
    """Whether a voice can say every text of a group (``texts[lang]``) as written: none has a URL."""
    return not any(_UNSPEAKABLE.search(text) for text in texts.values())


def fillets_groups(game_dir: str, languages: tuple[str, ...]) -> list[TextGroup]:
    """Fish Fillets lines translated into every language, minus any sharing a text with a test level."""
    dialogs = read_dialogs(game_dir, tuple(dict.fromkeys(("en", *PARALLEL_LANGUAGES, *languages))))
    test_texts = {
        normalize_text(text)
        for (level, _), entry in dialogs.items()
        if level_split(level) == "test"
        for lang, text in entry.items()
        if lang != "font"
    }
    groups = []
    for (level, dialog_id), entry in sorted(dialogs.items()):
        if level_split(level) == "test" or not all(entry.get(lang) for lang in languages):
            continue
        texts = {lang: entry[lang] for lang in languages}
        if not any(normalize_text(text) in test_texts for text in texts.values()):
            groups.append(TextGroup(f"ff-{level}-{dialog_id}", texts, level))
    return groups


def number_groups(count: int, languages: tuple[str, ...], seed: int) -> list[TextGroup]:
    """``count`` distinct numbers (log-uniform up to a million) as words in every language (num2words)."""
    from num2words import num2words

    rng = np.random.default_rng([seed, 7])
    numbers: list[int] = []
    while len(numbers) < count:
        value = int(10 ** rng.uniform(0, 6))
        if value not in numbers:
            numbers.append(value)
    return [TextGroup(f"num-{n}", {lang: num2words(n, lang=lang) for lang in languages}) for n in numbers]


def assign_splits(groups: list[TextGroup], seed: int = 0) -> None:
    """Sets ``group.split``: groups sharing a normalised text form one component with a single split.

    A component with a line from a real-speech dev level is dev; the others are hashed into train/dev/test
    by :data:`SPLIT_FRACTIONS`.
    """
    keys = [[normalize_text(text) for text in group.texts.values()] for group in groups]
    for component in connected_components(keys):
        members = [groups[i] for i in component]
        if any(g.level is not None and level_split(g.level) == "dev" for g in members):
            split = "dev"
        else:
            split = hash_split(f"{seed}:{min(g.key for g in members)}", SPLIT_FRACTIONS)
        for group in members:
            group.split = split


def subsample(
    groups: list[TextGroup], max_groups: int | None, seed: int, all_train_groups: bool = False
) -> list[TextGroup]:
    """At most ``max_groups`` groups, keeping the split proportions and at least 4 groups per split.

    ``all_train_groups``: the cap picks the dev and test groups only, the very groups the capped build picks (the
    same draws), and every train group is kept: more training sentences, the same dev and test sets.
    """
    if max_groups is None or len(groups) <= max_groups:
        return groups
    rng = np.random.default_rng([seed, 11])
    chosen = []
    for split, fraction in SPLIT_FRACTIONS.items():
        members = [g for g in groups if g.split == split]
        take = min(len(members), max(4, round(max_groups * fraction)))
        picked = [members[i] for i in sorted(rng.choice(len(members), take, replace=False))]
        chosen += members if all_train_groups and split == "train" else picked
    return chosen


def _line_rng(seed: int, key: str, lang: str, stream: str = "") -> np.random.Generator:
    """The random generator of one line (and one ``stream`` of draws), the same in every build."""
    digest = int(hashlib.sha256(f"{seed}:{key}:{lang}{stream}".encode()).hexdigest(), 16)
    return np.random.default_rng(digest % 2**63)


def festival_settings(seed: int, key: str, lang: str, festival_fraction: float) -> dict[str, Any] | None:
    """The seeded Festival voice of one line (voice, duration stretch, volume scale), or None: ``lang`` has no
    Festival voice, or the line's draw (uniform, its own stream) is not below ``festival_fraction``. A line Festival
    speaks at one fraction it speaks at every higher one."""
    voices = FESTIVAL_VOICES.get(lang)
    rng = _line_rng(seed, key, lang, ":festival")
    if not voices or rng.random() >= festival_fraction:
        return None
    names = tuple(voices)
    return {
        "engine": "festival",
        "voice": names[rng.integers(len(names))],
        "lang": lang,
        "stretch": round(float(rng.uniform(0.85, 1.2)), 3),
        "scale": round(float(rng.uniform(0.6, 1.0)), 3),
    }


def voice_settings(seed: int, key: str, lang: str, festival_fraction: float = 0.0) -> dict[str, Any]:
    """The seeded voice of one line: Festival's (:func:`festival_settings`) with probability ``festival_fraction``
    where ``lang`` has one, else espeak-ng's voice+variant, speed, pitch, amplitude and word gap (the same draws at
    every fraction)."""
    festival = festival_settings(seed, key, lang, festival_fraction)
    if festival is not None:
        return festival
    rng = _line_rng(seed, key, lang)
    variant = VARIANTS[rng.integers(len(VARIANTS))]
    return {
        "engine": "espeak-ng",
        "voice": f"{ESPEAK_VOICES.get(lang, lang)}+{variant}",
        "speed": int(rng.integers(120, 201)),
        "pitch": int(rng.integers(20, 81)),
        "amplitude": int(rng.integers(70, 131)),
        "gap": int(rng.integers(0, 4)),
    }


def speaker_name(settings: dict[str, Any]) -> str:
    """The speaker field of a clip: the engine and voice, e.g. ``espeak-de+m3`` or ``festival-kal_diphone``."""
    engine = "festival" if settings.get("engine") == "festival" else "espeak"
    return f"{engine}-{settings['voice']}"


def synthesize(text: str, settings: dict[str, Any]) -> np.ndarray:
    """Speech of ``text`` by the engine of ``settings`` (:func:`voice_settings`), 16 kHz mono float32."""
    if settings.get("engine") == "festival":
        return synthesize_festival(text, settings)
    return synthesize_espeak(text, settings)


def synthesize_espeak(text: str, settings: dict[str, Any]) -> np.ndarray:
    """espeak-ng speech of ``text`` (text on stdin, so no text is read as an option), 16 kHz mono float32."""
    command = [
        "espeak-ng", "-v", settings["voice"], "-s", str(settings["speed"]), "-p", str(settings["pitch"]),
        "-a", str(settings["amplitude"]), "-g", str(settings["gap"]), "--stdout", "--stdin",
    ]  # fmt: skip
    result = subprocess.run(command, input=text.encode(), capture_output=True, check=True)
    array, rate = sf.read(io.BytesIO(result.stdout), dtype="float32")
    return to_mono_16k(array, rate)


def festival_text(text: str, lang: str) -> bytes:
    """``text`` in the encoding ``lang``'s Festival voices read (:data:`FESTIVAL_ENCODINGS`): typographic quotes and
    dashes as ASCII, a letter the encoding lacks without its accent (English "café" -> "cafe").

    Raises:
        UnicodeEncodeError: a character the encoding cannot spell even so.
    """
    encoding = FESTIVAL_ENCODINGS[lang]

    def fold(char: str) -> str:
        try:
            char.encode(encoding)
            return char
        except UnicodeEncodeError:
            return "".join(c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c))

    text = unicodedata.normalize("NFC", text.translate(_TYPOGRAPHIC))
    return "".join(fold(char) for char in text).encode(encoding)


def _festival_stretch(voice: str, stretch: float) -> str:
    """The Scheme that slows (``stretch`` > 1) or speeds a voice: HTS voices take hts_engine's speech rate, the
    others Festival's Duration_Stretch."""
    if voice.endswith("_hts"):
        return f'(set! hts_engine_params (append hts_engine_params \'(("-r" {1 / stretch:.3f}))))'
    return f"(Parameter.set 'Duration_Stretch {stretch})"


def synthesize_festival(text: str, settings: dict[str, Any]) -> np.ndarray:
    """Festival speech of ``text`` (``text2wave``, text on stdin in the voice's encoding), 16 kHz mono float32.

    Raises:
        RuntimeError: text2wave wrote no audio (its stderr says why: it exits 0 on a line it cannot say).
    """
    voice = settings["voice"]
    command = [
        "text2wave", "-eval", f"(voice_{voice})", "-eval", _festival_stretch(voice, settings["stretch"]),
        "-scale", str(settings["scale"]),
    ]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        # A file, not stdout: text2wave writes the header's length last by seeking back, which a pipe cannot.
        path = os.path.join(tmp, "speech.wav")
        result = subprocess.run(
            [*command, "-o", path], input=festival_text(text, settings["lang"]), capture_output=True, check=True
        )
        if not os.path.exists(path) or os.path.getsize(path) <= 44:  # 44: a RIFF header alone
            raise RuntimeError(f"text2wave wrote no audio: {result.stderr.decode(errors='replace').strip()[-300:]}")
        array, rate = sf.read(path, dtype="float32")
    return to_mono_16k(array, rate)


def _synthesize_job(job: tuple[str, dict[str, Any], str]) -> float | str:
    text, settings, path = job
    try:
        array = synthesize(text, settings)
        if array.size == 0:
            return f"{settings.get('engine', 'espeak-ng')} produced no audio"
        return write_flac(path, array)
    except Exception as error:  # reported per line in the summary; one bad line must not stop the build
        return f"{type(error).__name__}: {error}"


def check_espeak() -> None:
    """Raises RuntimeError, saying how to install it, when espeak-ng is not on PATH."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed: `apt-get install -y --no-install-recommends espeak-ng`")


def festival_voices() -> set[str]:
    """The Festival voices installed (``voice.list``); empty when Festival is not."""
    if shutil.which("text2wave") is None or shutil.which("festival") is None:
        return set()
    result = subprocess.run(
        ["festival", "--pipe"], input=b"(print (voice.list))", capture_output=True, check=True, timeout=120
    )
    return set(re.findall(r"[\w-]+", result.stdout.decode(errors="replace")))


def check_festival(languages: tuple[str, ...] | list[str]) -> None:
    """Raises RuntimeError, with the apt-get command, when Festival or a voice of one of ``languages`` (those in
    :data:`FESTIVAL_VOICES`) is not installed."""
    wanted = {voice: package for lang in languages for voice, package in FESTIVAL_VOICES.get(lang, {}).items()}
    if not wanted:
        return
    installed = festival_voices()
    missing = [package for voice, package in wanted.items() if voice not in installed]
    if missing:
        voiced = ", ".join(lang for lang in languages if lang in FESTIVAL_VOICES)
        packages = " ".join(dict.fromkeys(["festival", *missing]))
        raise RuntimeError(
            f"festival_fraction > 0 needs Festival's voices for {voiced}: "
            f"`apt-get install -y --no-install-recommends {packages}` (or leave those languages out)"
        )


def synthesize_lines(
    lines: list[tuple[str, str, str]], out: str, seed: int = 0, num_workers: int = 2, festival_fraction: float = 0.0
) -> tuple[dict[str, dict[str, tuple[str, float, str]]], dict[str, str]]:
    """Speaks each ``(key, lang, text)`` with its seeded voice (:func:`voice_settings`, a Festival one for about
    ``festival_fraction`` of the lines in a language that has one) into ``<out>/audio/<lang>/<key>.flac``.

    Returns:
        ``audio[key][lang] = (path relative to out, seconds, speaker)`` as :func:`group_examples` takes it,
        and the failed lines ``{"<key>/<lang>": reason}``.

    Raises:
        RuntimeError: ``festival_fraction`` > 0 and Festival or a voice of the lines' languages is missing
            (:func:`check_festival`), before any line is spoken.
    """
    if festival_fraction > 0:
        check_festival(sorted({lang for _, lang, _ in lines}))
    jobs, owners = [], []
    for key, lang, text in lines:
        settings = voice_settings(seed, key, lang, festival_fraction)
        rel = os.path.join("audio", lang, f"{key}.flac")
        jobs.append((text, settings, os.path.join(out, rel)))
        owners.append((key, lang, rel, speaker_name(settings)))
    with ProcessPoolExecutor(max(1, num_workers)) as pool:
        results = list(pool.map(_synthesize_job, jobs, chunksize=8))
    audio: dict[str, dict[str, tuple[str, float, str]]] = defaultdict(dict)
    failures = {}
    for (key, lang, rel, speaker), result in zip(owners, results, strict=True):
        if isinstance(result, str):
            failures[f"{key}/{lang}"] = result
        else:
            audio[key][lang] = (rel, result, speaker)
    return audio, failures


def group_examples(group: TextGroup, audio: dict[str, tuple[str, float, str]]) -> list[dict[str, Any]]:
    """The five data types from one group; ``audio[lang] = (relative path, seconds, speaker)``."""
    examples, key, texts = [], group.key, group.texts
    for lang, text in texts.items():
        examples.append(make_example(f"synth-text-{lang}-{key}", "text", lang, source_text=text))
        if lang in audio:
            path, seconds, speaker = audio[lang]
            speech = dict(audio=path, duration=seconds, speaker=speaker)
            examples.append(make_example(f"synth-speech-{lang}-{key}", "speech", lang, **speech))
            examples.append(
                make_example(f"synth-asr-{lang}-{key}", "asr", lang, source_text=text, target_text=text, **speech)
            )
        if lang == "en" or "en" not in texts:
            continue
        for src, tgt in ((lang, "en"), ("en", lang)):
            pair = dict(source_text=texts[src], target_text=texts[tgt], target_lang=tgt)
            examples.append(make_example(f"synth-mt-{src}-{tgt}-{key}", "mt", src, **pair))
            if src in audio:
                path, seconds, speaker = audio[src]
                examples.append(
                    make_example(
                        f"synth-ast-{src}-{tgt}-{key}",
                        "ast",
                        src,
                        audio=path,
                        duration=seconds,
                        speaker=speaker,
                        **pair,
                    )
                )
    return examples


def _clips_per_engine(audio: dict[str, dict[str, tuple[str, float, str]]]) -> dict[str, dict[str, int]]:
    """``{engine: {lang: clips}}`` of :func:`synthesize_lines`' audio (the engine is the speaker's first word)."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for by_lang in audio.values():
        for lang, (_, _, speaker) in by_lang.items():
            counts[speaker.split("-")[0]][lang] += 1
    return {engine: dict(sorted(langs.items())) for engine, langs in sorted(counts.items())}


def build_synthetic(
    out: str,
    languages: tuple[str, ...] = DEFAULT_LANGUAGES,
    max_groups: int | None = None,
    num_numbers: int = FULL["num_numbers"],
    seed: int = 0,
    num_workers: int = 2,
    game_dir: str | None = None,
    cache_dir: str | None = None,
    use_fillets: bool = True,
    all_train_groups: bool = False,
    festival_fraction: float = 0.0,
) -> dict[str, Any]:
    """Builds the synthetic corpus into ``out`` and returns its summary (also in ``summary.json``).

    Args:
        max_groups: cap on Fish Fillets text groups (None: all, about 1,300 for the 8 default languages).
        all_train_groups: ``max_groups`` caps the dev and test groups only (the same ones as without this option);
            every train group is spoken.
        num_numbers: number-word groups added (num2words).
        use_fillets: False builds from number words only (no apt-get needed).
        festival_fraction: the share of the lines in en, it, cs and ru spoken by a Festival voice
            (:data:`FESTIVAL_VOICES`, chosen per line with the seed) instead of espeak-ng; 0 (the default) speaks every
            line with espeak-ng, as builds before Festival did, 1 every line of those languages with Festival.

    Raises:
        ValueError: ``festival_fraction`` is not in [0, 1].
        RuntimeError: espeak-ng, or with ``festival_fraction`` > 0 Festival or a voice of ``languages``, is missing
            (before anything is fetched or spoken).
    """
    if not 0 <= festival_fraction <= 1:
        raise ValueError(f"festival_fraction must be in [0, 1], not {festival_fraction}")
    check_espeak()
    if festival_fraction > 0:
        check_festival(languages)
    start = time.time()
    fillets = fillets_groups(game_dir or fetch_fillets(cache_dir), languages) if use_fillets else []
    numbers = number_groups(num_numbers, languages, seed)
    assign_splits(fillets + numbers, seed)  # over every candidate, so subsampling cannot move a group
    groups = subsample(fillets, max_groups, seed, all_train_groups) + numbers
    unspeakable = [group.key for group in groups if not speakable(group.texts)]  # after the splits: none moves
    groups = [group for group in groups if speakable(group.texts)]
    lines = [(group.key, lang, text) for group in groups for lang, text in group.texts.items()]
    audio, failures = synthesize_lines(lines, out, seed, num_workers, festival_fraction)
    synth_seconds = time.time() - start
    splits = {split: [] for split in SPLIT_FRACTIONS}
    for group in groups:
        splits[group.split] += group_examples(group, audio[group.key])
    for split, examples in splits.items():
        write_manifest(os.path.join(out, f"{split}.jsonl"), examples)
    summary = summarize(splits)
    summary.update(
        build_seconds=round(time.time() - start, 1), synthesis_seconds=round(synth_seconds, 1),
        languages=list(languages), groups={s: sum(g.split == s for g in groups) for s in SPLIT_FRACTIONS},
        failures=failures, seed=seed, unspeakable_groups=unspeakable, festival_fraction=festival_fraction,
        clips_per_engine=_clips_per_engine(audio),
    )  # fmt: skip
    write_summary(out, summary)
    return summary
