"""The training loop's data path: how fast audio is read and featurised into training instances with 0, 1 and 2
DataLoader worker processes (`dataloader.num_workers`), and the peak memory of one epoch over a large corpus with
features computed on the fly in workers against the in-memory feature cache (`cache_features`), and of the same
epoch read as a stream (`--streaming`: `StreamingTaskMixture`, a window of rows at a time).

The data path is the loop's own: a `TaskMixture` of length-bucketed ASR batches (`seconds_per_step`) whose draws an
`InstanceStream` builds with the fine-tuning `InstanceBuilder` of `--recipe`; no model runs, so the figures are the
data path's alone. Memory is the summed proportional set size (PSS, so pages the forked workers share with the
training process count once) of the process and its workers, sampled every 50 ms.

    python benchmarks/bench_streaming.py --corpus runs/demo/data/synth --hours 10 --scaled_dir runs/synth-10h

``--hours`` first writes a corpus of that many hours of training audio into ``--scaled_dir`` (reused when it is
there): the train ASR clips of ``--corpus``, speed-perturbed copies (factors 0.9-1.1, Kaldi-style) as FLAC files
until the hours are reached, every copy a file of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from mu2slam_hf.data import TaskMixture, TrainingData, load_manifest
from mu2slam_hf.data.audio import read_audio, speed_perturb, write_flac
from mu2slam_hf.data.manifest import write_manifest
from mu2slam_hf.data.mixing import step_budgets
from mu2slam_hf.data.streaming import StreamingTaskMixture
from mu2slam_hf.training import InstanceBuilder, InstanceStream, instance_loader, load_recipe
from mu2slam_hf.training.assets import build_processor, load_preset

SPEEDS = (1.0, 0.9, 1.1, 0.95, 1.05, 0.92, 1.08, 0.97, 1.03)


def _perturbed_copy(job: tuple[dict, float, str]) -> dict:
    row, speed, path = job
    audio = speed_perturb(read_audio(row["audio"]["path"]), speed)
    duration = write_flac(path, audio)
    copy = Path(path).parent.name
    return {**row, "id": f"{row['id']}-{copy}", "audio": {"path": path}, "duration": duration}


def scaled_corpus(corpus: str, out: str, hours: float, workers: int) -> str:
    """A train manifest of ``hours`` of speed-perturbed copies of ``corpus``'s train ASR clips, in ``out``."""
    out = os.path.abspath(out)
    manifest = os.path.join(out, "train.jsonl")
    if os.path.exists(manifest):
        return out
    rows = list(load_manifest(corpus, "train", "asr"))
    jobs, seconds, copy = [], 0.0, 0
    while seconds < hours * 3600:
        speed = SPEEDS[copy % len(SPEEDS)]
        for row in rows:
            jobs.append((row, speed, os.path.join(out, "audio", f"copy{copy}", f"{row['id']}.flac")))
            seconds += row["duration"] / speed
            if seconds >= hours * 3600:
                break
        copy += 1
    with ProcessPoolExecutor(workers) as pool:
        written = list(pool.map(_perturbed_copy, jobs, chunksize=64))
    write_manifest(manifest + ".tmp", written)
    os.replace(manifest + ".tmp", manifest)
    return out


def tree_pss_mib(pid: int) -> float:
    """Summed PSS of ``pid`` and its children (MiB)."""
    total, pids = 0, [pid]
    while pids:
        current = pids.pop()
        try:
            with open(f"/proc/{current}/smaps_rollup") as handle:
                total += next(int(line.split()[1]) for line in handle if line.startswith("Pss:"))
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as handle:
                    pids += [int(child) for child in handle.read().split()]
        except (OSError, StopIteration):
            continue
    return total / 1024


class PeakMemory:
    """Samples `tree_pss_mib` of this process in a thread; ``peak`` after the ``with`` block."""

    def __enter__(self):
        self.peak, self._done = tree_pss_mib(os.getpid()), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._done.wait(0.05):
            self.peak = max(self.peak, tree_pss_mib(os.getpid()))

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()


def run_draws(corpus: str, recipe_path: str, workers: int, cache: bool, draws: int | None, streaming: bool) -> dict:
    """Builds ``draws`` draws (None: one epoch of the ASR batches); audio seconds per second and peak memory.
    ``streaming``: the mixture of ``--streaming`` runs (the manifest read as a stream, a window at a time)."""
    recipe = load_recipe(recipe_path)
    sources = {"asr": load_manifest(corpus, "train", "asr")}
    examples = sources["asr"].select(range(min(2000, len(sources["asr"]))))
    processor, config = build_processor(recipe, load_preset(recipe), list(examples))
    del examples, sources  # a streaming run holds no table
    with PeakMemory() as memory:
        mixture = new_mixture(corpus, recipe, streaming)
        draws = draws or epoch_draws(new_mixture(corpus, recipe, streaming))
        builder = InstanceBuilder(processor, config, stage="finetune", cache_features=cache)
        start = time.perf_counter()
        loader = instance_loader(InstanceStream(mixture, builder, recipe.seed), workers)
        frames = sum(i.input_features.shape[0] for _ in range(draws) for i in next(loader).instances)
        seconds = time.perf_counter() - start
    return {
        "workers": workers,
        "feature_cache": cache,
        "streaming": streaming,
        "draws": draws,
        "audio_hours": round(frames / 100 / 3600, 3),
        "seconds": round(seconds, 1),
        "audio_seconds_per_second": round(frames / 100 / seconds, 1),
        "peak_pss_mib": round(memory.peak),
    }


def new_mixture(corpus: str, recipe, streaming: bool) -> TaskMixture | StreamingTaskMixture:
    """The loop's mixture of the corpus's ASR rows under the recipe's seconds per step."""
    budgets = step_budgets(recipe.seconds_per_step, {})
    if streaming:
        data = TrainingData(dataset_name=corpus, streaming=True)
        return StreamingTaskMixture({"asr": lambda: data.stream("train", "asr")}, budgets, seed=recipe.seed,
                                    window=recipe.dataloader.stream_window)  # fmt: skip
    sources = {"asr": load_manifest(corpus, "train", "asr")}
    return TaskMixture(sources, {}, {}, seed=recipe.seed, seconds_per_step=recipe.seconds_per_step)


def epoch_draws(mixture: TaskMixture | StreamingTaskMixture) -> int:
    """The draws of the first pass over the ASR rows (index draws only, no audio read)."""
    if isinstance(mixture, TaskMixture):
        return len(mixture.bucketed["asr"].epoch_batches(0))
    draws = 0
    while mixture.next_indices() and mixture.state_dict()["tasks"]["asr"]["pass"] == 0:
        draws += 1
    return draws


def in_fresh_process(corpus: str, recipe_path: str, workers: int, cache: bool, draws: int | None,
                     streaming: bool = False) -> dict:  # fmt: skip
    """`run_draws` in a new interpreter: memory an earlier measurement freed stays in a process's heap."""
    options = [f"--workers={workers}", f"--draws={draws or 0}", *(["--cache"] if cache else [])]
    options += ["--streaming"] if streaming else []
    command = [sys.executable, __file__, "--measure", "--corpus", corpus, "--recipe", recipe_path, *options]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True, help="a manifest folder with train ASR rows")
    parser.add_argument("--recipe", default="configuration/recipes/asr-scratch-small.yaml")
    parser.add_argument("--hours", type=float, help="first build a corpus of this many hours (see above)")
    parser.add_argument("--scaled_dir", help="where the --hours corpus goes (reused if built)")
    parser.add_argument("--throughput_draws", type=int, default=40, help="draws timed per worker count")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output", help="also write the results here (JSON)")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # one run_draws, in a subprocess
    parser.add_argument("--draws", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cache", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--streaming", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(run_draws(args.corpus, args.recipe, args.workers[0], args.cache, args.draws or None,
                                   args.streaming)))  # fmt: skip
        return
    corpus, results = args.corpus, {}
    if args.hours:
        start = time.perf_counter()
        corpus = scaled_corpus(args.corpus, args.scaled_dir, args.hours, max(args.workers))
        results["scaled_corpus_seconds"] = round(time.perf_counter() - start, 1)
    rows = load_manifest(corpus, "train", "asr")
    results["corpus"] = {"rows": len(rows), "hours": round(sum(rows["duration"]) / 3600, 2)}
    results["seconds_per_step"] = load_recipe(args.recipe).seconds_per_step
    results["throughput"] = [
        in_fresh_process(corpus, args.recipe, workers, False, args.throughput_draws) for workers in args.workers
    ]
    results["one_epoch"] = [
        in_fresh_process(corpus, args.recipe, 0, True, None),
        in_fresh_process(corpus, args.recipe, max(args.workers), False, None),
        in_fresh_process(corpus, args.recipe, max(args.workers), False, None, streaming=True),
    ]
    print(json.dumps(results, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
