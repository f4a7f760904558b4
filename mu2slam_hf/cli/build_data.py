"""The corpus builders' commands (``[project.scripts]`` in pyproject.toml): argument parsing and the printed summary;
each builds with its module in :mod:`mu2slam_hf.data`.

    mu2slam-build-synthetic       build_synthetic_main      data/synthetic.py      espeak-ng/Festival n-way parallel
    mu2slam-build-fillets         build_fillets_main        data/fillets.py        Fish Fillets NG cs/nl speech
    mu2slam-build-text            build_text_main           data/libreoffice.py    LibreOffice help parallel text
    mu2slam-build-tuxpaint        build_tuxpaint_main       data/tuxpaint.py       Tux Paint read speech and text
    mu2slam-build-parallel-text   build_parallel_text_main  data/parallel_text.py  WMT newstest, Multi30k, Tatoeba
    mu2slam-build-kde-games       build_kde_games_main      data/kde_games.py      KTuberling/KLettres spoken words
    mu2slam-build-gcompris        build_gcompris_main       data/gcompris.py       GCompris' spoken words
    mu2slam-build-drascula        build_drascula_main       data/drascula.py       Drascula en/es voice acting
    mu2slam-combine               combine_main              data/manifest.py       several corpora as one folder
"""

from __future__ import annotations

import argparse

from ..data import drascula, gcompris, kde_games
from ..data.fillets import GAME_DIR, SPEECH_LANGUAGES, build_fillets, default_cache_dir
from ..data.libreoffice import HELP_ROOT, LANGUAGES, build_libreoffice
from ..data.manifest import combine_corpora, format_summary
from ..data.parallel_text import build_parallel_text
from ..data.real_speech import format_clip_summary
from ..data.synthetic import DEFAULT_LANGUAGES, FESTIVAL_VOICES, FULL, SMALL, build_synthetic
from ..data.tuxpaint import PACKAGE, STAMPS_DIR, build_tuxpaint


def build_synthetic_main(argv: list[str] | None = None) -> None:
    """``mu2slam-build-synthetic``: the espeak-ng (and Festival) n-way parallel corpus (speech, text, ASR, AST, MT)."""
    parser = argparse.ArgumentParser(description=build_synthetic_main.__doc__)
    parser.add_argument("--out", required=True, help="output corpus directory")
    parser.add_argument("--langs", default=",".join(DEFAULT_LANGUAGES), help="comma-separated ISO 639-1 codes")
    parser.add_argument("--small", action="store_true", help=f"a quick build for tests and CI: {SMALL}")
    parser.add_argument("--max-groups", type=int, help="cap on Fish Fillets text groups (default: all)")
    parser.add_argument("--numbers", type=int, help=f"number-word groups (default {FULL['num_numbers']})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--fillets-dir", help="an extracted Fish Fillets NG game folder (fetched with apt if absent)")
    parser.add_argument("--cache-dir", help="where the Fish Fillets packages are extracted")
    parser.add_argument("--no-fillets", action="store_true", help="number words only (no apt-get download)")
    parser.add_argument(
        "--all-train-groups", action="store_true", help="--max-groups caps the dev and test groups only"
    )
    parser.add_argument(
        "--festival-fraction", type=float, default=0.0,
        help=f"share of the {'/'.join(FESTIVAL_VOICES)} lines spoken by a Festival voice, seeded per line (default 0: "
        "espeak-ng only); needs apt-get install festival and the voices' festvox packages",
    )  # fmt: skip
    args = parser.parse_args(argv)
    preset = SMALL if args.small else FULL
    summary = build_synthetic(
        args.out, tuple(args.langs.split(",")),
        max_groups=args.max_groups if args.max_groups is not None else preset["max_groups"],
        num_numbers=args.numbers if args.numbers is not None else preset["num_numbers"],
        seed=args.seed, num_workers=args.workers, game_dir=args.fillets_dir, cache_dir=args.cache_dir,
        use_fillets=not args.no_fillets, all_train_groups=args.all_train_groups,
        festival_fraction=args.festival_fraction,
    )  # fmt: skip
    print(format_summary(summary))
    print(f"groups per split: {summary['groups']}; synthesis failures: {len(summary['failures'])}")
    print(f"clips per engine: {summary['clips_per_engine']}")


def build_fillets_main(argv: list[str] | None = None) -> None:
    """``mu2slam-build-fillets``: the real cs/nl speech benchmark from Debian's Fish Fillets NG packages."""
    parser = argparse.ArgumentParser(description=build_fillets_main.__doc__)
    parser.add_argument("--out", required=True, help="output corpus directory")
    parser.add_argument(
        "--fillets-dir", help=f"an extracted game folder (.../{GAME_DIR}); fetched with apt when absent"
    )
    parser.add_argument("--cache-dir", help=f"where the .deb files are extracted (default {default_cache_dir()})")
    parser.add_argument("--langs", default=",".join(SPEECH_LANGUAGES), help="speech languages (cs,nl)")
    parser.add_argument("--levels", help="comma-separated subset of levels (default: all)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    summary = build_fillets(
        args.out,
        args.fillets_dir,
        args.cache_dir,
        tuple(args.langs.split(",")),
        args.levels.split(",") if args.levels else None,
        args.workers,
    )
    print(format_summary(summary))
    print(f"levels per split: { {s: len(v) for s, v in summary['levels'].items()} }; skipped: {summary['skipped']}")


def build_text_main(argv: list[str] | None = None) -> None:
    """``mu2slam-build-text``: the LibreOffice help parallel corpus (text-only, MT, optional synthetic AST)."""
    parser = argparse.ArgumentParser(description=build_text_main.__doc__)
    parser.add_argument("--out", required=True, help="output corpus directory")
    parser.add_argument("--langs", default=",".join(LANGUAGES), help="comma-separated ISO codes (en always added)")
    parser.add_argument("--help-dir", help=f"an extracted .../{HELP_ROOT} folder (fetched with apt when absent)")
    parser.add_argument(
        "--cache-dir", help=f"where the packages are extracted ({default_cache_dir('libreoffice-help')})"
    )
    parser.add_argument("--speech-hours", "--speech_hours", type=float, default=0.0, help="espeak-ng hours (0: none)")
    parser.add_argument("--speech-langs", help="languages to speak (default: --langs)")
    parser.add_argument("--pairs", default="", help="extra MT pairs besides en<->xx, e.g. de-fr,es-it (both ways)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    summary = build_libreoffice(
        args.out, tuple(args.langs.split(",")), args.help_dir, args.cache_dir, args.speech_hours,
        tuple(args.speech_langs.split(",")) if args.speech_langs else None,
        tuple(p for p in args.pairs.split(",") if p), args.seed, args.workers,
    )  # fmt: skip
    print(format_summary(summary))
    print(f"pages per split: {summary['pages']}; paragraphs per split: {summary['paragraphs']}")
    print(f"speech failures: {len(summary['speech_failures'])}")


def build_tuxpaint_main(argv: list[str] | None = None) -> None:
    """``mu2slam-build-tuxpaint``: real read speech (ASR, AST) and parallel text (MT) from Tux Paint's stamps."""
    parser = argparse.ArgumentParser(description=build_tuxpaint_main.__doc__)
    parser.add_argument("--out", required=True, help="output corpus directory")
    parser.add_argument("--stamps-dir", help=f"an extracted {PACKAGE} (its root or .../{STAMPS_DIR}); apt when absent")
    parser.add_argument(
        "--cache-dir", help=f"where the package is extracted (default {default_cache_dir('tuxpaint')})"
    )
    parser.add_argument("--langs", default=",".join(LANGUAGES), help="description languages (en always added)")
    parser.add_argument("--speech-langs", help="readings to use (default: --langs; the package has en fr es ru nl)")
    parser.add_argument("--pairs", default="", help="extra MT pairs besides en<->xx, e.g. de-fr,es-it (both ways)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    summary = build_tuxpaint(
        args.out, args.stamps_dir, args.cache_dir, tuple(args.langs.split(",")),
        tuple(args.speech_langs.split(",")) if args.speech_langs else None,
        tuple(p for p in args.pairs.split(",") if p), args.workers,
    )  # fmt: skip
    print(format_summary(summary))
    print(f"stamps per split: {summary['stamps']}")
    print(f"readings per split: {summary['clips']}; minutes: {summary['minutes']}")
    print(f"dropped: {summary['dropped']}; unreadable audio: {len(summary['failures'])}")


def build_parallel_text_main(argv: list[str] | None = None) -> None:
    """``mu2slam-build-parallel-text``: WMT newstest, Multi30k and Tatoeba MT (xx<->en) from downloaded folders."""
    parser = argparse.ArgumentParser(description=build_parallel_text_main.__doc__)
    parser.add_argument("--out", required=True, help="output corpus directory")
    parser.add_argument("--testsets-dir", help="the testsets folder of a clone of Helsinki-NLP/OPUS-MT-testsets")
    parser.add_argument("--multi30k-dir", help="a clone of multi30k/dataset (or its data/task1/raw folder)")
    parser.add_argument("--langs", default=",".join(LANGUAGES), help="comma-separated ISO codes (en always added)")
    parser.add_argument(
        "--held-out", action="append", default=[],
        help="a corpus folder (its dev/test.jsonl) or manifest whose sentences no train row may contain; repeatable",
    )  # fmt: skip
    args = parser.parse_args(argv)
    summary = build_parallel_text(
        args.out, args.testsets_dir, args.multi30k_dir, tuple(args.langs.split(",")), tuple(args.held_out)
    )
    print(format_summary(summary))
    print(f"pairs dropped: {summary['dropped']}")
    for split, directions in summary["missing"].items():
        if directions:
            print(f"no {split} rows for {', '.join(directions)}: use another corpus's {split} split for them")


def build_kde_games_main(argv: list[str] | None = None) -> None:
    """``mu2slam-build-kde-games``: real spoken words and syllables (ASR) from KTuberling and KLettres."""
    parser = argparse.ArgumentParser(description=build_kde_games_main.__doc__)
    parser.add_argument("--out", required=True, help="output corpus directory")
    parser.add_argument(
        "--root", help=f"where {' and '.join(kde_games.PACKAGES)} were extracted (dpkg-deb -x); apt if absent"
    )
    parser.add_argument(
        "--cache-dir", help=f"where the packages are extracted (default {default_cache_dir(kde_games.CORPUS)})"
    )
    parser.add_argument("--langs", default=",".join(LANGUAGES), help="languages kept")
    parser.add_argument(
        "--letters", action="store_true", help="also KLettres' single letters (transcript: the letter)"
    )
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    summary = kde_games.build_kde_games(
        args.out, args.root, args.cache_dir, tuple(args.langs.split(",")), args.letters, args.workers
    )
    print(format_clip_summary(summary))


def build_gcompris_main(argv: list[str] | None = None) -> None:
    """``mu2slam-build-gcompris``: real spoken words and numbers (ASR) from GCompris' voices, text from GCompris."""
    parser = argparse.ArgumentParser(description=build_gcompris_main.__doc__)
    parser.add_argument("--out", required=True, help="output corpus directory")
    parser.add_argument("--voices-dir", required=True, help="a checkout of github.com/gcompris/GCompris-voices")
    parser.add_argument(
        "--text",
        help=f"content-<lang>.json folder, extracted {gcompris.PACKAGE} or lang.rcc (default: {gcompris.PACKAGE} via apt)",
    )
    parser.add_argument(
        "--cache-dir", help=f"where {gcompris.PACKAGE} is extracted (default {default_cache_dir(gcompris.CORPUS)})"
    )
    parser.add_argument("--langs", default=",".join(LANGUAGES), help="languages kept")
    parser.add_argument("--letters", action="store_true", help="also single letters (transcript: the letter)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    summary = gcompris.build_gcompris(
        args.out, args.voices_dir, args.text, args.cache_dir, tuple(args.langs.split(",")), args.letters, args.workers
    )
    print(format_clip_summary(summary))


def build_drascula_main(argv: list[str] | None = None) -> None:
    """``mu2slam-build-drascula``: real voice-acted dialogue (ASR, and AST into 5 languages) in English and Spanish."""
    parser = argparse.ArgumentParser(description=build_drascula_main.__doc__)
    parser.add_argument("--out", required=True, help="output corpus directory")
    parser.add_argument(
        "--root", help=f"where {' '.join(drascula.PACKAGES)} were extracted (dpkg-deb -x); apt if absent"
    )
    parser.add_argument(
        "--cache-dir", help=f"where the packages are extracted (default {default_cache_dir(drascula.CORPUS)})"
    )
    parser.add_argument("--langs", default=",".join(drascula.SPEECH_LANGUAGES), help="voices kept")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    summary = drascula.build_drascula(args.out, args.root, args.cache_dir, tuple(args.langs.split(",")), args.workers)
    print(format_clip_summary(summary))


def combine_main(argv: list[str] | None = None) -> None:
    """``mu2slam-combine``: one corpus folder from several (their rows of some tasks and target languages), train
    rows whose text is in any source's dev or test split left out; the audio stays where it is."""
    parser = argparse.ArgumentParser(description=combine_main.__doc__)
    parser.add_argument("sources", nargs="+", help="corpus folders (train/dev/test.jsonl)")
    parser.add_argument("--out", required=True, help="output corpus directory (new, or the same combination)")
    parser.add_argument("--tasks", help="comma-separated tasks kept, e.g. mt or asr,ast (default: all)")
    parser.add_argument("--target-langs", help="comma-separated target languages kept, e.g. en (default: all)")
    args = parser.parse_args(argv)
    summary = combine_corpora(
        args.out,
        args.sources,
        tasks=args.tasks.split(",") if args.tasks else None,
        target_langs=args.target_langs.split(",") if args.target_langs else None,
    )
    print(format_summary(summary))
    print(f"train rows left out (their text is held out): {summary['held_out_text_dropped']}")
