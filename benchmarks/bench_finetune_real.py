"""Fine-tuning on a user's own recordings: a trained model against the same steps from scratch, on one real-speech
source left out of the model's training (leave one source out).

``--model``: a trained ASR folder, the main job's stage 2 (``runs/demo/ft2-noisy``). ``--data``: a corpus folder in
the project schema (e.g. one built by ``mu2slam-build-tuxpaint``) whose speech the model never trained on; its ASR
rows are used (``--languages``: only these source languages), train to train, dev to choose each run's decoder,
test to score. Three models are scored on the same test clips:

  - zero-shot: ``--model`` as it is, decoded as its own run chose on its dev set;
  - fine-tuned: ``--model`` trained ``--steps`` steps (400) on the train rows with the demo's stage 2 ASR recipe
    (configuration/recipes/gradual-stage2-asr.yaml with the overrides of training_scripts/demo.py: peak lr 5e-4
    after a warmup of 10% of the steps, 20 s of audio per step, noisy fine-tuning with SpecAugment from 30% of the
    steps, the CTC head's character n-gram LM fitted at the end, and the tokenizer extended with the characters of
    the new transcripts it cannot write, ``extend_vocabulary``);
  - scratch: the same run from random weights. Its starting folder has ``--model``'s config and processor (tokenizer,
    feature statistics, codebook) and random weights (seed 0), so the trained weights are the difference between
    the two runs, with one exception that favours scratch: its CTC head keeps one label slot a frame, as the demo's
    scratch ASR runs do (``SCRATCH_ASR``): a random head with the two slots the stage 2 recipe gives a trained head
    stays on the blank plateau, which would credit the trained weights with the recipe's choice.

Each fine-tuning run evaluates its dev split at the end and decodes test with the decoder it chose there (attention,
the CTC head, joint, or the CTC head with the n-gram LM it fitted to the train transcripts), as the demo does; the
table names it. Nothing is chosen on test. Prints a table (per language: minutes of train audio, test clips,
CER and WER of each model; then the average over languages), the ratio fine-tuned / scratch test CER and each run's
wall-clock minutes, and writes ``bench_finetune_real.json`` to ``--output_dir``, with the runs' folders
(``finetuned/``, ``scratch/``, ``scratch-init/``), the ASR corpus they trained on (``data/``) and each model's test
results (``eval_<model>.json`` / ``.md``). An output folder belongs to one run: a folder that holds anything is
refused.

    python benchmarks/bench_finetune_real.py --model runs/demo/ft2-noisy --data runs/demo/data/tuxpaint \\
        --output_dir runs/bench-finetune-real
    python benchmarks/bench_finetune_real.py --model runs/demo/ft2-noisy --data runs/demo/data/tuxpaint \\
        --languages fr,es --steps 200 --output_dir runs/bench-finetune-fr-es

Asserts nothing. Minutes are wall-clock on the machine it runs on; other jobs on it inflate them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from mu2slam_hf.training.memory_allocator import use_fast_allocator

REPO = Path(__file__).resolve().parents[1]
RECIPE = "gradual-stage2-asr.yaml"
RESULT_FILE = "bench_finetune_real.json"
RUNS = ("zero-shot", "fine-tuned", "scratch")
SPLITS = ("train", "dev", "test")


class BenchmarkError(SystemExit):
    """A clear error about the benchmark's inputs (exits with the message, no traceback)."""


def load_demo():
    """training_scripts/demo.py: its stage 2 ASR overrides and its dev-chosen decoder."""
    spec = importlib.util.spec_from_file_location("mu2slam_demo", REPO / "training_scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------------ options


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a trained model folder (e.g. runs/demo/ft2-noisy)")
    parser.add_argument("--data", required=True, help="a corpus folder with train.jsonl and test.jsonl ASR rows")
    parser.add_argument("--languages", help="comma-separated source languages of the corpus (default: all)")
    parser.add_argument("--steps", type=int, default=400, help="training steps of each run (default 400)")
    parser.add_argument("--test_examples", type=int, help="test clips scored, spread over languages (default: all)")
    parser.add_argument("--output_dir", default="runs/bench-finetune-real")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="a recipe key for both runs, as finetune.py's --set",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    args.languages = [code.strip() for code in args.languages.split(",") if code.strip()] if args.languages else None
    return args


# ------------------------------------------------------------------------------------------------- checks


def check_model(folder: Path) -> None:
    """A folder with a saved Mu2SLAM model and its processor, or a BenchmarkError saying what is missing."""
    if not folder.is_dir():
        raise BenchmarkError(f"--model {folder}: no such folder (a trained model folder, e.g. runs/demo/ft2-noisy)")
    config = folder / "config.json"
    if not config.exists():
        raise BenchmarkError(f"--model {folder} is not a model folder: it has no config.json")
    model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    if model_type != "mu2slam":
        raise BenchmarkError(f"--model {folder} holds a {model_type!r} model, not a Mu2SLAM one ('mu2slam')")
    weights = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
    if not any((folder / name).exists() for name in weights):
        raise BenchmarkError(f"--model {folder} is not a trained model: it has no weights ({', '.join(weights)})")
    if not (folder / "tokenizer.json").exists() or not (folder / "preprocessor_config.json").exists():
        raise BenchmarkError(f"--model {folder} has no processor (tokenizer.json, preprocessor_config.json)")


def asr_rows(data: Path, languages: list[str] | None) -> dict[str, list[dict[str, Any]]]:
    """The corpus's ASR rows of each split (``languages`` only), or a BenchmarkError: no train or test ASR rows, or
    languages the corpus has no ASR rows of."""
    from mu2slam_hf.data.manifest import ManifestError, read_manifest

    if not data.is_dir():
        raise BenchmarkError(f"--data {data}: no such folder (a corpus folder with train.jsonl and test.jsonl)")
    rows = {}
    for split in SPLITS:
        path = data / f"{split}.jsonl"
        try:
            rows[split] = [row for row in read_manifest(path) if row["task"] == "asr"] if path.exists() else []
        except ManifestError as error:
            raise BenchmarkError(f"--data {data}: {error}") from None
    for split in ("train", "test"):
        if not rows[split]:
            raise BenchmarkError(
                f"--data {data} has no ASR rows in {split}.jsonl: the benchmark trains on the train split's ASR rows "
                "and scores the test split's"
            )
    if languages:
        present = {split: {row["source_lang"] for row in rows[split]} for split in ("train", "test")}
        missing = {split: [code for code in languages if code not in present[split]] for split in present}
        if any(missing.values()):
            lacking = "; ".join(f"{split}: {', '.join(codes)}" for split, codes in missing.items() if codes)
            raise BenchmarkError(
                f"--languages: {data} has no ASR rows of {lacking} (its ASR languages: train "
                f"{', '.join(sorted(present['train']))}; test {', '.join(sorted(present['test']))})"
            )
        rows = {split: [row for row in split_rows if row["source_lang"] in languages]
                for split, split_rows in rows.items()}  # fmt: skip
    return rows


def claim_output_dir(folder: Path):
    """Lock ``folder`` for this run (`RunFolder`); refuse it if it holds anything: an output folder belongs to one
    run."""
    from mu2slam_hf.training.run_folder import LOCK_NAME, RunFolder, RunFolderError

    try:
        claim = RunFolder(folder)
    except RunFolderError as error:
        raise BenchmarkError(str(error)) from None
    held = sorted(path.name for path in folder.iterdir() if path.name != LOCK_NAME)
    if held:
        claim.release()
        raise BenchmarkError(
            f"{folder} already holds a run ({', '.join(held[:6])}{', ...' if len(held) > 6 else ''}): an output "
            "folder belongs to one run. Choose another --output_dir."
        )
    return claim


# ---------------------------------------------------------------------------------------------- the data


def clip_seconds(row: dict[str, Any]) -> float:
    """A clip's duration: its row's, else its audio file's."""
    if row.get("duration"):
        return float(row["duration"])
    import soundfile

    return soundfile.info(row["audio"]["path"]).duration


def write_asr_corpus(rows: dict[str, list[dict[str, Any]]], folder: Path) -> None:
    """The ASR rows as a corpus folder (absolute audio paths, no audio copied)."""
    from mu2slam_hf.data.manifest import summarize, write_manifest, write_summary

    folder.mkdir(parents=True)
    for split, split_rows in rows.items():
        if split_rows:
            write_manifest(folder / f"{split}.jsonl", split_rows)
    write_summary(folder, summarize({split: split_rows for split, split_rows in rows.items() if split_rows}))


def per_language(rows: list[dict[str, Any]], value) -> dict[str, float]:
    """``value(row)`` summed per source language (sorted), with ``"total"``."""
    sums: dict[str, float] = {}
    for row in rows:
        sums[row["source_lang"]] = sums.get(row["source_lang"], 0.0) + value(row)
    return {**dict(sorted(sums.items())), "total": sum(sums.values())}


# ---------------------------------------------------------------------------------------------- the runs


def recipe_overrides(demo, init: Path, args: argparse.Namespace, scratch: bool = False) -> dict[str, Any]:
    """The demo's stage 2 ASR overrides for ``args.steps`` steps from the folder ``init`` (``scratch``: with the
    demo's scratch ASR head, ``SCRATCH_ASR``), plus ``--set``."""
    from mu2slam_hf.cli.train import parse_recipe_overrides

    overrides = demo.asr_overrides(args.steps, False, **demo.starting_from(init), **demo.noisy(args.steps))
    return {**overrides, **(demo.SCRATCH_ASR if scratch else {}), **parse_recipe_overrides(args.set)}


def scratch_folder(model: Path, folder: Path, seed: int) -> Path:
    """``model``'s config and processor with random weights (drawn from ``seed``), saved to ``folder``."""
    from mu2slam_hf import Mu2SlamConfig, Mu2SlamProcessor
    from mu2slam_hf.training.assets import new_model

    new_model(Mu2SlamConfig.from_pretrained(model), seed).save_pretrained(folder)
    Mu2SlamProcessor.from_pretrained(model).save_pretrained(folder)
    return folder


def fine_tune(data: Path, output: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """One run of the recipe with ``overrides`` (`recipe_overrides`): its wall-clock minutes (setup, training, dev, the LM fit, saving) and
    its training minutes (the optimizer steps alone) and steps, from its log."""
    from mu2slam_hf.training import load_recipe, train

    recipe = load_recipe(REPO / "configuration" / "recipes" / RECIPE, overrides)
    start = time.perf_counter()
    train(recipe, str(data), str(output), log_with=None, progress=False)
    wall = time.perf_counter() - start
    last = json.loads((output / "train_log.jsonl").read_text(encoding="utf-8").splitlines()[-1])
    return {"folder": str(output), "run_minutes": wall / 60, "train_minutes": last["train_seconds"] / 60,
            "steps": last["step"]}  # fmt: skip


def score(demo, model_dir: Path, examples: list[dict[str, Any]], name: str, out: Path) -> dict[str, Any]:
    """Test CER and WER per language and averaged, decoded as the model's run chose on its dev set; the results
    written to ``out / eval_<name>.json``."""
    from mu2slam_hf import Mu2SlamForConditionalGeneration, Mu2SlamProcessor
    from mu2slam_hf.evaluation import averages, evaluate_model, write_results

    decoder = demo.dev_chosen_decoder(model_dir)
    start = time.perf_counter()
    model = Mu2SlamForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = Mu2SlamProcessor.from_pretrained(model_dir)
    results = evaluate_model(model, processor, examples, ("asr",), batch_size=16, **decoder.options,
                             model_name=f"{name} (ASR: {decoder.name} decoding)", data_name="test")  # fmt: skip
    write_results(results, out / f"eval_{name}.json")
    metrics = {"cer": {}, "wer": {}}
    for entry in results["metrics"]:
        metrics[entry["name"]][entry["source_lang"]] = entry["value"]
    mean = averages(results, "asr")
    return {"decoder": decoder.name, **metrics, "cer_average": mean["cer"], "wer_average": mean["wer"],
            "eval_minutes": (time.perf_counter() - start) / 60}  # fmt: skip


# --------------------------------------------------------------------------------------------- the report


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(summary: dict[str, Any]) -> str:
    """Per language: train minutes, test clips, CER and WER of each model; then the averages."""
    runs = summary["runs"]
    head = f"{'language':<9} {'train min':>9} {'test clips':>10}"
    head += "".join(f" {run + ' ' + metric.upper():>{max(13, len(run) + 4)}}" for metric in ("cer", "wer")
                    for run in RUNS)  # fmt: skip
    lines = [head]
    widths = [max(13, len(run) + 4) for _ in ("cer", "wer") for run in RUNS]
    for language in summary["languages"]:
        values = [runs[run][metric].get(language) for metric in ("cer", "wer") for run in RUNS]
        lines.append(
            f"{language:<9} {summary['train_audio_minutes'][language]:>9.1f} {summary['test_clips'][language]:>10}"
            + "".join(f" {fmt(value):>{width}}" for value, width in zip(values, widths, strict=True))
        )
    values = [runs[run][f"{metric}_average"] for metric in ("cer", "wer") for run in RUNS]
    lines.append(
        f"{'average':<9} {summary['train_audio_minutes']['total']:>9.1f} {summary['test_clips']['total']:>10}"
        + "".join(f" {fmt(value):>{width}}" for value, width in zip(values, widths, strict=True))
    )
    return "\n".join(lines)


def report_lines(summary: dict[str, Any]) -> list[str]:
    runs = summary["runs"]
    lines = [table(summary), ""]
    lines.append(
        f"fine-tuned / scratch test CER (average over languages): {fmt(runs['fine-tuned']['cer_average'], 2)} / "
        f"{fmt(runs['scratch']['cer_average'], 2)} = {fmt(summary['cer_ratio_finetuned_over_scratch'], 3)}"
    )
    for run in RUNS:
        r = runs[run]
        timing = (f"run {r['run_minutes']:.1f} min ({r['steps']} steps, {r['train_minutes']:.1f} min of them "
                  f"training), " if "run_minutes" in r else "")  # fmt: skip
        chosen = "the model's default ASR decoder" if run == "zero-shot" else "chosen on its dev split"
        lines.append(f"{run}: decoder {r['decoder']} ({chosen}); {timing}test scoring {r['eval_minutes']:.1f} min")
    return lines


def machine() -> str:
    """CPU model (or GPU), cores, threads."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()}"
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "CPU")
    return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if argv is None:  # a program (may re-execute itself first): the allocator our training commands use on CPUs
        print(f"memory allocator: {use_fast_allocator(training_on_cpu=not torch.cuda.is_available())}", flush=True)
    model, data, out = Path(args.model), Path(args.data), Path(args.output_dir)
    check_model(model)
    rows = asr_rows(data, args.languages)
    claim = claim_output_dir(out)
    from mu2slam_hf.evaluation import spread_over_languages

    demo = load_demo()
    corpus = out / "data"
    write_asr_corpus(rows, corpus)
    test = rows["test"] if args.test_examples is None else spread_over_languages(rows["test"], args.test_examples)
    languages = sorted({row["source_lang"] for row in rows["train"] + test})
    summary: dict[str, Any] = {
        "command": sys.argv if argv is None else ["bench_finetune_real.py", *argv],
        "machine": machine(),
        "model": str(model),
        "data": str(data),
        "languages": languages,
        "steps": args.steps,
        "recipe": RECIPE,
        "recipe_overrides": {},
        "train_audio_minutes": per_language(rows["train"], lambda row: clip_seconds(row) / 60),
        "train_clips": {k: int(v) for k, v in per_language(rows["train"], lambda row: 1).items()},
        "dev_clips": {k: int(v) for k, v in per_language(rows["dev"], lambda row: 1).items()},
        "test_clips": {k: int(v) for k, v in per_language(test, lambda row: 1).items()},
        "runs": {},
    }
    for language in languages:  # a test language without train rows: none of its speech was heard
        summary["train_audio_minutes"].setdefault(language, 0.0)
    print(f"train: {summary['train_clips']['total']} clips, {summary['train_audio_minutes']['total']:.1f} min of "
          f"audio; test: {len(test)} clips; languages {', '.join(languages)}", flush=True)  # fmt: skip
    print(f"zero-shot: scoring {model} on test", flush=True)
    summary["runs"]["zero-shot"] = score(demo, model, test, "zero-shot", out)
    starts = {"fine-tuned": model, "scratch": scratch_folder(model, out / "scratch-init", seed=0)}
    summary["recipe_overrides"] = {
        run: recipe_overrides(demo, start, args, scratch=run == "scratch") for run, start in starts.items()
    }  # fmt: skip
    for run, start in starts.items():
        folder = out / ("finetuned" if run == "fine-tuned" else "scratch")
        print(f"{run}: {args.steps} steps of {RECIPE} from {start} -> {folder}", flush=True)
        trained = fine_tune(corpus, folder, summary["recipe_overrides"][run])
        summary["runs"][run] = {**trained, **score(demo, folder, test, run, out)}
    fine_tuned, scratch = summary["runs"]["fine-tuned"]["cer_average"], summary["runs"]["scratch"]["cer_average"]
    summary["cer_ratio_finetuned_over_scratch"] = fine_tuned / scratch if scratch else None
    print(f"\n{summary['machine']}; {args.steps} steps each")
    print("\n".join(report_lines(summary)))
    (out / RESULT_FILE).write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {out / RESULT_FILE}")
    claim.release()


if __name__ == "__main__":
    main()
