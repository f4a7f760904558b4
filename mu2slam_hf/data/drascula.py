"""Drascula: The Vampire Strikes Back (Debian ``drascula``, ``drascula-spanish``; freeware, BSD-like): real
voice-acted dialogue in English and Spanish.

Under ``usr/share/scummvm/drascula/<lang>`` each package holds the game's voices as ``<prefix><n>.ALS`` files
(unsigned 8-bit mono PCM at 11,025 Hz, no header) and ``drascula.dat``, ScummVM's table of the game's lines in
six languages (:func:`read_line_tables`). Debian's ``drascula-italian`` is not used: its voices are the English
recordings (the same waveforms, a few header bytes apart) under Italian text. The game plays line ``n`` of a
character's table from the file of that character's prefix and number: the hero's lines (``text``) from ``<n>.ALS``, Drascula's (``textd``) from
``D<n>.ALS``, Igor's (``texti``) from ``I<n>.ALS``, and so on (:data:`VOICE_TABLES`); one file is the exception
(:data:`VOICE_EXCEPTIONS`). The other ``.ALS`` files (``S<n>``: sound effects, ``F<n>``) are not speech.
Measured on the packages: a line's length and its clip's duration correlate at 0.8-0.99 within every table and
language, so the files are the lines they are matched to.

:func:`build_drascula` (CLI ``mu2slam-build-drascula``) writes ASR rows, and AST rows from each clip to its line in
the five other languages of drascula.dat (English first: real es->en and en->xx speech translation), through
:func:`~mu2slam_hf.data.real_speech.build_clip_corpus`: split by line, the same line (its meaning) in the same
split in every language, so no test line is trained on in any language. One actor voices a character in a
language, so speakers cannot be held out: the test split holds out lines, not voices. The game writes most lines
in capitals; they are written in sentence case (:func:`sentence_case`), as the other corpora's text is.
"""

from __future__ import annotations

import os
import re
import struct
import tempfile
import time
from collections import Counter

import numpy as np
import soundfile as sf

from .fillets import default_cache_dir, fetch_debian_packages
from .real_speech import Clip, build_clip_corpus, check_languages

PACKAGES = ("drascula", "drascula-spanish")
GAME_DIR = os.path.join("usr", "share", "scummvm", "drascula")
CORPUS = "drascula"
LICENSE = "Drascula licence (freeware, BSD-like; Debian contrib)"
SPEECH_LANGUAGES = ("en", "es")  # drascula-italian speaks English: its voices are the English package's
# The order of the languages in drascula.dat (ScummVM's), and how their text is encoded.
DAT_LANGUAGES = ("en", "es", "de", "fr", "it", "ru")
DAT_ENCODINGS = {"ru": "cp1251"}  # the others: the DOS code page of the game, cp850
# drascula.dat's text tables, in file order: the hero, Drascula, the drunk, B.J., the musician, Igor, the wolf, the
# pianist, the bartender, von Braun, then menus and system texts (no voice).
DAT_TABLES = (
    "text", "textd", "textb", "textbj", "texte", "texti", "textl", "textp", "textt", "textvb",
    "textsys", "texthis", "textverbs", "textmisc", "textd1",
)  # fmt: skip
# Voice file prefix -> (table, speaker): ScummVM's talk functions play line n of the table from <prefix><n>.ALS.
VOICE_TABLES = {
    "": ("text", "hero"), "D": ("textd", "drascula"), "B": ("textb", "drunk"), "BJ": ("textbj", "bj"),
    "E": ("texte", "musician"), "I": ("texti", "igor"), "L": ("textl", "wolf"), "P": ("textp", "pianist"),
    "T": ("textt", "bartender"), "VB": ("textvb", "von-braun"),
}  # fmt: skip
# D83.ALS is the trunk's line, played with the hero's line 83 (talk_baul), not Drascula's.
VOICE_EXCEPTIONS = {("D", 83): ("text", "trunk")}
DAT_HEADER = b"DRASCULA"
# Byte sizes of the records of the game tables before the texts (char map, item locations, polygons, verb bar,
# menu positions, frames, candles, pianist, drunk, room pre-updates, room updates, room actions, talk sequences).
_RECORD_SIZES = (4, 4, 4, 2, 4, 2, 4, 2, 2, 20, 20, 10, 8)
_TEXT_ALIGNMENT = 4  # the size of a line's header in a table block
_VOICE = re.compile(r"^(BJ|VB|D|B|E|I|L|P|T|)(\d+)\.ALS$", re.IGNORECASE)
VOICE_RATE = 11025
# Acted dialogue runs faster than careful single words (up to about 19 letters a second in Spanish); a line said in
# well under its length's time is still a file that is not the line.
MAX_LETTERS_PER_SECOND = 22.0
_SENTENCE_START = re.compile(r"(^|[.!?¿¡]\s*|\"\s*)(\w)")
_ENGLISH_I = re.compile(r"\bi\b(?!-)")


def fetch_drascula(cache_dir: str | None = None, packages: tuple[str, ...] = PACKAGES) -> str:
    """Downloads (``apt-get download``) and extracts (``dpkg-deb -x``) the packages once; returns the game folder
    (``.../usr/share/scummvm/drascula``)."""
    root = fetch_debian_packages(cache_dir or default_cache_dir(CORPUS), packages, _install_hint)
    return os.path.join(root, GAME_DIR)


def _install_hint(reason: str) -> str:
    return (
        f"Cannot fetch Drascula: {reason}. This needs a Debian/Ubuntu machine with apt-get and dpkg-deb and access "
        f"to the Debian archive, contrib section (run `apt-get update` first; packages {' '.join(PACKAGES)}). "
        f"Alternatively extract them yourself (`apt-get download {' '.join(PACKAGES)}; dpkg-deb -x <deb> <dir>` for "
        "each) and pass <dir> as --root."
    )


def find_game_dir(path: str) -> str:
    """The game folder in ``path``: ``path`` itself or ``path/usr/share/scummvm/drascula`` (an extraction root).

    Raises:
        ValueError: neither holds ``<lang>/drascula.dat``, with what to pass.
    """
    for candidate in (os.path.join(path, GAME_DIR), path):
        if any(os.path.isfile(os.path.join(candidate, lang, "drascula.dat")) for lang in SPEECH_LANGUAGES):
            return candidate
    raise ValueError(
        f"{path} is not a Drascula game folder: no <lang>/drascula.dat in it or in {os.path.join(path, GAME_DIR)}. "
        f"Pass the folder {' '.join(PACKAGES)} were extracted to (`dpkg-deb -x`), or leave --root out to fetch "
        "them with apt."
    )


def read_line_tables(path: str) -> dict[str, dict[str, list[str]]]:
    """The text tables of a ``drascula.dat``: ``{table: {lang: [line 0, line 1, ...]}}`` for the tables of
    :data:`DAT_TABLES` and the languages of :data:`DAT_LANGUAGES` (line 0 of every table is empty: numbering
    starts at 1).

    Raises:
        ValueError: the file is not a drascula.dat (header), or ends before its tables do.
    """
    with open(path, "rb") as handle:
        data = handle.read()
    if not data.startswith(DAT_HEADER):
        raise ValueError(f"{path} is not a ScummVM drascula.dat: it does not start with {DAT_HEADER!r}.")
    reader = _Reader(data, len(DAT_HEADER) + 1, path)  # the byte after the header is the format version
    for size in _RECORD_SIZES:
        reader.skip(reader.u16() * size)
    num_languages = reader.u16()
    tables: dict[str, dict[str, list[str]]] = {}
    for table in DAT_TABLES:
        num_lines = reader.u16()
        tables[table] = {}
        for index in range(num_languages):
            block = reader.take(reader.u16())
            if index < len(DAT_LANGUAGES):
                lang = DAT_LANGUAGES[index]
                tables[table][lang] = _split_lines(block, num_lines, DAT_ENCODINGS.get(lang, "cp850"), path)
    return tables


class _Reader:
    """Big-endian reads from a byte string, with an error naming the file where it ends too soon."""

    def __init__(self, data: bytes, position: int, path: str):
        self.data, self.position, self.path = data, position, path

    def take(self, count: int) -> bytes:
        if self.position + count > len(self.data):
            raise ValueError(f"{self.path} ends at byte {len(self.data)} inside its tables: a truncated drascula.dat.")
        chunk = self.data[self.position : self.position + count]
        self.position += count
        return chunk

    def skip(self, count: int) -> None:
        self.take(count)

    def u16(self) -> int:
        return struct.unpack(">H", self.take(2))[0]


def _split_lines(block: bytes, num_lines: int, encoding: str, path: str) -> list[str]:
    """A table block's lines. Each line is an entry: a 4-byte header whose last 2 bytes are the entry's size, then
    the NUL-terminated string, padded to 4 bytes; line 0 is an empty entry (read at the block's first byte, 0), and
    line i starts 4 bytes after entry i does (ScummVM's reading, kept as it is)."""
    corrupt = ValueError(f"{path}: a text table ends before its {num_lines} lines (a corrupt drascula.dat).")
    starts, position = [0], _TEXT_ALIGNMENT
    for _ in range(1, num_lines):
        if position > len(block):
            raise corrupt
        position += struct.unpack(">H", block[position - 2 : position])[0]
        starts.append(position)
    ends = [block.find(b"\0", begin) for begin in starts]
    if -1 in ends:
        raise corrupt
    return [" ".join(block[begin:end].decode(encoding).split()) for begin, end in zip(starts, ends, strict=True)]


def sentence_case(text: str, lang: str) -> str:
    """A line written in capitals in sentence case (``"I'VE SEEN IT. REALLY?"`` -> ``"I've seen it. Really?"``,
    English "I" kept); lines with lower-case letters are kept as they are."""
    if text != text.upper():
        return text
    text = _SENTENCE_START.sub(lambda m: m.group(1) + m.group(2).upper(), text.lower())
    return _ENGLISH_I.sub("I", text) if lang == "en" else text


def voice_line(file_name: str) -> tuple[str, int, str] | None:
    """``(table, line number, speaker)`` a voice file plays (``"D12.ALS"`` -> ``("textd", 12, "drascula")``), or
    None for a file that is not a voice (sound effects)."""
    match = _VOICE.match(file_name)
    if match is None:
        return None
    prefix, number = match.group(1).upper(), int(match.group(2))
    table, speaker = VOICE_EXCEPTIONS.get((prefix, number), VOICE_TABLES[prefix])
    return table, number, speaker


def read_voices(game_dir: str, languages: tuple[str, ...], stats: Counter) -> list[tuple[Clip, str]]:
    """``(clip, voice file)`` of every voiced line of ``languages`` with the line's text in the other languages as
    its translations, the clip's path still to be written (a WAV of the raw voice file, :func:`stage_voices`). Files
    that are not voices are counted ``<lang>/not_speech``, voices of an empty or absent line ``<lang>/no_text``."""
    clips = []
    for lang in languages:
        folder = os.path.join(game_dir, lang)
        dat = os.path.join(folder, "drascula.dat")
        if not os.path.isfile(dat):
            stats[f"{lang}/no_package"] += 1
            continue
        tables = read_line_tables(dat)
        for name in sorted(os.listdir(folder)):
            if not name.upper().endswith(".ALS"):
                continue
            line = voice_line(name)
            if line is None:
                stats[f"{lang}/not_speech"] += 1
                continue
            table, number, speaker = line
            lines = tables[table][lang]
            text = sentence_case(lines[number], lang) if number < len(lines) else ""
            if not text:
                stats[f"{lang}/no_text"] += 1
                continue
            clip = Clip(
                "", lang, text, f"drascula-{lang}-{speaker}", f"{table}:{number}", f"{table}.{number}", "dialogue",
                translations=line_translations(tables[table], number, lang),
            )  # fmt: skip
            clips.append((clip, os.path.join(folder, name)))
    return clips


def line_translations(table: dict[str, list[str]], number: int, lang: str) -> dict[str, str]:
    """Line ``number`` of a table in every language of drascula.dat but ``lang`` that has it (English first), in
    sentence case."""
    return {
        other: sentence_case(table[other][number], other)
        for other in DAT_LANGUAGES
        if other != lang and number < len(table[other]) and table[other][number]
    }


def stage_voices(clips: list[tuple[Clip, str]], folder: str) -> list[Clip]:
    """Writes each raw voice file as a 16-bit WAV under ``folder`` (so the shared converter reads it) and sets
    ``clip.path``; returns the clips."""
    for clip, voice in clips:
        samples = np.fromfile(voice, dtype=np.uint8).astype(np.float32)
        clip.path = os.path.join(folder, clip.lang, f"{clip.key}.wav")
        os.makedirs(os.path.dirname(clip.path), exist_ok=True)
        sf.write(clip.path, (samples - 128.0) / 128.0, VOICE_RATE, subtype="PCM_16")
    return [clip for clip, _ in clips]


def build_drascula(
    out: str,
    root: str | None = None,
    cache_dir: str | None = None,
    languages: tuple[str, ...] = SPEECH_LANGUAGES,
    num_workers: int = 2,
) -> dict:
    """Builds the Drascula real-speech corpus (ASR and AST rows) into ``out``; returns its summary (``summary.json``).

    Args:
        out: output corpus directory (``<split>.jsonl``, ``audio/<lang>/<table>.<n>.flac``, ``summary.json``).
        root: an extraction root of the packages (or the game folder); fetched with :func:`fetch_drascula` into
            ``cache_dir`` when None.
        languages: the voices kept, among :data:`SPEECH_LANGUAGES`.
    Raises:
        ValueError: a language without voices in the game, or ``root`` is not the game (before writing).
    """
    check_languages(languages)
    unvoiced = sorted(set(languages) - set(SPEECH_LANGUAGES))
    if unvoiced:
        raise ValueError(
            f"Drascula has voices in {','.join(SPEECH_LANGUAGES)} only, not {unvoiced} (the Italian package's voices "
            "are the English recordings)."
        )
    start = time.time()
    game_dir = find_game_dir(root) if root else fetch_drascula(cache_dir)
    stats: Counter = Counter()
    voices = read_voices(game_dir, tuple(languages), stats)
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".voices-") as staging:
        clips = stage_voices(voices, staging)
        return build_clip_corpus(
            out, clips, CORPUS, stats, num_workers, start=start, max_letters_per_second=MAX_LETTERS_PER_SECOND,
            license=LICENSE, languages=list(languages),
            source="Debian " + " ".join(PACKAGES),
        )  # fmt: skip
