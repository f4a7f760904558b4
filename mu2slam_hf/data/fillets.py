"""Fish Fillets NG (Debian, GPL-2): real n-way parallel dialogue text and real Czech/Dutch voice acting.

The game ships ``usr/share/games/fillets-ng/script/<level>/dialogs_<lang>.lua`` with entries
``dialogId("id", "font", "English text")`` optionally followed by ``dialogStr("translation")`` (calls may
span lines; strings use Lua escapes), and ``sound/<level>/<lang>/<id>.ogg`` speech for cs and nl.

:func:`level_split` is the one function deciding the split of a level: the real-speech benchmark
(:func:`build_fillets`) splits by it, and the synthetic builder drops every text that occurs in a test
level. CLI: ``mu2slam-build-fillets --out data/fillets`` writes ASR (cs, nl) and AST (cs-en, nl-en) in the
manifest format of :mod:`mu2slam_hf.data.manifest`.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from .audio import convert_clips
from .manifest import hash_split, summarize, write_manifest, write_summary
from .schema import make_example

PACKAGES = ("fillets-ng-data", "fillets-ng-data-cs", "fillets-ng-data-nl")
GAME_DIR = os.path.join("usr", "share", "games", "fillets-ng")
PARALLEL_LANGUAGES = ("en", "cs", "de", "fr", "es", "it", "nl", "pl", "ru", "sv")
SPEECH_LANGUAGES = ("cs", "nl")
SPLIT_FRACTIONS = {"train": 0.65, "dev": 0.15, "test": 0.2}

_STRING = r'"((?:[^"\\]|\\.)*)"'
_ENTRY = re.compile(
    rf"dialogId\(\s*{_STRING}\s*,\s*{_STRING}\s*,\s*{_STRING}\s*\)(?:\s*dialogStr\(\s*{_STRING}\s*\))?", re.S
)
_LUA_ESCAPES = {"n": " ", "t": " ", "\\": "\\", '"': '"', "'": "'"}


def level_split(level: str) -> str:
    """``"train"``, ``"dev"`` or ``"test"`` for a Fish Fillets level, from a stable hash of its name."""
    return hash_split(f"fillets-ng:{level}", SPLIT_FRACTIONS)


def default_cache_dir(name: str = "fillets-ng") -> str:
    """``$XDG_CACHE_HOME/mu2slam_hf/<name>`` (``~/.cache`` when unset): where a source's packages are extracted."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "mu2slam_hf", name)


def fetch_fillets(cache_dir: str | None = None, packages: tuple[str, ...] = PACKAGES) -> str:
    """Downloads (``apt-get download``) and extracts (``dpkg-deb -x``) the packages once; returns the game dir.

    Raises:
        RuntimeError: apt-get or dpkg-deb is missing or the download fails, with what to install.
    """
    return os.path.join(fetch_debian_packages(cache_dir or default_cache_dir(), packages, _install_hint), GAME_DIR)


def fetch_debian_packages(cache_dir: str, packages: tuple[str, ...], install_hint: Callable[[str], str]) -> str:
    """Downloads and extracts the Debian ``packages`` not yet in ``cache_dir``; returns the extraction root.

    Each package is marked ``<cache_dir>/<package>.extracted`` once extracted, so it is fetched only once.

    Raises:
        RuntimeError: ``install_hint(reason)`` when apt-get or dpkg-deb is missing or the download fails.
    """
    root = os.path.join(cache_dir, "root")
    missing = [p for p in packages if not os.path.exists(os.path.join(cache_dir, f"{p}.extracted"))]
    if missing:
        for tool in ("apt-get", "dpkg-deb"):
            if shutil.which(tool) is None:
                raise RuntimeError(install_hint(f"`{tool}` is not available"))
        os.makedirs(root, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
            result = subprocess.run(["apt-get", "download", *missing], cwd=tmp, capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(
                    install_hint(f"`apt-get download {' '.join(missing)}` failed: {result.stderr.strip()}")
                )
            for package in missing:
                (deb,) = glob.glob(os.path.join(tmp, f"{package}_*.deb"))
                subprocess.run(["dpkg-deb", "-x", deb, root], check=True)
                open(os.path.join(cache_dir, f"{package}.extracted"), "w").close()
    return root


def _install_hint(reason: str) -> str:
    return (
        f"Cannot fetch Fish Fillets NG data: {reason}. This needs a Debian/Ubuntu machine with apt-get and "
        f"dpkg-deb and access to the Debian archive (run `apt-get update` first; packages: {' '.join(PACKAGES)}, "
        "in Debian main). Alternatively extract them yourself (`apt-get download ...; dpkg-deb -x <deb> <dir>`) "
        f"and pass the game folder (<dir>/{GAME_DIR}) as --fillets-dir."
    )


def _unescape(text: str) -> str:
    text = re.sub(r"\\(.)", lambda m: _LUA_ESCAPES.get(m.group(1), m.group(1)), text)
    return " ".join(text.split())


def read_dialogs(game_dir: str, languages: tuple[str, ...] = PARALLEL_LANGUAGES) -> dict[tuple[str, str], dict]:
    """``{(level, dialog_id): {"font": ..., "en": ..., <lang>: translation...}}`` from every level's lua files.

    A translation identical to the English line (left untranslated) is dropped.
    """
    table: dict[tuple[str, str], dict] = defaultdict(dict)
    for level in sorted(os.listdir(os.path.join(game_dir, "script"))):
        for lang in languages:
            for path in sorted(glob.glob(os.path.join(game_dir, "script", level, f"*dialogs_{lang}.lua"))):
                with open(path, encoding="utf-8", errors="replace") as handle:
                    source = handle.read()
                for dialog_id, font, english, translation in _ENTRY.findall(source):
                    entry = table[(level, dialog_id)]
                    entry.setdefault("font", font)
                    entry["en"] = _unescape(english)
                    text = _unescape(translation) if translation else ""
                    if lang != "en" and text and text != entry["en"]:
                        entry[lang] = text
    return {key: entry for key, entry in table.items() if entry.get("en")}


def build_fillets(
    out: str,
    game_dir: str | None = None,
    cache_dir: str | None = None,
    languages: tuple[str, ...] = SPEECH_LANGUAGES,
    levels: list[str] | None = None,
    num_workers: int = 2,
) -> dict[str, Any]:
    """Builds the real-speech benchmark: ASR (cs, nl) and AST (cs-en, nl-en), split by :func:`level_split`.

    Args:
        out: output corpus directory (``<split>.jsonl``, ``audio/<lang>/<level>/<id>.flac``, ``summary.json``).
        game_dir: an extracted game folder; fetched with :func:`fetch_fillets` into ``cache_dir`` when None.
        levels: only these levels (for quick tests); all when None.
    Returns:
        The summary (also written to ``summary.json``).
    """
    start = time.time()
    game_dir = game_dir or fetch_fillets(cache_dir)
    dialogs = read_dialogs(game_dir, ("en", *languages))
    jobs, rows = [], defaultdict(list)
    for lang in languages:
        for path in sorted(glob.glob(os.path.join(game_dir, "sound", "*", lang, "*.ogg"))):
            level, dialog_id = path.split(os.sep)[-3], os.path.splitext(os.path.basename(path))[0]
            entry = dialogs.get((level, dialog_id), {})
            if not entry.get(lang) or (levels is not None and level not in levels):
                continue
            rel = os.path.join("audio", lang, level, f"{dialog_id}.flac")
            jobs.append((path, os.path.join(out, rel)))
            rows[level_split(level)].append((rel, lang, level, dialog_id, entry))
    durations = convert_clips(jobs, num_workers)
    splits, skipped = {}, {}
    for split in ("train", "dev", "test"):
        examples = []
        for rel, lang, level, dialog_id, entry in rows.get(split, []):
            if isinstance(durations[os.path.join(out, rel)], str):
                skipped[rel] = durations[os.path.join(out, rel)]
                continue
            common = dict(
                audio=rel,
                source_text=entry[lang],
                duration=durations[os.path.join(out, rel)],
                speaker=f"fillets-{lang}-{entry['font']}",
            )
            examples.append(
                make_example(f"fillets-asr-{lang}-{level}-{dialog_id}", "asr", lang, target_text=entry[lang], **common)
            )
            examples.append(
                make_example(
                    f"fillets-ast-{lang}-en-{level}-{dialog_id}",
                    "ast",
                    lang,
                    target_text=entry["en"],
                    target_lang="en",
                    **common,
                )
            )
        write_manifest(os.path.join(out, f"{split}.jsonl"), examples)
        splits[split] = examples
    summary = summarize(splits)
    summary["build_seconds"] = round(time.time() - start, 1)
    summary["skipped"] = skipped
    summary["levels"] = {s: sorted({r[2] for r in rows.get(s, [])}) for s in ("train", "dev", "test")}
    write_summary(out, summary)
    return summary
