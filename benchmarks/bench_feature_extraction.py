"""Log-mel feature extraction throughput: Mu2SlamFeatureExtractor vs transformers' Whisper and SeamlessM4T extractors.

Featurises one batch of 16 random 10 s clips at 16 kHz with every extractor, in one process, and prints seconds of
audio per second of wall time (best of ``--repeats`` runs after a warm-up) and the ratio to Whisper's numpy path.
Whisper pads to the longest clip here (``padding="longest"``), not to its default 30 s, so that every extractor
featurises the same 160 s of audio.

    python benchmarks/bench_feature_extraction.py [--batch_size 16] [--seconds 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
from transformers import SeamlessM4TFeatureExtractor, WhisperFeatureExtractor
from transformers.models.whisper import feature_extraction_whisper

from mu2slam_hf import Mu2SlamFeatureExtractor

SR = 16000


@contextlib.contextmanager
def whisper_numpy_path() -> Iterator[None]:
    """Whisper's extractor takes its torch path whenever torch is importable; hide torch to time its numpy path."""
    original = feature_extraction_whisper.is_torch_available
    feature_extraction_whisper.is_torch_available = lambda: False
    try:
        yield
    finally:
        feature_extraction_whisper.is_torch_available = original


def best_time(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up: allocator, FFT plans, lazy imports
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def candidates(clips: list[np.ndarray]) -> dict[str, Callable[[], object]]:
    ours, whisper, seamless = Mu2SlamFeatureExtractor(), WhisperFeatureExtractor(), SeamlessM4TFeatureExtractor()

    def whisper_numpy() -> object:
        with whisper_numpy_path():
            return whisper(clips, sampling_rate=SR, padding="longest", return_tensors="np")

    return {
        "Mu2Slam (torch)": lambda: ours(clips, sampling_rate=SR, return_tensors="pt"),
        "Mu2Slam (numpy)": lambda: ours(clips, sampling_rate=SR, return_tensors="np", backend="numpy"),
        "Whisper (numpy)": whisper_numpy,
        "Whisper (torch, device='cpu')": lambda: whisper(
            clips, sampling_rate=SR, padding="longest", return_tensors="pt", device="cpu"
        ),
        "SeamlessM4T (numpy)": lambda: seamless(clips, sampling_rate=SR, return_tensors="pt"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    clips = [(0.1 * rng.standard_normal(int(args.seconds * SR))).astype(np.float32) for _ in range(args.batch_size)]
    audio_seconds = args.batch_size * args.seconds
    print(
        f"{args.batch_size} x {args.seconds:g} s clips, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    timings = {name: best_time(run, args.repeats) for name, run in candidates(clips).items()}
    baseline = timings["Whisper (numpy)"]
    print(f"{'extractor':<32}{'time (s)':>10}{'audio s / s':>14}{'vs Whisper numpy':>18}")
    for name, seconds in timings.items():
        print(f"{name:<32}{seconds:>10.3f}{audio_seconds / seconds:>14.0f}{baseline / seconds:>17.1f}x")


if __name__ == "__main__":
    main()
