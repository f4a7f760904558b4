"""Training throughput, model FLOPs utilisation and memory of the Mu2SLAM training loop on the machine it runs on.

1. Matmul peak (fp32 2048^3 and bf16 1024^3, the configured threads): the denominator of MFU.
2. The `small` preset through `Mu2SlamTrainer.train_step` (the real loop: mixture -> instances -> per-layout
   forward/backward -> Adam) on a synthetic espeak-ng corpus, fp32 and bf16 autocast: seconds per step, speech
   seconds and text tokens per second, FLOPs per step (torch's FlopCounterMode on one step) and MFU.
3. Memory with and without gradient checkpointing (each in a fresh subprocess): peak RSS and the bytes of
   activations kept for backward (a saved-tensors hook).
4. One optimizer step of `base-char` (~0.7B) in bf16 with gradient checkpointing (fresh subprocess): time,
   peak RSS, whether it fits in the memory budget.

    python benchmarks/bench_training.py [--data data/synth] [--steps 6] [--threads 2] [--skip_base]

Prints figures; asserts nothing. Other jobs on the machine lower the figures.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SMALL_RECIPE = REPO / "configuration" / "recipes" / "pretrain-small.yaml"
BASE_RECIPE = REPO / "configuration" / "recipes" / "pretrain-base-char.yaml"


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 3) -> float:
    """Best GFLOP/s of a size^3 matmul in ``dtype``."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def make_trainer(recipe_path: Path, data: str, overrides: dict):
    from mu2slam_hf.training import Mu2SlamTrainer, load_recipe

    recipe = load_recipe(recipe_path, {"eval_interval": 10**9, "checkpoint_interval": 10**9, **overrides})
    output = tempfile.mkdtemp(prefix="bench-train-")
    atexit.register(shutil.rmtree, output, ignore_errors=True)  # the run folder only exists for the trainer
    trainer = Mu2SlamTrainer(recipe, data, output, log_with=None, progress=False)
    trainer.setup(resume=False)
    return trainer


def timed_steps(trainer, steps: int, warmup: int = 1) -> dict:
    """Seconds per step and throughput over ``steps`` steps after ``warmup``; FLOPs of one step."""
    from torch.utils.flop_counter import FlopCounterMode

    from mu2slam_hf.training import LossTracker

    tracker = LossTracker(trainer.accelerator.device)
    for step in range(1, warmup + 1):
        trainer.train_step(step, tracker)
    tracker.summary()
    start = time.perf_counter()
    for step in range(warmup + 1, warmup + steps + 1):
        trainer.train_step(step, tracker)
    seconds = (time.perf_counter() - start) / steps
    summary = tracker.summary()
    with FlopCounterMode(display=False) as counter:
        trainer.train_step(warmup + steps + 1, LossTracker(trainer.accelerator.device))
    return {
        "seconds_per_step": seconds,
        "speech_seconds_per_second": summary["speech_seconds"] / steps / seconds,
        "text_tokens_per_second": summary["text_tokens"] / steps / seconds,
        "flops_per_step": counter.get_total_flops(),
    }


def activation_bytes(trainer) -> int:
    """Bytes of distinct tensors saved for backward during one step's forwards (its largest group)."""
    from mu2slam_hf.instances import split_by_layout
    from mu2slam_hf.training import step_generator

    instances = trainer.builder.build(trainer.mixture.next_batch(), step_generator(0, 0, 10**6))
    largest = 0
    for group in split_by_layout(instances):
        batch = trainer.collator(group)
        seen: dict[int, int] = {}

        def pack(tensor, seen=seen):
            seen[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), trainer.accelerator.autocast():
            loss = trainer.model(**batch).loss
        loss.backward()
        trainer.optimizer.zero_grad(set_to_none=True)
        largest = max(largest, sum(seen.values()))
    return largest


def child(args: argparse.Namespace) -> None:
    """One measurement in this (fresh) process; prints one JSON line."""
    torch.set_num_threads(args.threads)
    overrides = json.loads(args.overrides)
    recipe = BASE_RECIPE if args.child == "base" else SMALL_RECIPE
    trainer = make_trainer(recipe, args.data, overrides)
    result = {"params": sum(p.numel() for p in trainer.model.parameters()), "rss_after_setup_gb": peak_rss_gb()}
    if args.child == "memory":
        result["activation_gb"] = activation_bytes(trainer) / 1024**3
        timed = timed_steps(trainer, 1, warmup=0)
        result["seconds_per_step"] = timed["seconds_per_step"]
    elif args.child == "base":
        from mu2slam_hf.training import LossTracker

        tracker = LossTracker(trainer.accelerator.device)
        start = time.perf_counter()
        trainer.train_step(1, tracker)
        result["seconds_per_step"] = time.perf_counter() - start
        summary = tracker.summary()
        result.update(
            loss=summary["loss"], speech_seconds=summary["speech_seconds"], text_tokens=summary["text_tokens"]
        )
    else:
        result.update(timed_steps(trainer, args.steps))
    result["peak_rss_gb"] = peak_rss_gb()
    print("RESULT " + json.dumps(result), flush=True)


def run_child(kind: str, args: argparse.Namespace, overrides: dict, timeout: int = 3600, steps: int = 0) -> dict:
    command = [sys.executable, __file__, "--child", kind, "--data", args.data, "--threads", str(args.threads),
               "--steps", str(steps or args.steps), "--overrides", json.dumps(overrides)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env={**os.environ})
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        return {"error": (done.stderr or done.stdout)[-1500:], "returncode": done.returncode}
    return json.loads(lines[-1][len("RESULT ") :])


def ensure_corpus(data: str | None) -> str:
    if data:
        return data
    from mu2slam_hf.data.synthetic import build_synthetic

    out = Path(tempfile.gettempdir()) / "bench-training-corpus"
    if not (out / "summary.json").exists():
        build_synthetic(str(out), ("en", "de", "fr"), num_numbers=120, use_fillets=False)
    return str(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="corpus folder (default: a small espeak-ng corpus built in /tmp)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--bf16_steps", type=int, default=1, help="timed bf16 steps (slow on AVX2-only CPUs)")
    parser.add_argument("--skip_base", action="store_true", help="skip the base-char step")
    parser.add_argument(
        "--base_precision", choices=("bf16", "fp32"), default="bf16",
        help="base-char step precision (bf16 matmuls are far slower than fp32 on CPUs without AVX512-BF16/AMX)",
    )  # fmt: skip
    parser.add_argument("--budget_gb", type=float, default=24.0)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.data = args.data or ensure_corpus(None)
        return child(args)
    args.data = ensure_corpus(args.data)
    torch.set_num_threads(args.threads)
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16, size=1024)}
    print(f"threads {args.threads}; matmul peak: fp32 {peaks['fp32']:.1f} GFLOP/s, bf16 {peaks['bf16']:.1f} GFLOP/s")
    print(f"corpus {args.data}; paper examples per step (speech 4, text 8, asr 1, ast 1, mt 1)")
    for precision, peak in (("fp32", peaks["fp32"]), ("bf16", peaks["bf16"])):
        overrides = {"mixed_precision": "no" if precision == "fp32" else "bf16"}
        r = run_child("throughput", args, overrides, steps=args.steps if precision == "fp32" else args.bf16_steps)
        if "error" in r:
            print(f"small {precision}: failed: {r['error']}")
            continue
        achieved = r["flops_per_step"] / r["seconds_per_step"] / 1e9
        print(
            f"small ({r['params'] / 1e6:.1f}M) {precision}: {r['seconds_per_step']:.2f} s/step, "
            f"{r['speech_seconds_per_second']:.1f} speech s/s, {r['text_tokens_per_second']:.0f} text tokens/s, "
            f"{r['flops_per_step'] / 1e9:.1f} GFLOP/step -> {achieved:.1f} GFLOP/s = MFU {100 * achieved / peak:.1f}% "
            f"of the {precision} peak"
        )
    for checkpointing in (False, True):
        r = run_child("memory", args, {"gradient_checkpointing": checkpointing})
        if "error" in r:
            print(f"small memory (checkpointing={checkpointing}): failed: {r['error']}")
            continue
        print(
            f"small fp32 gradient_checkpointing={checkpointing}: activations kept for backward "
            f"{r['activation_gb'] * 1024:.0f} MiB (largest layout group), peak RSS {r['peak_rss_gb']:.2f} GB, "
            f"{r['seconds_per_step']:.2f} s/step"
        )
    if not args.skip_base:
        precision = "bf16" if args.base_precision == "bf16" else "no"
        r = run_child("base", args, {"mixed_precision": precision, "gradient_checkpointing": True}, timeout=7200)
        if "error" in r:
            print(f"base-char bf16 + checkpointing: failed: {r['error']}")
        else:
            fits = "fits" if r["peak_rss_gb"] < args.budget_gb else "does NOT fit"
            print(
                f"base-char ({r['params'] / 1e6:.0f}M) one Adam step, {args.base_precision} + gradient checkpointing: "
                f"{r['seconds_per_step']:.1f} s, peak RSS {r['peak_rss_gb']:.1f} GB ({fits} in {args.budget_gb:.0f} GB); "
                f"batch {r['speech_seconds']:.1f} speech s + {r['text_tokens']:.0f} text tokens, loss {r['loss']:.2f}"
            )


if __name__ == "__main__":
    main()
