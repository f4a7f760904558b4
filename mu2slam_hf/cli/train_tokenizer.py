"""Train a Mu2SLAM text tokenizer (character level or Unigram) on text files, one example per line.

Example::

    python training_scripts/train_tokenizer.py --kind char --vocab_size 4096 --input corpus.en.txt corpus.de.txt \\
        --output_dir tokenizers/char

Prints the tokenizer's actual size: ``Mu2SlamConfig.text_vocab_size`` must equal it.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..tokenization_mu2slam import train_tokenizer


def read_lines(paths: Sequence[Path]) -> Iterator[str]:
    """Non-empty lines of UTF-8 text files, in order, without their newline."""
    for path in paths:
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    yield line.rstrip("\n")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kind", choices=("char", "unigram"), required=True, help="tokenizer model")
    parser.add_argument("--vocab_size", type=int, required=True, help="ids wanted, the 5 specials included")
    parser.add_argument("--input", type=Path, nargs="+", required=True, help="UTF-8 text files, one example a line")
    parser.add_argument("--output_dir", type=Path, required=True, help="where save_pretrained writes the tokenizer")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [str(path) for path in args.input if not path.is_file()]
    if missing:
        raise SystemExit(f"Input file(s) not found: {', '.join(missing)}")
    tokenizer = train_tokenizer(args.kind, read_lines(args.input), args.vocab_size)
    tokenizer.save_pretrained(args.output_dir)
    print(f"Saved a {args.kind} tokenizer of {len(tokenizer)} ids to {args.output_dir}.")
    print(f"Use Mu2SlamConfig(text_vocab_size={len(tokenizer)}).")
    return 0
