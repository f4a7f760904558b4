"""The end-to-end Mu2SLAM demo: data -> pre-training -> gradual + noisy fine-tuning -> evaluation -> pipeline().

    python training_scripts/demo.py --output_dir runs/demo            # about 20 minutes on 2 CPU cores
    python training_scripts/demo.py --output_dir runs/quick --quick   # a few minutes: tiny model, few steps

1. builds a synthetic multilingual corpus with espeak-ng (8 languages, all five data types) and the real-speech
   benchmark (Czech and Dutch voice acting from Debian's Fish Fillets NG packages);
2. pre-trains the `small` preset with every Mu2SLAM objective (configuration/recipes/pretrain-small.yaml);
3. gradual fine-tuning: stage 1 on AST + ASR + MT without [MASK], stage 2 on ASR, and stage 2 again with noisy
   fine-tuning (decoder-input synonym noise 0.06 + SpecAugment);
4. evaluates ASR (WER/CER), AST and MT (BLEU/chrF) per language on the synthetic and the real test sets;
5. transcribes and translates sample test audio through `pipeline("automatic-speech-recognition")`;
6. writes `report.md` with the tables and `losses.png` with the loss curves.

`--compare` then trains the configurations the paper compares, each with the same fine-tuning step budget, and
writes `comparison.md` (the paper's claims in miniature: pre-training helps, gradual beats direct, noise helps):
(a) from scratch on the labelled data only, (b) pre-trained + direct fine-tuning, (c) pre-trained + gradual,
(d) gradual + noisy; for ASR and for AST.

Step counts are far below the paper's: the point is a working, measured recipe on a laptop-sized budget.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from mu2slam_hf import Mu2SlamForConditionalGeneration, Mu2SlamProcessor
from mu2slam_hf.data import load_manifest
from mu2slam_hf.data.fillets import build_fillets, fetch_fillets, level_split
from mu2slam_hf.data.synthetic import build_synthetic
from mu2slam_hf.evaluation import evaluate_model, load_examples, results_to_markdown, write_results
from mu2slam_hf.training import load_recipe, train

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "configuration" / "recipes"
LANGUAGES = ("en", "de", "fr", "es", "it", "nl", "ru", "cs")

# (steps, warmup, eval interval) per stage; `--quick` scales everything down for a smoke run.
FULL_PLAN = {"pretrain": (300, 60, 300), "stage1": (200, 40, 200), "stage2": (100, 20, 100)}
QUICK_PLAN = {"pretrain": (12, 4, 12), "stage1": (8, 2, 8), "stage2": (6, 2, 6)}


def log(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def build_data(root: Path, quick: bool) -> tuple[Path, Path]:
    synth, fillets = root / "data" / "synth", root / "data" / "fillets"
    cache = root / "data" / "debian-cache"
    if not (synth / "summary.json").exists():
        log("building the synthetic corpus with espeak-ng")
        groups, numbers = (24, 8) if quick else (400, 100)
        build_synthetic(str(synth), LANGUAGES, max_groups=groups, num_numbers=numbers, cache_dir=str(cache))
    if not (fillets / "summary.json").exists():
        log("building the real-speech benchmark (Fish Fillets NG, cs + nl)")
        build_fillets(str(fillets), cache_dir=str(cache), levels=_quick_levels(cache) if quick else None)
    return synth, fillets


def _quick_levels(cache: Path) -> list[str]:
    """Two levels of every split, so the quick run still has a train, dev and test set."""
    game = Path(fetch_fillets(str(cache)))
    by_split: dict[str, list[str]] = {}
    for level in sorted(p.name for p in (game / "script").iterdir() if p.is_dir()):
        by_split.setdefault(level_split(level), []).append(level)
    return [level for levels in by_split.values() for level in levels[:2]]


def stage_overrides(plan: tuple[int, int, int], quick: bool, **extra) -> dict:
    steps, warmup, interval = plan
    overrides = {
        "max_steps": steps,
        "optimizer.warmup_steps": warmup,
        "eval_interval": interval,
        "checkpoint_interval": interval,
        "keep_checkpoints": 1,
        "log_interval": 1 if quick else 10,
        "dev_examples_per_task": 4 if quick else 16,
    }
    if quick:
        overrides["model"] = str(REPO / "configuration" / "models" / "tiny")
    overrides.update(extra)
    return overrides


def run_stage(name: str, recipe_file: str, data: Path, output: Path, overrides: dict) -> Path:
    if (output / "model.safetensors").exists():
        log(f"{name}: already trained in {output}, skipping")
        return output
    log(f"{name}: {recipe_file} -> {output}")
    recipe = load_recipe(RECIPES / recipe_file, overrides)
    train(recipe, str(data), str(output), resume=True)
    return output


def evaluate(model_dir: Path, data: Path, tasks: tuple[str, ...], max_examples: int, name: str) -> dict:
    model = Mu2SlamForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = Mu2SlamProcessor.from_pretrained(model_dir)
    examples = load_examples(data, "test", tasks, max_examples)
    results = evaluate_model(
        model, processor, examples, tasks, batch_size=16, max_new_tokens=96, model_name=name, data_name=data.name
    )
    write_results(results, model_dir / f"eval_{data.name}.json")
    return results


def pipeline_samples(model_dir: Path, data: Path, count: int) -> list[dict]:
    """Run the ASR pipeline (ASR and AST through generate_kwargs) on the first test clips of each language."""
    from transformers import pipeline

    asr = pipeline("automatic-speech-recognition", model=str(model_dir))
    samples, seen = [], set()
    for example in load_manifest(data, "test", "ast"):
        if example["source_lang"] in seen or len(samples) >= count:
            continue
        seen.add(example["source_lang"])
        path = str(data / example["audio"]["path"])
        source, target = example["source_lang"], example["target_lang"]
        transcript = asr(path, generate_kwargs={"src_lang": source, "tgt_lang": source})["text"]
        translation = asr(path, generate_kwargs={"src_lang": source, "tgt_lang": target})["text"]
        samples.append(
            {
                "audio": path,
                "direction": f"{source}-{target}",
                "reference transcript": example.get("source_text") or "",
                "transcript": transcript,
                "reference translation": example["target_text"],
                "translation": translation,
            }
        )
    return samples


def plot_losses(stages: dict[str, Path], output: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(stages), figsize=(5 * len(stages), 3.6), squeeze=False)
    for axis, (name, folder) in zip(axes[0], stages.items(), strict=True):
        entries = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines() if line]
        keys = sorted({k for e in entries for k in e if k.startswith("loss/")})
        for key in keys:
            points = [(e["step"], e[key]) for e in entries if key in e]
            axis.plot(*zip(*points, strict=True), label=key.removeprefix("loss/"))
        axis.set_title(name)
        axis.set_xlabel("step")
        axis.set_yscale("log")
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(output, dpi=110)
    return output


def write_report(root: Path, results: dict[str, dict], samples: list[dict], seconds: dict[str, float]) -> Path:
    lines = ["# Mu2SLAM demo report", "", "Measured by `python training_scripts/demo.py`.", ""]
    lines += ["## Time per step of the demo", "", "| step | minutes |", "|---|---|"]
    lines += [f"| {name} | {value / 60:.1f} |" for name, value in seconds.items()]
    lines += ["", "## Loss curves", "", "![losses](losses.png)", ""]
    for title, result in results.items():
        tables = results_to_markdown(result).split("\n", 1)[1]  # drop its own title line
        lines += [f"## {title}", "", tables.replace("\n## ", "\n### "), ""]
    lines += ["## pipeline() on test audio", "", "| direction | transcript (reference) | translation (reference) |"]
    lines += ["|---|---|---|"]
    for s in samples:
        lines.append(
            f"| {s['direction']} | {s['transcript']} ({s['reference transcript']}) "
            f"| {s['translation']} ({s['reference translation']}) |"
        )
    report = root / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report


def averages(results: dict, task: str) -> dict[str, float]:
    """Mean of each metric over the languages (ASR) or over xx-en / en-xx directions (AST, MT)."""
    groups: dict[str, list[float]] = {}
    for metric in results["metrics"]:
        if metric["task"] != task:
            continue
        direction = "" if task == "asr" else (" xx-en" if metric["target_lang"] == "en" else " en-xx")
        groups.setdefault(metric["name"] + direction, []).append(metric["value"])
    return {name: sum(values) / len(values) for name, values in groups.items()}


def compare(root: Path, synth: Path, fillets: Path, plan: dict, quick: bool, stages: dict[str, Path]) -> Path:
    """Train (a) scratch and (b) direct, stage 2 AST with and without noise; evaluate all; write comparison.md."""
    budget = (plan["stage1"][0] + plan["stage2"][0], plan["stage1"][1], plan["stage1"][0] + plan["stage2"][0])
    stage2 = plan["stage2"]
    small = str(REPO / "configuration" / "models" / ("tiny" if quick else "small"))
    noisy = {"decoder_noise_ratio": 0.06, "apply_spec_augment": True}
    pt, ft1 = {"init_checkpoint": str(stages["pt"])}, {"init_checkpoint": str(stages["ft1"])}
    runs = {  # name: (folder, recipe, (steps, warmup, eval interval), overrides, tasks evaluated)
        "(a) scratch": ("scratch", "gradual-stage1.yaml", budget, {"model": small, "init_checkpoint": None}),
        "(b) direct ASR": ("direct-asr", "gradual-stage2-asr.yaml", budget, pt),
        "(b) direct AST": ("direct-ast", "gradual-stage2-ast.yaml", budget, pt),
        "(c) gradual AST": ("gradual-ast", "gradual-stage2-ast.yaml", stage2, ft1),
        "(d) gradual AST + noisy": (
            "gradual-ast-noisy",
            "gradual-stage2-ast.yaml",
            stage2,
            {**ft1, "model_overrides": noisy},
        ),
    }
    folders = {"(c) gradual ASR": stages["ft2"], "(d) gradual ASR + noisy": stages["ft2-noisy"]}
    for name, (folder, recipe, steps, extra) in runs.items():
        overrides = stage_overrides(steps, quick, **{"model": None, **extra})
        folders[name] = run_stage(name, recipe, synth, root / "compare" / folder, overrides)
    count = 8 if quick else 64
    rows = []
    for name, folder in sorted(folders.items()):
        tasks = ("asr", "ast") if name.startswith("(a)") else (("ast",) if "AST" in name else ("asr",))
        for data in (synth, fillets):
            results = evaluate(folder, data, tasks, count, name)
            rows += [(name, data.name, task, averages(results, task)) for task in tasks]
    lines = ["# Recipe comparison (measured by `python training_scripts/demo.py --compare`)", ""]
    lines += [f"Fine-tuning budget: {budget[0]} steps for (a) and (b); (c)/(d) = stage 1 ({plan['stage1'][0]})"]
    lines += [
        f"+ stage 2 ({stage2[0]}). Test subsets: {count} examples per task. Lower WER/CER, higher BLEU/chrF.",
        "",
    ]
    lines += ["| configuration | test data | task | metrics |", "|---|---|---|---|"]
    for name, data, task, values in rows:
        shown = ", ".join(f"{k} {v:.1f}" for k, v in sorted(values.items()))
        lines.append(f"| {name} | {data} | {task} | {shown} |")
    path = root / "comparison.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output_dir", default="runs/demo")
    parser.add_argument("--quick", action="store_true", help="tiny model and a few steps (smoke run)")
    parser.add_argument("--compare", action="store_true", help="also train and compare (a)-(d) (extra time)")
    args = parser.parse_args(argv)
    root = Path(args.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    plan = QUICK_PLAN if args.quick else FULL_PLAN
    seconds: dict[str, float] = {}

    def timed(name, fn, *fn_args, **fn_kwargs):
        start = time.perf_counter()
        value = fn(*fn_args, **fn_kwargs)
        seconds[name] = time.perf_counter() - start
        return value

    synth, fillets = timed("data", build_data, root, args.quick)
    pt = timed("pre-training", run_stage, "pre-training", "pretrain-small.yaml", synth, root / "pt",
               stage_overrides(plan["pretrain"], args.quick))  # fmt: skip
    ft1 = timed("stage 1", run_stage, "gradual stage 1", "gradual-stage1.yaml", synth, root / "ft1",
                stage_overrides(plan["stage1"], args.quick, init_checkpoint=str(pt), model=None))  # fmt: skip
    ft2 = timed("stage 2 (ASR)", run_stage, "gradual stage 2 (ASR)", "gradual-stage2-asr.yaml", synth, root / "ft2",
                stage_overrides(plan["stage2"], args.quick, init_checkpoint=str(ft1), model=None))  # fmt: skip
    noisy = {"init_checkpoint": str(ft1), "model": None}
    noisy["model_overrides"] = {"decoder_noise_ratio": 0.06, "apply_spec_augment": True}
    ft2n = timed("stage 2 (ASR, noisy)", run_stage, "gradual stage 2 (ASR) + noisy", "gradual-stage2-asr.yaml", synth,
                 root / "ft2-noisy", stage_overrides(plan["stage2"], args.quick, **noisy))  # fmt: skip

    log("evaluating")
    count = 8 if args.quick else 64
    results = {
        "Stage 1 model (AST, ASR, MT), synthetic test": (ft1, synth, ("asr", "ast", "mt")),
        "Stage 2 ASR, synthetic test": (ft2, synth, ("asr",)),
        "Stage 2 ASR + noisy, synthetic test": (ft2n, synth, ("asr",)),
        "Stage 1 model, real speech test (Fish Fillets cs/nl)": (ft1, fillets, ("asr", "ast")),
        "Stage 2 ASR, real speech test": (ft2, fillets, ("asr",)),
    }
    results = timed("evaluation", lambda: {t: evaluate(m, d, k, count, t) for t, (m, d, k) in results.items()})
    samples = timed("pipeline()", pipeline_samples, ft1, synth, 3)
    stages = {"pre-training": pt, "stage 1": ft1, "stage 2 ASR": ft2, "stage 2 ASR noisy": ft2n}
    plot_losses(stages, root / "losses.png")
    report = write_report(root, results, samples, seconds)
    log(f"done in {sum(seconds.values()) / 60:.1f} min: {report}")
    print(report.read_text())
    if args.compare:
        stages = {"pt": pt, "ft1": ft1, "ft2": ft2, "ft2-noisy": ft2n}
        start = time.perf_counter()
        comparison = compare(root, synth, fillets, plan, args.quick, stages)
        log(f"comparison done in {(time.perf_counter() - start) / 60:.1f} min: {comparison}")
        print(comparison.read_text())


if __name__ == "__main__":
    main()
