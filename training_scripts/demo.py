"""The end-to-end Mu2SLAM demo: data -> pre-training -> gradual + noisy fine-tuning -> evaluation -> pipeline().

    python training_scripts/demo.py --output_dir runs/demo            # under 30 minutes on 2 CPU cores
    python training_scripts/demo.py --output_dir runs/quick --quick   # a few minutes: tiny model, few steps

1. builds a synthetic multilingual corpus with espeak-ng (8 languages, all five data types) and the real-speech
   benchmark (Czech and Dutch voice acting from Debian's Fish Fillets NG packages);
2. pre-trains the `small` preset with every Mu2SLAM objective (configuration/recipes/pretrain-small.yaml);
3. gradual fine-tuning: stage 1 on AST + ASR + MT without [MASK], then stage 2 on ASR (the synthetic and the real
   speech) with noisy fine-tuning (decoder-input synonym noise 0.06 + SpecAugment) for the minutes the plan has left;
   both with a CTC loss on the encoder (weight 0.3, 0.5 in stage 2) and batches of similar-length clips filled to a
   budget of seconds of audio; stage 2 ends with the CTC head's character n-gram LM;
4. evaluates ASR (WER/CER; joint CTC/attention decoding, and each decoder alone), AST and MT (BLEU/chrF) per
   language on the synthetic and the real test sets;
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
import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import torch

from mu2slam_hf import Mu2SlamForConditionalGeneration, Mu2SlamProcessor
from mu2slam_hf.data import combine_corpora, load_manifest
from mu2slam_hf.data.fillets import build_fillets, fetch_fillets, level_split
from mu2slam_hf.data.synthetic import build_synthetic
from mu2slam_hf.evaluation import (
    averages,
    char_error_rate,
    evaluate_model,
    load_examples,
    results_to_markdown,
    write_results,
)
from mu2slam_hf.training import load_recipe, train
from mu2slam_hf.training.dev import ASR_DECODER_CTC_WEIGHTS, JOINT_CTC_WEIGHT, dev_chosen_asr_decoding

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "configuration" / "recipes"
LANGUAGES = ("en", "de", "fr", "es", "it", "nl", "ru", "cs")

# Steps per stage; `--quick` scales everything down for a smoke run. Where the budget goes follows the measured
# learning curves (docs/results.md): ASR is learned by the encoder's CTC head long before the attention decoder
# follows it, and stage 2 keeps learning for thousands of steps, so stage 2 gets every minute the other steps leave.
# In the plans with `stage2_until_minute`, stage 2 trains until that many minutes after the demo started (at most
# `stage2` steps): the steps a machine can afford, not a count tuned to one machine. Measured on 2 cores in fp32
# (dev evaluation included): pre-training 2.8 s/step, stage 1 2.6 s/step, stage 2 (20 s of audio) 0.3-0.5 s/step.
PLANS = {
    "demo": {"pretrain": 100, "stage1": 120, "stage2": 1500, "stage2_until_minute": 24.5},  # the README's main job
    "long": {"pretrain": 900, "stage1": 600, "stage2": 1500},  # docs/results.md
    "quick": {"pretrain": 12, "stage1": 8, "stage2": 6, "stage2_until_minute": 60.0},  # --quick (tests)
}
# `--compare` trains every stage 2 for `stage2` steps (equal budgets). A time-budgeted stage 2 warms up and starts
# SpecAugment at the steps a `stage2` of 1,500 would (10% and 30% of it), and stops at STAGE2_MAX_STEPS at the latest
# (about 10 epochs of the demo corpus, where English ASR from scratch stopped improving: a GPU's minutes would
# otherwise only over-fit it).
STAGE2_WARMUP_STEPS, STAGE2_SPEC_AUGMENT_FROM, STAGE2_MAX_STEPS = 150, 450, 6000
# One peak learning rate for every stage: on the learning curves (docs/results.md) 5e-4 learned CTC fastest;
# 1.5e-3 with a short warmup sat on the blank plateau for hundreds of steps, 2e-4 was slower.
PEAK_LR = 5e-4
# Seconds of padded audio per step: stage 1 keeps the paper's AST 4 : ASR 2 : MT 2 ratio (clips of about 3 s).
STAGE1_BATCH = {"seconds_per_step": {"asr": 20.0, "ast": 40.0}, "examples_per_step": {"mt": 6}}
# Stage 2: 20 s of audio per step. ASR from scratch on all 8 languages, 12 minutes on one core: dev CER 39.0 with 20 s
# (1,011 steps) against 41.1 with 40 s (573 steps) and 39.2 with 10 s (1,843); 10 minutes: 45.0 with 40 s against 51.5
# with 60 s. In this under-fitted regime more updates beat larger ones, down to about 20 s.
STAGE2_BATCH = {"seconds_per_step": {"asr": 20.0}, "examples_per_step": {}}
# ASR fine-tuning (stage 2, and direct ASR in --compare) trains on the real Czech and Dutch voice acting beside the
# synthetic speech: the demo's stage 2 continued to 3,000 steps, real cs/nl dev CER 77.6 -> 58.1, synthetic 18.9 ->
# 21.2 (CTC head + LM; docs/results.md). Its tokenizer, built in pre-training from the synthetic text, gains the few
# characters only the real transcripts have (`extend_vocabulary`).
STAGE2_ASR_DATA = Path("data") / "synth+fillets-asr"
STAGE2_ASR = {**STAGE2_BATCH, "extend_vocabulary": True}


def log(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def build_data(root: Path, quick: bool) -> tuple[Path, Path]:
    """The synthetic and the real-speech corpus; writes both corpora's ASR rows to ``root / STAGE2_ASR_DATA``, the
    ASR fine-tuning data."""
    synth, fillets = root / "data" / "synth", root / "data" / "fillets"
    cache = root / "data" / "debian-cache"
    if not (synth / "summary.json").exists():
        log("building the synthetic corpus with espeak-ng")
        groups, numbers = (24, 8) if quick else (400, 100)
        # Every train sentence (861 a language instead of 442), the dev and test sets of the 400-group build.
        build_synthetic(str(synth), LANGUAGES, max_groups=groups, num_numbers=numbers, cache_dir=str(cache),
                        all_train_groups=not quick)  # fmt: skip
    if not (fillets / "summary.json").exists():
        log("building the real-speech benchmark (Fish Fillets NG, cs + nl)")
        build_fillets(str(fillets), cache_dir=str(cache), levels=_quick_levels(cache) if quick else None)
    combine_corpora(root / STAGE2_ASR_DATA, [synth, fillets], tasks=["asr"])
    return synth, fillets


def _quick_levels(cache: Path) -> list[str]:
    """Two levels of every split, so the quick run still has a train, dev and test set."""
    game = Path(fetch_fillets(str(cache)))
    by_split: dict[str, list[str]] = {}
    for level in sorted(p.name for p in (game / "script").iterdir() if p.is_dir()):
        by_split.setdefault(level_split(level), []).append(level)
    return [level for levels in by_split.values() for level in levels[:2]]


def stage_overrides(steps: int, quick: bool, **extra) -> dict:
    """Recipe overrides of one stage of ``steps`` steps: peak lr ``PEAK_LR`` after a warmup of 10% of the run,
    evaluation on dev and a checkpoint at the end (the learning curves come from the benchmark)."""
    overrides = {
        "max_steps": steps,
        "optimizer.lr": PEAK_LR,
        "optimizer.warmup_fraction": 0.1,
        "eval_interval": steps,
        "checkpoint_interval": steps,
        "keep_checkpoints": 1,
        "log_interval": 1 if quick else 10,
        "dev_examples_per_task": 4 if quick else 16,
    }
    if quick:
        overrides["model"] = str(REPO / "configuration" / "models" / "tiny")
    overrides.update(extra)
    return overrides


def run_stage(name: str, recipe_file: str, data: Path, output: Path, overrides: dict, progress: bool = True) -> Path:
    if (output / "model.safetensors").exists():
        log(f"{name}: already trained in {output}, skipping")
        return output
    log(f"{name}: {recipe_file} -> {output}")
    recipe = load_recipe(RECIPES / recipe_file, overrides)
    train(recipe, str(data), str(output), resume=True, progress=progress)
    return output


@dataclass(frozen=True)
class AsrDecoder:
    """One way to decode ASR: its options for `evaluate_model`, and the same decoder as `generate`'s `ctc_weight`
    (0 attention, 1 the CTC head), which also names its CER in a run's dev results; `language_model`: the CTC head's
    beam search with the model's character n-gram LM (its dev CER is in ctc_language_model_fit.json)."""

    name: str
    tag: str
    options: dict
    ctc_weight: float
    language_model: bool = False

    def dev_cer(self, model_dir: Path) -> float | None:
        if self.language_model:
            fit = model_dir / "ctc_language_model_fit.json"
            return json.loads(fit.read_text())["dev_cer"] if fit.exists() else None
        dev = json.loads((model_dir / "dev_results.json").read_text())[-1]
        return next((dev[key] for key, weight in ASR_DECODER_CTC_WEIGHTS.items() if weight == self.ctc_weight
                     and key in dev), None)  # fmt: skip


ASR_DECODERS = (
    AsrDecoder("attention", "attention", {"decoder": "attention", "ctc_weight": 0.0}, 0.0),
    AsrDecoder("CTC, greedy", "ctc", {"decoder": "ctc", "lm_weight": 0.0}, 1.0),
    AsrDecoder("CTC + n-gram LM, beam 8", "ctc_lm", {"decoder": "ctc"}, 1.0, language_model=True),
    AsrDecoder(f"joint ({JOINT_CTC_WEIGHT:g})", "joint", {"decoder": "attention", "ctc_weight": JOINT_CTC_WEIGHT},
               JOINT_CTC_WEIGHT),
)  # fmt: skip


def dev_chosen_decoder(model_dir: Path) -> AsrDecoder:
    """The model's default ASR decoder, which its run chose on dev, never on test (`generation_config.asr_ctc_weight`:
    the best greedy decoder of the last dev evaluation, or the CTC head with the run's n-gram LM where that was
    better; see `Mu2SlamTrainer.save_final`); joint decoding for a run without ASR dev results."""
    options = dev_chosen_asr_decoding(json.loads((model_dir / "generation_config.json").read_text()))
    return next(d for d in ASR_DECODERS if d.options == options)


def evaluate(
    model_dir: Path,
    data: Path,
    tasks: tuple[str, ...],
    max_examples: int,
    name: str,
    with_loss: bool = False,
    asr_decoder: AsrDecoder | None = None,
) -> dict:
    """Test-set metrics of one model, ASR by ``asr_decoder`` (default: the one its dev set chose), AST and MT by
    the attention decoder; written to ``<model_dir>/eval_<data>[_<decoder>].json``."""
    chosen = dev_chosen_decoder(model_dir)
    decoder = asr_decoder or chosen
    model = Mu2SlamForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = Mu2SlamProcessor.from_pretrained(model_dir)
    examples = load_examples(data, "test", tasks, max_examples)
    results = evaluate_model(
        model,
        processor,
        examples,
        tasks,
        batch_size=16,
        max_new_tokens=96,
        **decoder.options,
        with_loss=with_loss,
        model_name=f"{name} (ASR: {decoder.name} decoding)" if "asr" in tasks else name,
        data_name=data.name,
    )
    tag = "" if decoder == chosen else "_" + decoder.tag
    write_results(results, model_dir / f"eval_{data.name}{tag}.json")
    return results


def decoder_comparison(model_dir: Path, datasets: tuple[Path, ...], count: int) -> list[str]:
    """Markdown rows: dev CER (the last dev evaluation of the run) and test CER of each ASR decoder."""
    chosen = dev_chosen_decoder(model_dir)
    rows = ["| decoder | dev CER | " + " | ".join(f"test CER {data.name}" for data in datasets) + " |"]
    rows.append("|---|---:|" + "---:|" * len(datasets))
    fitted = (model_dir / "ctc_language_model_fit.json").exists()
    for decoder in ASR_DECODERS:
        if decoder.language_model and not fitted:
            continue
        tests = [averages(evaluate(model_dir, data, ("asr",), count, decoder.name, asr_decoder=decoder), "asr")["cer"]
                 for data in datasets]  # fmt: skip
        label = decoder.name + (" (chosen on dev)" if decoder == chosen else "")
        dev_cer = decoder.dev_cer(model_dir)
        dev_cer = "-" if dev_cer is None else f"{dev_cer:.1f}"
        rows.append(f"| {label} | {dev_cer} | " + " | ".join(f"{v:.1f}" for v in tests) + " |")
    return rows


def pipeline_samples(asr_model: Path, translation_model: Path, data: Path, count: int) -> list[dict]:
    """The ASR pipeline on the first test clip of ``count`` languages: transcribed by the ASR model with the decoder
    its dev set chose (through generate_kwargs), translated by the multi-task model."""
    from transformers import pipeline

    transcribe = pipeline("automatic-speech-recognition", model=str(asr_model))
    translate = pipeline("automatic-speech-recognition", model=str(translation_model))
    decoding = {"ctc_weight": dev_chosen_decoder(asr_model).ctc_weight}
    samples, seen = [], set()
    for example in load_manifest(data, "test", "ast"):
        if example["source_lang"] in seen or len(samples) >= count:
            continue
        seen.add(example["source_lang"])
        path = str(data / example["audio"]["path"])
        source, target = example["source_lang"], example["target_lang"]
        transcript = transcribe(path, generate_kwargs={"src_lang": source, "tgt_lang": source, **decoding})["text"]
        translation = translate(path, generate_kwargs={"src_lang": source, "tgt_lang": target})["text"]
        reference = example.get("source_text") or ""
        samples.append(
            {
                "audio": path,
                "direction": f"{source}-{target}",
                "reference transcript": reference,
                "transcript": transcript,
                "cer": char_error_rate([reference], [transcript]),
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


def write_report(
    root: Path, results: dict[str, dict], decoders: list[str], samples: list[dict], seconds: dict[str, float]
) -> Path:
    lines = ["# Mu2SLAM demo report", "", "Measured by `python training_scripts/demo.py`.", ""]
    lines += [f"Machine: {machine_summary()}.", ""]
    lines += ["## Time per step of the demo", "", "| step | minutes | optimizer steps |", "|---|---|---:|"]
    lines += [f"| {name} | {value / 60:.1f} | {trained_steps(root / FOLDERS[name]) if name in FOLDERS else ''} |"
              for name, value in seconds.items()]  # fmt: skip
    lines += [f"| total | {sum(seconds.values()) / 60:.1f} | |"]
    lines += ["", "## Loss curves", "", "![losses](losses.png)", ""]
    for title, result in results.items():
        tables = results_to_markdown(result).split("\n", 1)[1]  # drop its own title line
        lines += [f"## {title}", "", tables.replace("\n## ", "\n### "), ""]
    lines += ["## ASR decoders of the stage 2 model (CER, average over languages)", ""]
    lines += [
        "Each model decodes ASR with the decoder its last dev evaluation scored best (never chosen on test).",
        "",
    ]
    lines += [*decoders, ""]
    lines += [
        "## pipeline() on test audio",
        "",
        "| direction | transcript (reference) | CER | translation (reference) |",
    ]
    lines += ["|---|---|---:|---|"]
    for s in samples:
        lines.append(
            f"| {s['direction']} | {s['transcript']} ({s['reference transcript']}) | {s['cer']:.1f} "
            f"| {s['translation']} ({s['reference translation']}) |"
        )
    report = root / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report


def machine_summary() -> str:
    """CPU or GPU, threads and the precision the recipes' ``mixed_precision: auto`` resolves to here (and why)."""
    from mu2slam_hf.training.loop import auto_mixed_precision

    if torch.cuda.is_available():
        device = torch.cuda.get_device_name()
    else:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "unknown CPU") if Path("/proc/cpuinfo").exists() else "CPU"  # fmt: skip
        device = f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    precision, reason = auto_mixed_precision()
    return f"{device}; training precision {'fp32' if precision == 'no' else precision} ({reason})"


def trained_steps(folder: Path) -> int:
    """The last optimizer step of the run in ``folder`` (its train log)."""
    lines = (folder / "train_log.jsonl").read_text().splitlines()
    return json.loads(lines[-1])["step"]


@dataclass
class Stage:
    """One training run of the demo: ``recipe_file`` with ``overrides`` into ``output``, after the stages named
    in ``after`` (whose folders it starts from)."""

    name: str
    recipe_file: str
    output: Path
    overrides: dict
    after: tuple[str, ...] = ()
    train_until: float | None = None  # a time.monotonic() deadline: training stops there (max_train_minutes)
    data: Path | None = None  # its corpus, when not the demo's synthetic one

    def resolved_overrides(self) -> dict:
        """The overrides, with the training minutes left until ``train_until`` (at least one) as a time limit."""
        if self.train_until is None:
            return self.overrides
        return {**self.overrides, "max_train_minutes": max(1.0, (self.train_until - time.monotonic()) / 60)}


def _train_stage(stage: Stage, data: str, threads: int | None) -> float:
    """Train one stage (in a worker process when ``--jobs`` > 1) on its own data or ``data``; return its wall-clock
    seconds."""
    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    overrides = stage.resolved_overrides()
    if "max_train_minutes" in overrides:
        log(f"{stage.name}: {overrides['max_train_minutes']:.1f} minutes of training left in the plan")
    corpus = stage.data or Path(data)
    run_stage(stage.name, stage.recipe_file, corpus, stage.output, overrides, progress=threads is None)
    return time.perf_counter() - start


def run_stages(stages: list[Stage], data: Path, jobs: int) -> dict[str, float]:
    """Run the stages in dependency order, ``jobs`` at a time, each with ``cores // jobs`` threads.

    Returns each stage's wall-clock seconds. With ``jobs`` 1 the stages run here, one after the other, with progress
    bars; otherwise in worker processes, with a progress line per minute (several 1-thread runs use 2 CPU cores
    better than one 2-thread run of these small matrices: 1.27x the steps per second, measured on the small preset).
    """
    if jobs == 1:
        return {stage.name: _train_stage(stage, str(data), None) for stage in stages}
    threads = max(1, (os.cpu_count() or 1) // jobs)
    seconds: dict[str, float] = {}
    pending, running = list(stages), {}
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        while pending or running:
            for stage in [s for s in pending if all(name in seconds for name in s.after)][: jobs - len(running)]:
                pending.remove(stage)
                running[pool.submit(_train_stage, stage, str(data), threads)] = stage
            done, _ = wait(running, timeout=60, return_when=FIRST_COMPLETED)
            for future in done:
                stage = running.pop(future)
                seconds[stage.name] = future.result()
                log(f"{stage.name}: done in {seconds[stage.name] / 60:.1f} min")
            if not done:
                log(", ".join(_progress(stage) for stage in running.values()))
    return seconds


def _progress(stage: Stage) -> str:
    log_file = stage.output / "train_log.jsonl"
    lines = log_file.read_text().splitlines() if log_file.exists() else []
    return f"{stage.name} step {json.loads(lines[-1])['step'] if lines else 0}/{stage.overrides['max_steps']}"


def main_stages(root: Path, plan: dict, quick: bool, train_until: float | None = None) -> list[Stage]:
    """Pre-training (every objective), gradual stage 1 (AST + ASR + MT), and stage 2 ASR with noisy fine-tuning:
    ``plan["stage2"]`` steps, or, with ``train_until`` (a time.monotonic() deadline), as many as fit before it."""
    pt, ft1 = starting_from(root / "pt"), starting_from(root / "ft1")
    stage2 = stage_overrides(plan["stage2"], quick, **ft1, **STAGE2_ASR, **noisy(plan["stage2"]),
                             dev_examples_per_task=8 if quick else 40)  # fmt: skip
    if train_until is not None:
        steps = plan["stage2"] if quick else STAGE2_MAX_STEPS
        stage2.update(max_steps=steps, eval_interval=steps, checkpoint_interval=steps, spec_augment_from_step=
                      min(stage2["spec_augment_from_step"], STAGE2_SPEC_AUGMENT_FROM))  # fmt: skip
        stage2.update({"optimizer.warmup_fraction": None, "optimizer.warmup_steps": min(STAGE2_WARMUP_STEPS, steps)})
    return [
        Stage("pre-training", "pretrain-small.yaml", root / "pt", stage_overrides(plan["pretrain"], quick)),
        Stage("stage 1", "gradual-stage1.yaml", root / "ft1",
              stage_overrides(plan["stage1"], quick, **pt, **STAGE1_BATCH, ctc_ast_source=True), ("pre-training",)),
        Stage("stage 2 ASR noisy", "gradual-stage2-asr.yaml", root / "ft2-noisy", stage2, ("stage 1",), train_until,
              root / STAGE2_ASR_DATA),
    ]  # fmt: skip


def starting_from(folder: Path) -> dict:
    """Overrides that initialise a stage from a trained folder (its model and processor)."""
    return {"init_checkpoint": str(folder), "model": None}


def noisy(steps: int) -> dict:
    """Noisy fine-tuning (paper 2.4): decoder-input synonym noise 0.06 and SpecAugment, the latter only after the
    first 30% of the steps (augmenting before the model has started to learn slows it down)."""
    return {"model_overrides": NOISY, "spec_augment_from_step": int(0.3 * steps)}


FOLDERS = {"pre-training": "pt", "stage 1": "ft1", "stage 2 ASR noisy": "ft2-noisy"}
NOISY = {"decoder_noise_ratio": 0.06, "apply_spec_augment": True}


def compare_stages(root: Path, plan: dict, quick: bool, scratch_seeds: int = 1) -> list[Stage]:
    """(a) scratch on the labelled data (multi-task, as stage 1), (b) direct ASR / AST from the pre-trained model,
    (c) stage 2 ASR / AST from stage 1, (d) stage 2 AST + noisy; (d) for ASR is the main job's stage 2.

    Fine-tuning budgets are equal: (a) and (b) get stage 1 + stage 2 steps. ASR fine-tuning ((b), (c), (d)) trains on
    the synthetic and the real ASR data, as the main job's stage 2; (a) on the synthetic corpus, as stage 1 (so its
    real-speech figures measure transfer, not fine-tuning). (a) needs no pre-training, so its extra
    seeds (``scratch_seeds`` > 1: the seed noise of the comparison) fill the time a second job would otherwise wait
    for it.
    """
    budget = plan["stage1"] + plan["stage2"]
    model = str(REPO / "configuration" / "models" / ("tiny" if quick else "small"))
    pt, ft1 = starting_from(root / "pt"), starting_from(root / "ft1")
    folder = root / "compare"
    scratch = [
        Stage(scratch_name(seed), "gradual-stage1.yaml", scratch_folder(root, seed),
              stage_overrides(budget, quick, model=model, init_checkpoint=None, seed=seed, **STAGE1_BATCH,
                              ctc_ast_source=True))
        for seed in range(scratch_seeds)
    ]  # fmt: skip
    return scratch + [
        Stage("(b) direct ASR", "gradual-stage2-asr.yaml", folder / "direct-asr",
              stage_overrides(budget, quick, **pt, **STAGE2_ASR), ("pre-training",), data=root / STAGE2_ASR_DATA),
        Stage("(b) direct AST", "gradual-stage2-ast.yaml", folder / "direct-ast",
              stage_overrides(budget, quick, **pt), ("pre-training",)),
        Stage("(c) gradual ASR", "gradual-stage2-asr.yaml", root / "ft2",
              stage_overrides(plan["stage2"], quick, **ft1, **STAGE2_ASR), ("stage 1",), data=root / STAGE2_ASR_DATA),
        Stage("(c) gradual AST", "gradual-stage2-ast.yaml", folder / "gradual-ast",
              stage_overrides(plan["stage2"], quick, **ft1), ("stage 1",)),
        Stage("(d) gradual AST + noisy", "gradual-stage2-ast.yaml", folder / "gradual-ast-noisy",
              stage_overrides(plan["stage2"], quick, **ft1, **noisy(plan["stage2"])), ("stage 1",)),
    ]  # fmt: skip


def scratch_name(seed: int) -> str:
    return "(a) scratch" + (f", seed {seed}" if seed else "")


def scratch_folder(root: Path, seed: int) -> Path:
    return root / "compare" / ("scratch" + (f"-seed{seed}" if seed else ""))


def compared_models(root: Path, scratch_seeds: int = 1) -> dict[str, tuple[Path, tuple[str, ...]]]:
    """Configuration name -> (model folder, tasks it is evaluated on)."""
    compare = root / "compare"
    return {
        **{scratch_name(seed): (scratch_folder(root, seed), ("asr", "ast", "mt")) for seed in range(scratch_seeds)},
        "(b) direct ASR": (compare / "direct-asr", ("asr",)),
        "(b) direct AST": (compare / "direct-ast", ("ast",)),
        "(c) gradual ASR": (root / "ft2", ("asr",)),
        "(c) gradual AST": (compare / "gradual-ast", ("ast",)),
        "(c) stage 1 (MT)": (root / "ft1", ("mt",)),
        "(d) gradual ASR + noisy": (root / "ft2-noisy", ("asr",)),
        "(d) gradual AST + noisy": (compare / "gradual-ast-noisy", ("ast",)),
    }


def compare(root: Path, synth: Path, fillets: Path, plan: dict, count: int, scratch_seeds: int = 1) -> Path:
    """Evaluate (a)-(d) on both test sets (with the teacher-forced NLL) and write comparison.md."""
    rows = []
    for name, (folder, tasks) in compared_models(root, scratch_seeds).items():
        for data in (synth, fillets):
            data_tasks = tuple(task for task in tasks if task != "mt" or data == synth)  # no MT in Fish Fillets
            if not data_tasks:
                continue
            results = evaluate(folder, data, data_tasks, count, name, with_loss=True)
            rows += [(name, data.name, task, averages(results, task)) for task in data_tasks]
    lines = ["# Recipe comparison (measured by `python training_scripts/demo.py --compare`)", ""]
    lines += [
        f"Fine-tuning budget: {plan['stage1'] + plan['stage2']} steps for (a) and (b); (c)/(d) = stage 1 "
        f"({plan['stage1']}) + stage 2 ({plan['stage2']}) after {plan['pretrain']} pre-training steps. "
        f"Test subsets: the first {count} examples per task. Lower WER/CER/NLL, higher BLEU/chrF. NLL: teacher-forced "
        "nats per target token. Averages over languages (ASR) or over xx-en / en-xx directions.",
        "",
    ]
    lines += ["| configuration | test data | task | metrics |", "|---|---|---|---|"]
    for name, data, task, values in rows:
        shown = ", ".join(f"{k} {v:.2f}" if k.startswith("nll") else f"{k} {v:.1f}" for k, v in sorted(values.items()))
        lines.append(f"| {name} | {data} | {task} | {shown} |")
    path = root / "comparison.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output_dir", default="runs/demo")
    parser.add_argument("--quick", action="store_true", help="tiny model and a few steps (smoke run)")
    parser.add_argument("--plan", choices=sorted(PLANS), default="demo", help="step budgets (ignored with --quick)")
    parser.add_argument("--compare", action="store_true", help="also train and compare (a)-(d) (extra time)")
    parser.add_argument("--jobs", type=int, default=1, help="training runs at a time (each gets cores/jobs threads)")
    parser.add_argument("--scratch_seeds", type=int, default=1, help="--compare: train (a) with seeds 0..N-1")
    parser.add_argument("--test_examples", type=int, default=None, help="test examples per task (default 64)")
    args = parser.parse_args(argv)
    root = Path(args.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    plan = PLANS["quick" if args.quick else args.plan]
    count = args.test_examples or (8 if args.quick else 64)
    seconds: dict[str, float] = {}
    # --compare gives every stage 2 the same number of steps; the main job alone spends its minutes.
    until_minute = None if args.compare else plan.get("stage2_until_minute")
    train_until = None if until_minute is None else time.monotonic() + 60 * until_minute

    start = time.perf_counter()
    synth, fillets = build_data(root, args.quick)
    seconds["data"] = time.perf_counter() - start
    stages = main_stages(root, plan, args.quick, train_until) + (
        compare_stages(root, plan, args.quick, args.scratch_seeds) if args.compare else []
    )
    start = time.perf_counter()
    trained = run_stages(stages, synth, args.jobs)
    seconds.update((name, value) for name, value in trained.items() if name in FOLDERS)
    training_wall = time.perf_counter() - start

    log("evaluating")
    ft1, ft2 = root / "ft1", root / "ft2-noisy"
    results = {
        "Stage 1 model (AST, ASR, MT), synthetic test": (ft1, synth, ("asr", "ast", "mt")),
        "Stage 2 ASR (noisy fine-tuning), synthetic test": (ft2, synth, ("asr",)),
        "Stage 1 model, real speech test (Fish Fillets cs/nl)": (ft1, fillets, ("asr", "ast")),
        "Stage 2 ASR (noisy fine-tuning), real speech test": (ft2, fillets, ("asr",)),
    }
    start = time.perf_counter()
    results = {t: evaluate(m, d, k, count, t) for t, (m, d, k) in results.items()}
    decoders = decoder_comparison(ft2, (synth, fillets), count)
    seconds["evaluation"] = time.perf_counter() - start
    start = time.perf_counter()
    samples = pipeline_samples(ft2, ft1, synth, 6)
    seconds["pipeline()"] = time.perf_counter() - start
    plot_losses({name: root / folder for name, folder in FOLDERS.items()}, root / "losses.png")
    report = write_report(root, results, decoders, samples, seconds)
    log(f"done: {report}")
    print(report.read_text())
    if args.compare:
        start = time.perf_counter()
        comparison = compare(root, synth, fillets, plan, count, args.scratch_seeds)
        extra = sum(value for name, value in trained.items() if name not in FOLDERS)
        log(
            f"comparison: training wall {training_wall / 60:.1f} min for all stages (the runs beyond the main job "
            f"took {extra / 60:.1f} run-minutes), evaluation {(time.perf_counter() - start) / 60:.1f} min: {comparison}"
        )
        print(comparison.read_text())


if __name__ == "__main__":
    main()
