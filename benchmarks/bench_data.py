"""Data pipeline benchmark: synthetic corpus build time, and padding waste and examples/second of
length-bucketed batching vs naive random batching (same frame budget) on the synthetic corpus.

    .venv/bin/python benchmarks/bench_data.py                       # builds a --small corpus in a temp dir
    .venv/bin/python benchmarks/bench_data.py --corpus data/synth   # an existing build (e.g. the full one)
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import tempfile
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from mu2slam_hf.data import LengthBucketBatchSampler, dataset_lengths, decode_example, load_manifest, padded_fraction
from mu2slam_hf.data.batching import random_batches
from mu2slam_hf.data.synthetic import SMALL, build_synthetic


def collate(examples: list[dict]) -> torch.Tensor:
    """Decodes and pads the audio of a batch into one float tensor (what a feature extractor would get)."""
    arrays = [decode_example(e)["audio"]["array"] for e in examples]
    batch = torch.zeros(len(arrays), max(len(a) for a in arrays))
    for row, array in zip(batch, arrays, strict=True):
        row[: len(array)] = torch.from_numpy(array)
    return batch


def throughput(dataset, batches: list[list[int]], max_batches: int, workers: int) -> float:
    loader = DataLoader(dataset, batch_sampler=batches[:max_batches], collate_fn=collate, num_workers=workers)
    start, count = time.time(), 0
    for batch in loader:
        count += batch.shape[0]
    return count / (time.time() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus", help="an existing synthetic corpus directory (default: build --small)")
    parser.add_argument("--max-tokens", type=int, default=6000, help="frame budget per batch (100 frames/s)")
    parser.add_argument("--batches", type=int, default=60, help="batches timed per method")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    results = {}
    corpus = args.corpus
    if corpus is None:
        corpus = tempfile.mkdtemp(prefix="bench_synth_")
        atexit.register(shutil.rmtree, corpus, ignore_errors=True)
        start = time.time()
        summary = build_synthetic(corpus, max_groups=SMALL["max_groups"], num_numbers=SMALL["num_numbers"])
        results["build_small_seconds"] = round(time.time() - start, 1)
        results["build_small_hours"] = summary["total_hours"]
    elif os.path.exists(os.path.join(corpus, "summary.json")):
        summary = json.load(open(os.path.join(corpus, "summary.json")))
        results["corpus_build_seconds"], results["corpus_hours"] = summary["build_seconds"], summary["total_hours"]
    for task in ("asr", "text"):
        dataset = load_manifest(corpus, "train", task=task)
        lengths = dataset_lengths(dataset)
        budget = args.max_tokens if task == "asr" else 2000
        bucketed = list(LengthBucketBatchSampler(lengths, budget, seed=0))
        naive = random_batches(lengths, budget, seed=0)
        results[task] = {
            "examples": len(dataset),
            "budget": budget,
            "batches_bucketed": len(bucketed),
            "batches_random": len(naive),
            "padded_fraction_bucketed": round(padded_fraction(bucketed, lengths), 4),
            "padded_fraction_random": round(padded_fraction(naive, lengths), 4),
        }
        if task == "asr":
            rng = np.random.default_rng(0)
            for name, batches in (("bucketed", bucketed), ("random", naive)):
                order = [batches[i] for i in rng.permutation(len(batches))]
                rate = throughput(dataset, order, args.batches, args.workers)
                results[task][f"examples_per_second_{name}"] = round(rate, 1)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
