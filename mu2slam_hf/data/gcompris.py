"""GCompris voices (GitHub ``gcompris/GCompris-voices``): real spoken words, numbers and place names in 8 languages.

The voices repository holds ``<lang>/<folder>/<name>.ogg`` (``words``: one word or short phrase a file, named by
its English id, ``apple.ogg``; ``alphabet``: letters ``U0061.ogg`` and numbers ``U0031.ogg``, ``10.ogg``;
``geography``: countries and regions, ``egypt.ogg``; also ``colors``, ``intro``, ``misc``), each folder with a
``README`` naming the speaker and licence (per file, ``U0061.ogg<TAB>Julia Wycherley 2011 / GPL``, or for the
whole folder). The text of each file is GCompris' own (:func:`load_texts`):

- words and numbers: the vocabulary activity's ``content-<lang>.json`` (``{"apple.ogg": "der Apfel",
  "U0031.ogg": "eins"}``), read from a folder of those files (GCompris-qt's ``src/activities/lang/resource``) or
  from the Qt resource ``lang.rcc`` of Debian's ``gcompris-qt-data`` (:func:`read_rcc`);
- places: the geography activities' boards pair ``geography/<id>`` with an English name (``qsTr("Egypt")``),
  translated by ``gcompris_<lang>.qm`` (:func:`read_qm`, :func:`place_names`); only from an extracted
  ``gcompris-qt-data`` (fetched with apt when no text source is given).

A file without text there (or with an empty one) is skipped and counted (``<lang>/text_unknown``), as are places
whose name changed since the recordings (:data:`UNSURE_PLACES`, ``<lang>/text_unsure``) and the folders no table
covers (``<lang>/folder_<name>``). Letters (``U0061.ogg``, text: the letter) are left out unless asked, as in
:mod:`~mu2slam_hf.data.kde_games`.

:func:`build_gcompris` (CLI ``mu2slam-build-gcompris``) cannot download the voices: pass a local checkout
(``--voices-dir``). Rows are ASR only, split by item (the English id: ``apple`` in every language, one split)
through :func:`~mu2slam_hf.data.real_speech.build_clip_corpus`.
"""

from __future__ import annotations

import glob
import json
import os
import re
import struct
import time
import unicodedata
import zlib
from collections import Counter

from .fillets import default_cache_dir, fetch_debian_packages
from .libreoffice import LANGUAGES
from .real_speech import Clip, build_clip_corpus, check_languages

PACKAGE = "gcompris-qt-data"
LANG_RCC = os.path.join("usr", "share", "gcompris-qt", "rcc", "lang.rcc")
CONTENT_PREFIX = "/gcompris/src/activities/lang/resource/"
FOLDERS = ("words", "alphabet", "geography")  # the folders whose text is known (see load_texts)
RCC_DIR = os.path.join("usr", "share", "gcompris-qt", "rcc")
GEOGRAPHY_RCCS = ("geography.rcc", "geo-country.rcc")  # their boards pair geography/<id>.ogg with a place name
QM = os.path.join("usr", "share", "gcompris-qt", "translations", "gcompris_{lang}.qm")
QM_MAGIC = bytes.fromhex("3cb86418caef9c95cd211cbf60a1bddd")
# Places renamed, or named otherwise, in the 3.1 text than their 2018 recordings may say ("North Macedonia",
# "Slovak Republic", "United States of America"): left out (``<lang>/text_unsure``).
UNSURE_PLACES = {"macedonia", "slovakia", "usa"}
_PLACE = re.compile(r'"soundFile":\s*"[^"]*/geography/([^"/]+)\.\$CA"[^{}]*?"toolTipText":\s*qsTr\("([^"]+)"\)')
LICENSE = "per folder (summary.json attributions): GPL-2+/GPL-3 or CC-BY-SA-3.0 voices; GPL-3+ text"
CORPUS = "gcompris"
_README_LINE = re.compile(r"^(\S+?\.ogg)\s*(\S.*)$")
_CODE_POINT = re.compile(r"^U([0-9A-Fa-f]{4,6})$")


def read_rcc(path: str) -> dict[str, bytes]:
    """The files of a Qt binary resource (``.rcc``, format versions 1-3): ``{"/path/in/resource": bytes}``.

    Layout: ``qres``, version, then the offsets of the node tree, the data and the names (big-endian). A node is
    a name offset, flags (2: directory, 1: zlib-compressed) and either a child count and first child or a locale
    and data offset; version 2+ adds an 8-byte time. Raises ValueError for a file that is not one, or a
    zstd-compressed entry (Qt 6 ``rcc --compress-algo zstd``).
    """
    with open(path, "rb") as handle:
        blob = handle.read()
    if blob[:4] != b"qres":
        raise ValueError(f"{path} is not a Qt resource file (no 'qres' header)")
    version, tree, data, names = struct.unpack(">IIII", blob[4:20])
    node_size = 14 if version == 1 else 22
    files: dict[str, bytes] = {}

    def name(offset: int) -> str:
        (length,) = struct.unpack(">H", blob[names + offset : names + offset + 2])
        return blob[names + offset + 6 : names + offset + 6 + 2 * length].decode("utf-16-be")

    def walk(index: int, prefix: str) -> None:
        at = tree + index * node_size
        name_offset, flags = struct.unpack(">IH", blob[at : at + 6])
        path_here = prefix + (name(name_offset) if index else "")
        if flags & 2:
            count, first = struct.unpack(">II", blob[at + 6 : at + 14])
            for child in range(first, first + count):
                walk(child, path_here + "/")
            return
        (offset,) = struct.unpack(">I", blob[at + 10 : at + 14])
        (size,) = struct.unpack(">I", blob[data + offset : data + offset + 4])
        raw = blob[data + offset + 4 : data + offset + 4 + size]
        if flags & 4:
            raise ValueError(f"{path}: {path_here} is zstd-compressed; extract it with Qt's tools")
        files[path_here] = zlib.decompress(raw[4:]) if flags & 1 else raw

    walk(0, "")
    return files


def fetch_gcompris_text(cache_dir: str | None = None) -> str:
    """Downloads and extracts Debian's ``gcompris-qt-data`` once; returns the extraction root."""
    return fetch_debian_packages(cache_dir or default_cache_dir(CORPUS), (PACKAGE,), _install_hint)


def _install_hint(reason: str) -> str:
    return (
        f"Cannot fetch GCompris' word list: {reason}. This needs a Debian/Ubuntu machine with apt-get and dpkg-deb "
        f"(run `apt-get update` first; package {PACKAGE}, in Debian main). Alternatively pass --text with a folder "
        "of content-<lang>.json files (GCompris-qt's src/activities/lang/resource) or a lang.rcc."
    )


def load_texts(text_source: str, languages: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """``{lang: {"words/apple.ogg": "der Apfel", "alphabet/U0031.ogg": "eins", "geography/egypt.ogg": "Ägypten"}}``
    from a folder of ``content-<lang>.json``, an extraction root of ``gcompris-qt-data`` or a ``lang.rcc``; texts
    whitespace-collapsed, empty ones left out. The word table names files of ``words`` and ``alphabet``; place
    names (:func:`place_names`) come only with an extraction root.

    Raises:
        ValueError: none of these is there, with what to pass.
    """
    raw: dict[str, bytes] = {}
    rcc = os.path.join(text_source, LANG_RCC) if os.path.isdir(text_source) else text_source
    if os.path.isdir(text_source) and glob.glob(os.path.join(text_source, "content-*.json")):
        for lang in languages:
            path = os.path.join(text_source, f"content-{lang}.json")
            if os.path.isfile(path):
                with open(path, "rb") as handle:
                    raw[lang] = handle.read()
    elif os.path.isfile(rcc):
        files = read_rcc(rcc)
        raw = {
            lang: files[f"{CONTENT_PREFIX}content-{lang}.json"]
            for lang in languages
            if f"{CONTENT_PREFIX}content-{lang}.json" in files
        }
        if not raw:
            raise ValueError(f"{rcc} holds no content-<lang>.json under {CONTENT_PREFIX} for {','.join(languages)}")
    else:
        raise ValueError(
            f"{text_source} holds no GCompris word list: neither content-<lang>.json files (GCompris-qt's "
            f"src/activities/lang/resource) nor {LANG_RCC} (an extracted {PACKAGE}) nor a .rcc file. Pass one of "
            "them as --text, or leave --text out to fetch the Debian package with apt."
        )
    texts = {lang: {} for lang in languages}
    for lang, blob in raw.items():
        for file, text in json.loads(blob.decode("utf-8")).items():
            texts[lang].update({f"{folder}/{file}": " ".join(text.split()) for folder in ("words", "alphabet")})
    if os.path.isdir(text_source) and os.path.isdir(os.path.join(text_source, RCC_DIR)):
        for lang, places in place_names(text_source, languages).items():
            texts[lang].update({f"geography/{place}.ogg": name for place, name in places.items()})
    return {lang: {key: text for key, text in table.items() if text} for lang, table in texts.items()}


def read_qm(path: str) -> dict[str, dict[str, str]]:
    """The translations of a Qt ``.qm`` file: ``{source text: {context: translation}}`` (the first form of a
    plural; empty translations left out).

    A ``.qm`` is a 16-byte magic, then blocks (tag byte, 4-byte big-endian length); the messages block (tag
    0x69) is a run of records: 3 translation (UTF-16BE), 6 source text, 7 context, 8 comment (each with a 4-byte
    length), 5 a 4-byte hash, 1 the end of a message. Raises ValueError for a file that is not one.
    """
    with open(path, "rb") as handle:
        blob = handle.read()
    if blob[:16] != QM_MAGIC:
        raise ValueError(f"{path} is not a Qt translation file (.qm)")
    messages, at = b"", 16
    while at + 5 <= len(blob):
        (length,) = struct.unpack(">I", blob[at + 1 : at + 5])
        if blob[at] == 0x69:
            messages = blob[at + 5 : at + 5 + length]
        at += 5 + length
    table: dict[str, dict[str, str]] = {}
    record: dict[int, bytes] = {}
    at = 0
    while at < len(messages):
        tag, at = messages[at], at + 1
        if tag == 1:
            translation = record.get(3, b"").decode("utf-16-be")
            if 6 in record and translation.strip():
                table.setdefault(record[6].decode("utf-8"), {})[record.get(7, b"").decode("utf-8")] = translation
            record = {}
        elif tag == 5:
            at += 4
        elif tag in (2, 3, 4, 6, 7, 8):
            (length,) = struct.unpack(">I", messages[at : at + 4])
            length = 0 if length == 0xFFFFFFFF else length
            record.setdefault(tag, messages[at + 4 : at + 4 + length])
            at += 4 + length
    return table


def place_names(root: str, languages: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """``{lang: {"egypt": "Ägypten"}}``: the place each ``geography/<id>.ogg`` names, from the boards of the
    geography activities in an extracted ``gcompris-qt-data`` (``soundFile`` ... ``toolTipText: qsTr("Egypt")``),
    in English as written and in another language as its ``gcompris_<lang>.qm`` translates it (the translation
    for the board's own context, else the only one). A place without a translation is left out."""
    english: dict[str, tuple[str, str]] = {}
    for name in GEOGRAPHY_RCCS:
        path = os.path.join(root, RCC_DIR, name)
        if not os.path.isfile(path):
            continue
        for resource, blob in sorted(read_rcc(path).items()):
            if resource.endswith(".qml"):
                context = os.path.basename(resource)[: -len(".qml")]
                for place, text in _PLACE.findall(blob.decode("utf-8", errors="replace")):
                    english.setdefault(place, (context, text))
    names: dict[str, dict[str, str]] = {}
    for lang in languages:
        qm = os.path.join(root, QM.format(lang=lang))
        translations = read_qm(qm) if lang != "en" and os.path.isfile(qm) else {}
        names[lang] = {}
        for place, (context, text) in english.items():
            forms = translations.get(text, {})
            name = (
                text
                if lang == "en"
                else forms.get(context) or (next(iter(set(forms.values()))) if len(set(forms.values())) == 1 else None)
            )
            if name:
                names[lang][place] = " ".join(name.split())
    return names


def read_attributions(folder: str) -> tuple[dict[str, str], list[str]]:
    """A voices folder's ``README``: ``({file: attribution}, [lines about the whole folder])``; empty without one
    (:func:`read_voices` then takes the general lines of the language's own ``README``, as Czech has). UTF-8, or
    ISO-8859-15 where it is not (the Czech README); a tab or nothing between a file and its attribution."""
    per_file, general = {}, []
    path = os.path.join(folder, "README")
    if os.path.isfile(path):
        with open(path, "rb") as handle:
            blob = handle.read()
        try:
            text = blob.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = blob.decode("iso-8859-15")
        for line in text.splitlines():
            match = _README_LINE.match(line.strip())
            if match:
                per_file[match[1]] = match[2]
            elif line.strip():
                general.append(line.strip())
    return per_file, general


def speaker_of(lang: str, folder: str, attribution: str | None) -> str:
    """``gcompris-<lang>-<name>`` from a README attribution (``Copyright Martin Herweg 2001 / Release under GPL``
    -> ``gcompris-de-martin-herweg``); ``gcompris-<lang>-<folder>`` when the README names nobody per file."""
    if not attribution:
        return f"{CORPUS}-{lang}-{folder}"
    who = re.sub(r"(?i)\b(copyright|voice\s*:)|\(c\)|\d{4}", " ", attribution.split("/")[0])
    slug = re.sub(r"[^a-z0-9]+", "-", unicodedata.normalize("NFKD", who).encode("ascii", "ignore").decode().lower())
    return f"{CORPUS}-{lang}-{slug.strip('-') or folder}"


def read_voices(
    voices_dir: str, texts: dict[str, dict[str, str]], languages: tuple[str, ...], letters: bool, stats: Counter
) -> tuple[list[Clip], dict[str, list[str]]]:
    """The clips of ``languages`` with known text, and the attributions of the folders used."""
    clips, attributions = [], {}
    for lang in languages:
        for folder_path in sorted(glob.glob(os.path.join(voices_dir, lang, "*", ""))):
            folder = os.path.basename(os.path.dirname(folder_path))
            files = sorted(glob.glob(os.path.join(folder_path, "*.ogg")))
            if folder not in FOLDERS:
                stats[f"{lang}/folder_{folder}"] += len(files)
                continue
            per_file, general = read_attributions(folder_path)
            general = general or read_attributions(os.path.join(voices_dir, lang))[1]  # cs/README: the language's
            used = set()
            for path in files:
                file = os.path.basename(path)
                stem = file[: -len(".ogg")]
                text = texts.get(lang, {}).get(f"{folder}/{file}")
                if folder == "geography" and stem in UNSURE_PLACES and text is not None:
                    stats[f"{lang}/text_unsure"] += 1
                    continue
                kind = {"words": "word", "alphabet": "number", "geography": "place"}[folder]
                code = _CODE_POINT.match(stem)
                if (
                    text is None
                    and folder == "alphabet"
                    and code
                    and unicodedata.category(chr(int(code[1], 16)))[0] == "L"
                ):
                    text, kind = chr(int(code[1], 16)).lower(), "letter"
                reason = (
                    "text_unknown" if text is None
                    else "letter" if kind == "letter" and not letters
                    else "letter_other_script" if kind == "letter" and lang == "ru" and text.isascii()
                    else None
                )  # fmt: skip
                if reason:
                    stats[f"{lang}/{reason}"] += 1
                    continue
                speaker = speaker_of(lang, folder, per_file.get(file))
                used.add(per_file.get(file) or " ".join(general) or "no README")
                clips.append(Clip(path, lang, text, speaker, stem, f"{folder}.{stem}", kind))
            if used:
                attributions[f"{lang}/{folder}"] = sorted(used)
    return clips, attributions


def find_voices_dir(voices_dir: str, languages: tuple[str, ...]) -> str:
    """Checks that ``voices_dir`` is a GCompris-voices checkout (a ``<lang>/words``, ``alphabet`` or ``geography``)."""
    if not any(os.path.isdir(os.path.join(voices_dir, lang, folder)) for lang in languages for folder in FOLDERS):
        raise ValueError(
            f"{voices_dir} is not a GCompris voices folder: no <lang>/words, alphabet or geography in it for "
            f"{','.join(languages)}. Clone https://github.com/gcompris/GCompris-voices (`git clone --depth 1 ...`) "
            "and pass the checkout as --voices-dir; this builder does not download it."
        )
    return voices_dir


def build_gcompris(
    out: str,
    voices_dir: str,
    text_source: str | None = None,
    cache_dir: str | None = None,
    languages: tuple[str, ...] = LANGUAGES,
    letters: bool = False,
    num_workers: int = 2,
) -> dict:
    """Builds the GCompris real-speech corpus (ASR rows) into ``out``; returns its summary.

    Args:
        voices_dir: a checkout of GCompris-voices (``<lang>/words/*.ogg``...).
        text_source: a folder of ``content-<lang>.json``, an extracted ``gcompris-qt-data`` or a ``lang.rcc``;
            fetched with :func:`fetch_gcompris_text` into ``cache_dir`` when None.
        letters: also write single letters (their transcript is the letter).
    Raises:
        ValueError: an unknown language, no voices or no word list where given (before writing).
    """
    check_languages(languages)
    start = time.time()
    voices_dir = find_voices_dir(voices_dir, languages)
    texts = load_texts(text_source or fetch_gcompris_text(cache_dir), languages)
    stats: Counter = Counter()
    clips, attributions = read_voices(voices_dir, texts, languages, letters, stats)
    return build_clip_corpus(
        out, clips, CORPUS, stats, num_workers, start=start, license=LICENSE, languages=list(languages),
        source=f"GCompris-voices ({os.path.abspath(voices_dir)}); text: {text_source or 'Debian ' + PACKAGE}",
        letters=letters, attributions=attributions,
        texts_per_language={lang: len(table) for lang, table in texts.items()},
    )  # fmt: skip
