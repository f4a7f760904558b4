"""KTuberling and KLettres (Debian ``ktuberling-data``, ``klettres-data``, GPL-2+): real spoken words and syllables.

- **KTuberling** (``usr/share/ktuberling/sounds``): ``<lang>.soundtheme`` maps each object of the game (``ball``,
  ``egypt_camel``...: the *item*, the same meaning in every language) to a recording ``<lang>/<file>``. The text is
  known only where the file is named by the word itself (French ``egypte_chameau.wav``, Spanish ``ojo.wav``,
  Italian, Dutch): the words are the file name without its theme prefix, ``-`` read as a space, with the accents
  and apostrophes file names leave out put back from :data:`SPELLING`. English, German and Russian recordings
  are named after the English object id (``egypt_camel.ogg``), not the words said: their text is unknown and
  they are skipped (counted ``<lang>/text_unknown``).
- **KLettres** (``usr/share/klettres/<dir>``, ``<dir>`` = ``en``, ``en_GB``, ``de``...): ``sounds.xml`` names each
  recording: ``<alphabet>`` letters and ``<syllables>`` syllables and short words (``BA``, ``HAUS``). The text is
  the name, lower-cased. Single letters are left out unless asked (``letters=True``): a letter said alone is its
  name ("bee"), transcribed as the letter, and scored by a one-character CER.

:func:`build_kde_games` (CLI ``mu2slam-build-kde-games``) writes ASR rows through
:func:`~mu2slam_hf.data.real_speech.build_clip_corpus`: split by item (a KTuberling object in every language, a
KLettres text in every language it occurs in) so no word is in two splits. Each game folder (a language, and
``en_GB`` apart from ``en``) is taken to be one speaker: ``ktuberling-<lang>``, ``klettres-<dir>``.
"""

from __future__ import annotations

import glob
import os
import re
import time
import xml.etree.ElementTree as ET
from collections import Counter

from .fillets import default_cache_dir, fetch_debian_packages
from .libreoffice import LANGUAGES
from .real_speech import Clip, build_clip_corpus, check_languages

PACKAGES = ("ktuberling-data", "klettres-data")
KTUBERLING_DIR = os.path.join("usr", "share", "ktuberling", "sounds")
KLETTRES_DIR = os.path.join("usr", "share", "klettres")
LICENSE = "GPL-2.0-or-later"
CORPUS = "kde-games"

# KTuberling languages whose recordings are named by the words said (the others use the English object id).
NAMED_LANGUAGES = ("fr", "es", "it", "nl")
# How the words are written where the file name cannot say it (no accents, no apostrophes, no spaces):
# (language, word of the file name) -> text. Elisions (``j-aime``) are joined with an apostrophe by rule.
SPELLING = {
    ("fr", w): t
    for w, t in {
        "ane": "âne", "baton": "bâton", "barriere": "barrière", "charette": "charrette", "cle": "clé",
        "cloture": "clôture", "coeur": "cœur", "comete": "comète", "depannage": "dépannage", "echelle": "échelle",
        "ecole": "école", "elephant": "éléphant", "etoile": "étoile", "fache": "fâche", "fleche": "flèche",
        "fleches": "flèches", "frere": "frère", "fumee": "fumée", "fusee": "fusée", "garcon": "garçon",
        "hotel": "hôtel", "idee": "idée", "mecanicien": "mécanicien", "noel": "Noël", "noeud": "nœud",
        "oeil": "œil", "pecheur": "pêcheur", "planete": "planète", "sorciere": "sorcière", "tete": "tête",
    }.items()
} | {("es", "gafasdesol"): "gafas de sol", ("it", "occhialidasole"): "occhiali da sole"}  # fmt: skip
# Recordings whose words the file name does not give for sure (``avis-recherche``: "avis de recherche"?).
UNSURE = {("fr", "avis-recherche")}
_ELISION = re.compile(r"\b([jldJLD]) (?=\w)")
# Latin letters that look like Cyrillic ones (KLettres' Russian ``КO`` has a Latin O).
_CYRILLIC_LOOKALIKES = str.maketrans("AaBCcEeHKMOoPpTXxy", "АаВСсЕеНКМОоРрТХху")


def fetch_kde_games(cache_dir: str | None = None, packages: tuple[str, ...] = PACKAGES) -> str:
    """Downloads (``apt-get download``) and extracts (``dpkg-deb -x``) the packages once; returns the extraction
    root (holding ``usr/share/ktuberling`` and ``usr/share/klettres``)."""
    return fetch_debian_packages(cache_dir or default_cache_dir(CORPUS), packages, _install_hint)


def _install_hint(reason: str) -> str:
    return (
        f"Cannot fetch KTuberling/KLettres: {reason}. This needs a Debian/Ubuntu machine with apt-get and dpkg-deb "
        f"and access to the Debian archive (run `apt-get update` first; packages {' '.join(PACKAGES)}, in Debian "
        "main). Alternatively extract them yourself (`apt-get download ktuberling-data klettres-data; dpkg-deb -x "
        "<deb> <dir>` for each) and pass <dir> as --root."
    )


def find_games(root: str) -> tuple[str | None, str | None]:
    """``(ktuberling sounds folder, klettres folder)`` under an extraction root (either may be None).

    Raises:
        ValueError: neither is there, with what to pass.
    """
    ktuberling, klettres = os.path.join(root, KTUBERLING_DIR), os.path.join(root, KLETTRES_DIR)
    found = (
        ktuberling if glob.glob(os.path.join(ktuberling, "*.soundtheme")) else None,
        klettres if glob.glob(os.path.join(klettres, "*", "sounds.xml")) else None,
    )
    if found == (None, None):
        raise ValueError(
            f"{root} holds neither KTuberling ({KTUBERLING_DIR}/<lang>.soundtheme) nor KLettres "
            f"({KLETTRES_DIR}/<lang>/sounds.xml). Pass the folder ktuberling-data and/or klettres-data were "
            "extracted to (`dpkg-deb -x <deb> <dir>`), or leave --root out to fetch them with apt."
        )
    return found


def ktuberling_text(lang: str, file: str) -> str | None:
    """The words of a KTuberling recording from its file name (``fr/lune_etoile-filante.wav`` -> ``étoile
    filante``), or None where the name does not give them (a language of English ids, or :data:`UNSURE`)."""
    stem = os.path.splitext(os.path.basename(file))[0]
    if lang not in NAMED_LANGUAGES:
        return None
    if lang == "fr":  # French files carry their theme: patate_, egypte_, lune_...
        stem = stem.split("_", 1)[-1]
    if (lang, stem) in UNSURE:
        return None
    words = [SPELLING.get((lang, word), word) for word in stem.replace("_", "-").split("-") if word]
    return _ELISION.sub(r"\1'", " ".join(words)) if lang == "fr" else " ".join(words)


def read_ktuberling(sounds_dir: str, languages: tuple[str, ...], stats: Counter) -> list[Clip]:
    """The KTuberling recordings of ``languages`` with known text (item ``ktuberling:<object>``)."""
    clips = []
    for theme in sorted(glob.glob(os.path.join(sounds_dir, "*.soundtheme"))):
        lang = os.path.basename(theme)[: -len(".soundtheme")]
        if lang not in languages:
            continue
        for sound in ET.parse(theme).getroot().iter("sound"):
            name, file = sound.get("name"), sound.get("file")
            path = os.path.join(sounds_dir, file)
            text = ktuberling_text(lang, file)
            reason = "no_file" if not os.path.isfile(path) else "text_unknown" if text is None else None
            if reason:
                stats[f"{lang}/{reason}"] += 1
                continue
            clips.append(Clip(path, lang, text, f"ktuberling-{lang}", f"ktuberling:{name}", f"ktuberling.{name}"))
    return clips


def klettres_text(lang: str, name: str) -> str:
    """A KLettres sound name as text: lower case (Russian Latin look-alikes made Cyrillic)."""
    if lang == "ru":
        name = name.translate(_CYRILLIC_LOOKALIKES)
    return " ".join(name.split()).lower()


def read_klettres(klettres_dir: str, languages: tuple[str, ...], letters: bool, stats: Counter) -> list[Clip]:
    """The KLettres syllables (and, with ``letters``, letters) of ``languages`` (item ``klettres:<text>``)."""
    clips = []
    for xml in sorted(glob.glob(os.path.join(klettres_dir, "*", "sounds.xml"))):
        folder = os.path.basename(os.path.dirname(xml))
        lang = folder.split("_")[0]
        if lang not in languages:
            continue
        root = ET.parse(xml).getroot()
        for section, kind in (("alphabet", "letter"), ("syllables", "syllable")):
            for element in root.iter(section):
                for sound in element.iter("sound"):
                    path = os.path.join(klettres_dir, sound.get("file", ""))
                    text = klettres_text(lang, sound.get("name", ""))
                    reason = (
                        "no_file" if not os.path.isfile(path)
                        else "no_text" if not text
                        else "letter" if kind == "letter" and not letters
                        else None
                    )  # fmt: skip
                    if reason:
                        stats[f"{lang}/{reason}"] += 1
                        continue
                    key = f"klettres.{folder}.{kind}.{os.path.splitext(os.path.basename(path))[0]}"
                    clips.append(Clip(path, lang, text, f"klettres-{folder}", f"klettres:{text}", key, kind))
    return clips


def build_kde_games(
    out: str,
    root: str | None = None,
    cache_dir: str | None = None,
    languages: tuple[str, ...] = LANGUAGES,
    letters: bool = False,
    num_workers: int = 2,
) -> dict:
    """Builds the KTuberling + KLettres real-speech corpus (ASR rows) into ``out``; returns its summary.

    Args:
        out: output corpus directory (``<split>.jsonl``, ``audio/<lang>/<key>.flac``, ``summary.json``).
        root: an extraction root of ``ktuberling-data`` and/or ``klettres-data``; fetched with
            :func:`fetch_kde_games` into ``cache_dir`` when None.
        languages: the languages kept (default the eight of :data:`LANGUAGES`).
        letters: also write KLettres' single letters (their transcript is the letter).
    Raises:
        ValueError: an unknown language, or ``root`` holds neither game (before writing).
    """
    check_languages(languages)
    start = time.time()
    ktuberling, klettres = find_games(root or fetch_kde_games(cache_dir))
    stats: Counter = Counter()
    clips = (read_ktuberling(ktuberling, languages, stats) if ktuberling else []) + (
        read_klettres(klettres, languages, letters, stats) if klettres else []
    )
    return build_clip_corpus(
        out, clips, CORPUS, stats, num_workers, start=start, license=LICENSE, languages=list(languages),
        source="Debian " + " ".join(p for p, d in zip(PACKAGES, (ktuberling, klettres), strict=True) if d),
        letters=letters,
    )  # fmt: skip
