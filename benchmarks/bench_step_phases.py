"""Where a training step's time goes on the device of the machine it runs on (the GPU where there is one, else the CPU).

Our step is `Mu2SlamTrainer.train_step`, the real loop, on the ASR-from-scratch recipe (`asr-scratch-small.yaml`:
about 40 s of audio per step, the weight average, bf16 where `mixed_precision: auto` picks it). Printed:

1. seconds per step, timed without a profiler (the device synchronised before and after), and the same steps with
   SDPA's own kernel in every attention call (our model runs SDPA as matrix products in bf16 training on a CPU,
   where the CPU flash kernel's backward is slow), in alternating blocks;
2. host syncs per step (CUDA only: operations that make the host wait for the GPU, counted with
   `torch.cuda.set_sync_debug_mode`), each of which stalls the launch queue, and the lines of the package that
   issue them;
3. each phase of the step (`loop.STEP_PHASES`: draw, collate, forward, backward, loss tracking, gradient clipping,
   optimizer, weight average) in host milliseconds and device milliseconds per step, from `torch.profiler` (profiled
   steps run slower than the unprofiled ones of 1: compare the phases with each other), and the operators with
   the most host time of their own;
4. the ParakeetForCTC peer of the learning-curve benchmark on the same clips and batch budget, seconds per step,
   and the ratio.

A step whose host milliseconds are far above its device milliseconds is bound by Python and launches, not by the
GPU; on a CPU the two columns are the same work.

    python benchmarks/bench_step_phases.py --data <ASR corpus folder> [--steps 20] [--warmup 10] [--threads 4]
    python benchmarks/bench_step_phases.py --data <corpus> --quick      # tiny models, 2 steps: a smoke run

Prints figures (and writes them with --output); asserts nothing. Other jobs on the machine lower the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
RECIPE = REPO / "configuration" / "recipes" / "asr-scratch-small.yaml"
QUICK_OVERRIDES = {"model": "configuration/models/tiny", "speech_codebook.normalization_examples": 16}


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def seconds_per_step(step, first: int, count: int) -> float:
    """Mean seconds of ``step(n)`` for n in first .. first + count - 1, the device synchronised around them."""
    synchronize()
    start = time.perf_counter()
    for n in range(first, first + count):
        step(n)
    synchronize()
    return (time.perf_counter() - start) / count


def seconds_per_step_by_attention(step, first: int, count: int, block: int = 5) -> tuple[float, float]:
    """Seconds per step with the attention our model picks (`modeling_mu2slam.attention_function`: matrix products
    for SDPA in bf16 training on a CPU) and with SDPA's own kernel always, in alternating blocks of ``block`` steps
    (``count`` steps each), so that the machine's drift reaches both alike."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    import mu2slam_hf.modeling_mu2slam as modeling

    chosen = modeling.attention_function

    def sdpa_kernel(implementation: str, query: torch.Tensor):
        return ALL_ATTENTION_FUNCTIONS.get_interface(implementation, modeling.eager_attention_forward)

    totals = {chosen: 0.0, sdpa_kernel: 0.0}
    done = 0
    try:
        while done < count:
            size = min(block, count - done)
            for function in totals:
                modeling.attention_function = function
                totals[function] += seconds_per_step(step, first, size) * size
                first += size
            done += size
    finally:
        modeling.attention_function = chosen
    return totals[chosen] / count, totals[sdpa_kernel] / count


def host_syncs_per_step(step, first: int, count: int) -> tuple[float | None, dict[str, float]]:
    """Synchronising CUDA operations per step (None on a CPU), and per step at each line of the package (or of
    this benchmark) that issued one: ``{"path:line (function)": syncs per step}``, most first."""
    if not torch.cuda.is_available():
        return None, {}
    sites: Counter[str] = Counter()
    total = 0

    def record(message, category, filename, lineno, file=None, line=None) -> None:
        nonlocal total
        if "synchroniz" not in str(message):
            return
        total += 1
        sites[_innermost_own_frame()] += 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for n in range(first, first + count):
                step(n)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return total / count, {site: n / count for site, n in sites.most_common()}


def _innermost_own_frame() -> str:
    """The innermost frame of the current stack in this repository's code (the line that caused a sync)."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        path = Path(frame.filename)
        if REPO in path.parents and path.name != Path(__file__).name:
            return f"{path.relative_to(REPO)}:{frame.lineno} ({frame.name})"
    return "outside the package"


def phase_milliseconds(step, first: int, count: int) -> tuple[dict[str, dict[str, float]], list[dict[str, Any]]]:
    """{phase: {"host_ms", "device_ms"}} per step, from the profiler ranges "train_step/<phase>", and the operators
    with the most host time (`top_operators`)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as profiler:
        for n in range(first, first + count):
            step(n)
        synchronize()
    phases, events = {}, profiler.key_averages()
    for event in events:
        if event.key.startswith("train_step/"):
            device = getattr(event, "device_time_total", 0.0) if torch.cuda.is_available() else event.cpu_time_total
            phases[event.key.split("/", 1)[1]] = {
                "host_ms": event.cpu_time_total / 1000 / count,
                "device_ms": device / 1000 / count,
            }
    return phases, top_operators(events, count)


def top_operators(events, count: int, top: int = 12) -> list[dict[str, Any]]:
    """The operators with the most host time of their own per step, with their calls and device time per step."""
    operators = [e for e in events if not e.key.startswith(("train_step", "ProfilerStep"))]
    operators.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [
        {
            "name": e.key,
            "calls": e.count / count,
            "host_self_ms": e.self_cpu_time_total / 1000 / count,
            "device_self_ms": getattr(e, "self_device_time_total", 0.0) / 1000 / count,
        }
        for e in operators[:top]
    ]


def measure_ours(args: argparse.Namespace) -> dict[str, Any]:
    from bench_training import make_trainer

    from mu2slam_hf.training import LossTracker

    overrides = {"max_train_minutes": None, "ctc_language_model": None, "max_steps": 10**6}
    trainer = make_trainer(RECIPE, args.data, {**overrides, **(QUICK_OVERRIDES if args.quick else {})})
    tracker = LossTracker(trainer.accelerator.device)

    def step(n: int) -> None:
        trainer.train_step(n, tracker)

    for n in range(1, args.warmup + 1):
        step(n)
    first = args.warmup + 1
    chosen, sdpa_kernel = seconds_per_step_by_attention(step, first, args.steps)
    result = {
        "device": str(trainer.accelerator.device),
        "mixed_precision": trainer.accelerator.mixed_precision,
        "bf16_weights": trainer.bf16 is not None,
        "params": sum(p.numel() for p in trainer.model.parameters()),
        "seconds_per_step": chosen,
        "seconds_per_step_sdpa_kernel": sdpa_kernel,
    }
    first += 2 * args.steps
    result["host_syncs_per_step"], result["host_sync_sites"] = host_syncs_per_step(step, first, min(args.steps, 5))
    first += min(args.steps, 5)
    result["phases"], result["top_operators"] = phase_milliseconds(step, first, args.steps)
    return result


def measure_peer(args: argparse.Namespace) -> dict[str, Any]:
    from bench_learning_curve import PeerRun

    from mu2slam_hf.training import load_recipe

    recipe = load_recipe(RECIPE, {"max_train_minutes": None, **(QUICK_OVERRIDES if args.quick else {})})
    run = PeerRun(recipe, args.data, args.quick)

    def step(n: int) -> None:
        run.step(run.make_batch(next(run.batches)))

    for n in range(args.warmup):
        step(n)
    return {
        "params": sum(p.numel() for p in run.model.parameters()),
        "seconds_per_step": seconds_per_step(step, 0, args.steps),
    }


def report(ours: dict[str, Any], peer: dict[str, Any]) -> str:
    syncs = ours["host_syncs_per_step"]
    lines = [
        f"device {ours['device']}, precision {ours['mixed_precision']}, {torch.get_num_threads()} thread(s)",
        f"ours ({ours['params'] / 1e6:.2f}M): {1000 * ours['seconds_per_step']:.1f} ms/step"
        + ("" if syncs is None else f", {syncs:.1f} host syncs/step"),
        f"ours with SDPA's own kernel in every attention call: {1000 * ours['seconds_per_step_sdpa_kernel']:.1f} "
        f"ms/step (ours / that = {ours['seconds_per_step'] / ours['seconds_per_step_sdpa_kernel']:.2f})",
        f"peer ParakeetForCTC ({peer['params'] / 1e6:.2f}M): {1000 * peer['seconds_per_step']:.1f} ms/step; "
        f"ours / peer = {ours['seconds_per_step'] / peer['seconds_per_step']:.2f}",
        "",
        "| phase | host ms/step | device ms/step |",
        "|---|---:|---:|",
    ]
    for name, times in ours["phases"].items():
        lines.append(f"| {name} | {times['host_ms']:.1f} | {times['device_ms']:.1f} |")
    lines += ["", "| operator (own time) | calls/step | host ms/step | device ms/step |", "|---|---:|---:|---:|"]
    lines += [
        f"| {op['name'][:60]} | {op['calls']:.0f} | {op['host_self_ms']:.1f} | {op['device_self_ms']:.1f} |"
        for op in ours["top_operators"]
    ]
    if ours["host_sync_sites"]:
        lines += ["", "| where the host waits for the GPU | syncs/step |", "|---|---:|"]
        lines += [f"| {site} | {n:.1f} |" for site, n in ours["host_sync_sites"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="corpus folder with ASR rows (train.jsonl, dev.jsonl)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (and profiled steps)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (features cached, kernels chosen)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="tiny models: a smoke run")
    parser.add_argument("--output", help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ours, peer = measure_ours(args), measure_peer(args)
    print(report(ours, peer), flush=True)
    if args.output:
        Path(args.output).write_text(json.dumps({"ours": ours, "peer": peer}, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
