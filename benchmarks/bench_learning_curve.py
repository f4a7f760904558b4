"""Learning curves: dev CER against training minutes (and steps), the instrument that chooses training defaults.

(ii) ASR only, from scratch, on a corpus folder (JSONL manifests ``train.jsonl`` / ``dev.jsonl``):
  - ours: ``mu2slam_hf.training.train`` with configuration/recipes/asr-scratch-small.yaml (`small` preset, joint
    CTC/attention, char tokenizer, length-bucketed batches of 40 s of padded audio, AdamW). It stops after
    ``--minutes`` of training time (evaluation and saving not counted) and evaluates every ``--eval_interval``
    steps on the first ``--dev_examples`` dev clips: greedy CER of the attention decoder, of the CTC head and of
    joint CTC/attention decoding (CTC weight 0.3). At the end, the run fits the recipe's character n-gram LM to its
    train text (when dev chose the CTC head) and the final model's CTC beam search with it is scored on the same
    clips (``ctc+lm``, the last point only).
  - the peer: transformers' `ParakeetForCTC` (Conformer-CTC) of about the same size (hidden 256, 8 layers, FFN
    1024, 4 heads, 4x subsampling; no dropout, as our encoder) with its own `ParakeetFeatureExtractor` (log-mel
    computed once per clip, as our run caches its features), trained by the small loop below on the same train
    clips with the same character vocabulary (trained as the recipe trains it; the CTC blank is an extra id), the
    same batches (our `LengthBucketBatchSampler`, same seed, seconds per step and first-epoch order), AdamW with
    the recipe's peak lr, warmup, schedule, betas, weight decay, clipping and speed perturbation, for the same
    training minutes; greedy CTC CER on the same dev clips at the same step intervals (`char_error_rate`).
  ``--jobs 2`` (default) trains both at once in two processes with ``--threads`` threads each (default: the cores
  split between the jobs, one each on 2 cores); ``--jobs 1`` trains them one after the other with all the cores.
  Both always get the same thread count, so their minutes are comparable, the same memory allocator (tcmalloc when
  installed, as our training commands use on CPUs) and batches padded to the same multiple of frames (the recipe's
  ``dataloader.pad_to_multiple_of``: oneDNN compiles a kernel for every new shape).
(iii) ``--task mt``: text translation from scratch on a corpus folder of MT rows (e.g. the de->en rows of
  ``mu2slam-build-text``): our run with configuration/recipes/mt-scratch-small.yaml for ``--minutes`` (default
  60), dev NLL and greedy BLEU every ``--eval_interval`` steps (default 400) on the first ``--dev_examples`` pairs
  (default 200), then the final model's greedy BLEU and chrF on up to 400 test pairs. No peer runs here: per step,
  an equal-size `MarianMTModel` learned as fast as ours on the same batches (docs/results.md). ``--task ast``: the
  same for speech translation, with configuration/recipes/ast-scratch-small.yaml on a corpus folder of AST rows and
  the MT rows of the same pair (e.g. ``mu2slam-build-text --langs de --speech-hours 12``; defaults 60 minutes, dev
  every 250 steps on 64 clips, 400 test clips).
(i) ``--demo_dir runs/demo``: the dev CER points of the main demo job's ASR stages (``pt``, ``ft1``, ``ft2``,
  ``ft2-noisy``, whichever exist) against cumulative training minutes, from their ``dev_results.json``.

Prints the parameter counts, a table (steps, minutes, our CER by decoder, peer CER), the line
"ours (best decoder) / peer CER at <minutes> min: <ratio>", and, where the corpus has a ``test.jsonl``, the two
final models' CER on its ASR clips (ours with the decoder its dev chose, the peer greedy): scored once at the end,
since a dev split of a few clips gives a noisy ratio, and never used to choose anything. Writes
``learning_curve.png`` (CER against minutes and steps, log y) and ``learning_curve.json`` (every point) to
``--output_dir``, with the two runs' folders and logs (``ours/``, ``peer/``, ``ours.log``, ``peer.log``).

    python benchmarks/bench_learning_curve.py --data runs/exp/data/synth-en            # 15 min, both at once
    python benchmarks/bench_learning_curve.py --data runs/exp/data/synth --minutes 15 --eval_interval 100 \\
        --dev_examples 40 --jobs 2 --demo_dir runs/demo --output_dir runs/bench-learning-curve
    python benchmarks/bench_learning_curve.py --data runs/exp/data/synth-en --set ctc_loss_weight=0.5  # a recipe variant
    python benchmarks/bench_learning_curve.py --data runs/exp/data/synth-en --quick    # smoke run: tiny, 0.5 min
    python benchmarks/bench_learning_curve.py --task mt --data runs/mt/de-en --output_dir runs/bench-mt   # 60 min
    python benchmarks/bench_learning_curve.py --task ast --data runs/ast/de-en --output_dir runs/bench-ast  # 60 min

Asserts nothing. Other jobs on the machine slow both runs and so lower every curve against minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from mu2slam_hf.training.memory_allocator import use_fast_allocator

REPO = Path(__file__).resolve().parents[1]
RECIPES = {task: REPO / "configuration" / "recipes" / f"{task}-scratch-small.yaml" for task in ("asr", "mt", "ast")}
TINY_PRESET = "configuration/models/tiny"
DEFAULTS = {
    "asr": {"minutes": 15.0, "eval_interval": 100, "dev_examples": 40},
    "mt": {"minutes": 60.0, "eval_interval": 400, "dev_examples": 200},
    "ast": {"minutes": 60.0, "eval_interval": 250, "dev_examples": 64},
}
TRANSLATION_TASKS = ("mt", "ast")  # ours alone, scored by BLEU
TEST_EXAMPLES = {"mt": 400, "ast": 400}  # translation test pairs scored at the end
QUICK = {"minutes": 0.5, "eval_interval": 10, "dev_examples": 8}
# The quick preset's recipe changes beyond the model: fewer clips for the feature statistics, shorter decoding.
QUICK_OVERRIDES = {"model": TINY_PRESET, "speech_codebook.normalization_examples": 16, "eval_max_new_tokens": 32}
PEER_SIZES = {
    "full": {"hidden_size": 256, "num_hidden_layers": 8, "intermediate_size": 1024, "num_attention_heads": 4,
             "subsampling_conv_channels": 256},
    "quick": {"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128, "num_attention_heads": 4,
              "subsampling_conv_channels": 32},
}  # fmt: skip
# Regularisation as in our presets' encoders (no dropout, no SpecAugment in the recipe): runs of minutes underfit,
# and Parakeet's 0.1 defaults would only slow the peer down.
PEER_REGULARISATION = {"dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0, "layerdrop": 0.0}
DEMO_STAGES = (("pt", None), ("ft1", "pt"), ("ft2", "ft1"), ("ft2-noisy", "ft1"))  # (stage, the stage it starts from)
DECODERS = {"attention": "dev/asr_cer", "ctc": "dev/asr_cer_ctc", "joint": "dev/asr_cer_joint"}
PEER_KEY = "dev/asr_cer_ctc"


# ------------------------------------------------------------------------------------------------ options


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="corpus folder with train.jsonl and dev.jsonl (ASR or MT rows)")
    parser.add_argument(
        "--task",
        choices=("asr", *TRANSLATION_TASKS),
        default="asr",
        help="asr: ours and the peer; mt, ast: ours alone",
    )
    parser.add_argument("--output_dir", default="runs/bench-learning-curve")
    parser.add_argument("--minutes", type=float, help="training minutes per model (asr 15, mt/ast 60; --quick 0.5)")
    parser.add_argument(
        "--eval_interval", type=int, help="steps between dev evaluations (asr 100, mt 400, ast 250; --quick 10)"
    )
    parser.add_argument(
        "--dev_examples", type=int, help="dev clips or pairs evaluated (asr 40, mt 200, ast 64; --quick 8)"
    )
    parser.add_argument("--seconds_per_step", type=float, help="seconds of padded audio per batch (recipe: 40)")
    parser.add_argument("--jobs", type=int, choices=(1, 2), default=2, help="2: both models at once; 1: in turn")
    parser.add_argument("--threads", type=int, help="threads per model (default: the cores split between the jobs)")
    parser.add_argument("--demo_dir", help="the main demo job's folder (runs/demo): add its ASR stages' dev CER")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny models, 0.5 minutes each")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="a recipe key for both runs, as finetune.py's --set (the peer follows the optimizer and "
        "speed_perturbation keys)",
    )  # fmt: skip
    parser.add_argument("--child", choices=("ours", "peer"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else DEFAULTS[args.task]).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.threads is None:  # translation trains one run: it gets every core
        args.threads = max(1, (os.cpu_count() or 1) // (1 if args.task in TRANSLATION_TASKS else args.jobs))
    return args


def recipe_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe overrides (dotted keys) both models' runs are read from."""
    overrides = {
        "max_train_minutes": args.minutes,
        "eval_interval": args.eval_interval,
        "dev_examples_per_task": args.dev_examples,
        **(QUICK_OVERRIDES if args.quick else {}),
    }
    if args.seconds_per_step is not None:
        overrides["seconds_per_step.asr"] = args.seconds_per_step
    from mu2slam_hf.cli.train import parse_recipe_overrides

    return {**overrides, **parse_recipe_overrides(args.set)}


def load_benchmark_recipe(args: argparse.Namespace):
    from mu2slam_hf.training import load_recipe

    return load_recipe(RECIPES[args.task], recipe_overrides(args))


# ---------------------------------------------------------------------------------------------- ours


def train_ours(args: argparse.Namespace, output_dir: Path) -> dict[str, Any]:
    """Our run (``train``): writes output_dir/dev_results.json; returns the model's parameter count."""
    from mu2slam_hf import Mu2SlamConfig, Mu2SlamForConditionalGeneration
    from mu2slam_hf.training import train

    recipe = load_benchmark_recipe(args)
    train(recipe, args.data, str(output_dir), overwrite_output_dir=True, log_with=None, progress=False)
    with torch.device("meta"):
        model = Mu2SlamForConditionalGeneration(Mu2SlamConfig.from_pretrained(output_dir))
    return {"params": count_parameters(model), **final_model_cers(recipe, args.data, output_dir)}


def final_model_cers(recipe: Any, data: str, model_dir: Path) -> dict[str, float | None]:
    """CERs of the final model: ``ctc_lm_cer``, its CTC head with the character n-gram LM the run fitted, on the dev
    clips of the curve (None without a fitted LM); ``test_cer``, the decoder its run chose on dev, on the held-out
    test clips (None without a test split)."""
    from mu2slam_hf import Mu2SlamForConditionalGeneration, Mu2SlamProcessor
    from mu2slam_hf.evaluation import averages, evaluate_model
    from mu2slam_hf.training.loop import load_dev_examples

    model = Mu2SlamForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = Mu2SlamProcessor.from_pretrained(model_dir)

    def cer(examples: list[dict[str, Any]], **options: Any) -> float:
        # no length limit but the model's: the recipe's dev-time limit would cut long test transcripts
        results = evaluate_model(model, processor, examples, ("asr",), batch_size=recipe.eval_batch_size, **options)
        return averages(results, "asr")["cer"]

    fitted = (model_dir / "ctc_language_model_fit.json").exists()
    test = held_out_examples(data)
    return {
        "ctc_lm_cer": cer(load_dev_examples(recipe, data)["asr"], decoder="ctc") if fitted else None,
        "test_cer": cer(test) if test else None,  # the decoder its run chose on dev
        "test_clips": len(test),
    }


def held_out_examples(data: str, task: str = "asr", max_examples: int | None = None) -> list[dict[str, Any]]:
    """The corpus's test rows of ``task`` (``test.jsonl``; none without it; at most ``max_examples``): each final
    model is scored on them once, at the end, to read the dev curves against more examples than dev has. Nothing is
    chosen on them."""
    from mu2slam_hf.evaluation import load_examples

    path = Path(data) / "test.jsonl"
    return load_examples(data, "test", (task,), max_examples=max_examples) if path.exists() else []


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------- peer


def peer_model(text_vocab_size: int, quick: bool, seed: int) -> torch.nn.Module:
    """ParakeetForCTC over our text ids plus a separate blank (the last id, which Parakeet calls pad)."""
    from transformers import ParakeetCTCConfig, ParakeetEncoderConfig, ParakeetForCTC

    sizes = PEER_SIZES["quick" if quick else "full"]
    encoder = ParakeetEncoderConfig(**sizes, **PEER_REGULARISATION, subsampling_factor=4, num_mel_bins=80)
    config = ParakeetCTCConfig(vocab_size=text_vocab_size + 1, pad_token_id=text_vocab_size, encoder_config=encoder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ParakeetForCTC(config)


class PeerBatches:
    """Padded Parakeet batches of train clips: log-mel features computed once per clip and speed (as our run caches
    its features), CTC labels from our tokenizer (no eos; padding -100). With the recipe's ``speed_perturbation``,
    each clip is played at a factor drawn uniformly per clip, as in our run (from a generator of the recipe's seed)."""

    def __init__(
        self,
        rows: Any,
        tokenizer: Any,
        speed_perturbation: tuple[float, ...] = (),
        seed: int = 0,
        pad_to_multiple_of: int | None = None,
    ):
        from transformers import ParakeetFeatureExtractor

        self.rows, self.tokenizer, self.pad_to_multiple_of = rows, tokenizer, pad_to_multiple_of
        self.feature_extractor = ParakeetFeatureExtractor(feature_size=80)
        self.features: dict[tuple[int, float], torch.Tensor] = {}
        self.speed_perturbation = tuple(speed_perturbation)
        self.generator = torch.Generator().manual_seed(seed)

    def clip_features(self, index: int, factor: float) -> torch.Tensor:
        from mu2slam_hf.data.audio import decode_example, speed_perturb

        if (index, factor) not in self.features:
            example = decode_example(self.rows[index])
            audio = {**example["audio"], "array": speed_perturb(example["audio"]["array"], factor)}
            self.features[index, factor] = features_of(self.feature_extractor, [{**example, "audio": audio}])[0]
        return self.features[index, factor]

    def factors(self, count: int) -> list[float]:
        from mu2slam_hf.data.audio import draw_speed_factors

        return draw_speed_factors(self.speed_perturbation, count, self.generator)

    def __call__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        features = [self.clip_features(i, f) for i, f in zip(indices, self.factors(len(indices)), strict=True)]
        texts = [self.rows[i]["target_text"] for i in indices]
        labels = self.tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
        return {
            **pad_features(features, self.pad_to_multiple_of),
            "labels": labels["input_ids"].masked_fill(labels["attention_mask"] == 0, -100),
        }


def features_of(feature_extractor: Any, examples: list[dict[str, Any]]) -> list[torch.Tensor]:
    """Each decoded example's (frames, mel) log-mel features, padding cut off."""
    arrays = [example["audio"]["array"] for example in examples]
    batch = feature_extractor(arrays, sampling_rate=16_000, return_tensors="pt")
    lengths = batch["attention_mask"].sum(-1).tolist()
    return [row[:length] for row, length in zip(batch["input_features"], lengths, strict=True)]


def pad_features(features: list[torch.Tensor], pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
    """(batch, frames, mel) features and their (batch, frames) mask; frames rounded up to ``pad_to_multiple_of``."""
    padded = torch.nn.utils.rnn.pad_sequence(features, batch_first=True)
    if pad_to_multiple_of:
        padded = torch.nn.functional.pad(padded, (0, 0, 0, -padded.shape[1] % pad_to_multiple_of))
    lengths = torch.tensor([len(f) for f in features])
    return {"input_features": padded, "attention_mask": torch.arange(padded.shape[1])[None] < lengths[:, None]}


def endless_batches(recipe: Any, rows: Any) -> Iterator[list[int]]:
    """Our run's ASR batches in our order: the sampler and seed of `TaskMixture`, shortest first in epoch 0."""
    from mu2slam_hf.data.batching import LengthBucketBatchSampler, dataset_lengths

    seconds = recipe.seconds_per_step["asr"]
    sampler = LengthBucketBatchSampler(dataset_lengths(rows), max_tokens=int(seconds * 100), seed=recipe.seed)
    epoch = 0
    while True:
        yield from sampler.epoch_batches(epoch, shortest_first=recipe.shortest_first and epoch == 0)
        epoch += 1


def autocast_dtype(recipe: Any) -> torch.dtype | None:
    """The recipe's precision as our run resolves it (``auto``: bf16 where it is fast)."""
    from mu2slam_hf.training.loop import auto_mixed_precision

    precision = auto_mixed_precision()[0] if recipe.mixed_precision == "auto" else recipe.mixed_precision
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision or "no")


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


class PeerRun:
    """The peer's run: the clips, vocabulary, batches, optimizer, schedule and minutes of ours (see the module
    docstring). ``train`` writes ``dev_results.json`` entries ``step``, ``train_seconds``, ``dev/asr_cer_ctc`` and
    ``train_loss`` (mean since the previous evaluation)."""

    def __init__(self, recipe: Any, data_dir: str, quick: bool):
        from mu2slam_hf.data.audio import decode_example
        from mu2slam_hf.tokenization_mu2slam import train_tokenizer
        from mu2slam_hf.training import transformer_schedule
        from mu2slam_hf.training.assets import corpus_texts
        from mu2slam_hf.training.loop import build_optimizer, load_dev_examples, load_train_sources

        self.recipe = recipe
        rows = load_train_sources(recipe, data_dir)["asr"]  # the clips our run trains on (long ones dropped)
        self.tokenizer = train_tokenizer(recipe.tokenizer.kind, corpus_texts(list(rows)), recipe.tokenizer.vocab_size)
        self.dev = [decode_example(example) for example in load_dev_examples(recipe, data_dir)["asr"]]
        self.test = [decode_example(example) for example in held_out_examples(data_dir)]
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = peer_model(len(self.tokenizer), quick, recipe.seed).to(device).train()
        self.optimizer = build_optimizer(recipe, self.model, self.model.config.encoder_config.hidden_size)
        opt = recipe.optimizer
        self.scheduler = transformer_schedule(
            self.optimizer, opt.warmup_for(recipe.max_steps), recipe.max_steps, opt.decay
        )
        self.batches = endless_batches(recipe, rows)
        self.make_batch = PeerBatches(
            rows, self.tokenizer, tuple(recipe.speed_perturbation), recipe.seed, recipe.dataloader.pad_to_multiple_of
        )
        self.precision = autocast_dtype(recipe)

    def train(self, output_dir: Path) -> list[dict[str, float]]:
        from mu2slam_hf.training.checkpointing import write_json

        recipe, history, seconds, losses = self.recipe, [], 0.0, []
        output_dir.mkdir(parents=True, exist_ok=True)
        for step in range(1, recipe.max_steps + 1):
            start = time.perf_counter()
            losses.append(self.step(self.make_batch(next(self.batches))))
            seconds += time.perf_counter() - start
            last = step == recipe.max_steps or seconds >= 60 * recipe.max_train_minutes
            if step % recipe.eval_interval == 0 or last:
                cer = self.cer(self.dev)
                history.append({"step": step, "train_seconds": seconds, PEER_KEY: cer, "train_loss": mean(losses)})
                write_json(output_dir / "dev_results.json", history)
                print(
                    f"step {step} ({seconds / 60:.2f} min) loss {mean(losses):.3f} dev CTC CER {cer:.2f}", flush=True
                )
                losses = []
            if last:
                return history
        return history

    def step(self, batch: dict[str, torch.Tensor]) -> float:
        """One AdamW step (clipped as the recipe clips); the loss."""
        model, max_norm = self.model, self.recipe.optimizer.max_grad_norm
        with autocast(model.device, self.precision):
            loss = model(**{k: v.to(model.device) for k, v in batch.items()}).loss
        loss.backward()
        if max_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()

    @torch.no_grad()
    def cer(self, examples: list[dict[str, Any]]) -> float:
        """Greedy CTC CER (percent) on decoded ASR `examples`, in batches of the recipe's eval_batch_size."""
        from mu2slam_hf.ctc_decoding import ctc_greedy_decode
        from mu2slam_hf.evaluation import char_error_rate

        model, size = self.model.eval(), self.recipe.eval_batch_size
        hypotheses = []
        for start in range(0, len(examples), size):
            batch = pad_features(features_of(self.make_batch.feature_extractor, examples[start : start + size]))
            with autocast(model.device, self.precision):
                logits = model(**{k: v.to(model.device) for k, v in batch.items()}).logits
            lengths = model._get_subsampling_output_length(batch["attention_mask"].sum(-1))
            ids = ctc_greedy_decode(logits.float().cpu(), lengths, blank=model.config.pad_token_id)
            hypotheses += self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        model.train()
        return char_error_rate([example["target_text"] for example in examples], hypotheses)


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def train_peer(args: argparse.Namespace, output_dir: Path) -> dict[str, Any]:
    """The peer's run into output_dir; returns its parameter count and its final CER on the held-out test clips."""
    run = PeerRun(load_benchmark_recipe(args), args.data, args.quick)
    run.train(output_dir)
    test_cer = run.cer(run.test) if run.test else None
    return {"params": count_parameters(run.model), "test_cer": test_cer, "test_clips": len(run.test)}


# ------------------------------------------------------------------------------------ MT and AST (iii)


def train_ours_translation(args: argparse.Namespace, output_dir: Path) -> dict[str, Any]:
    """Our MT or AST run; returns the parameter count and the final model's greedy BLEU / chrF on the test pairs."""
    from mu2slam_hf import Mu2SlamForConditionalGeneration, Mu2SlamProcessor
    from mu2slam_hf.evaluation import averages, evaluate_model
    from mu2slam_hf.training import train

    recipe = load_benchmark_recipe(args)
    train(recipe, args.data, str(output_dir), overwrite_output_dir=True, log_with=None, progress=False)
    model = Mu2SlamForConditionalGeneration.from_pretrained(output_dir).eval()
    result: dict[str, Any] = {"params": count_parameters(model), "test_pairs": 0}
    test = held_out_examples(args.data, args.task, TEST_EXAMPLES[args.task])
    if test:
        processor = Mu2SlamProcessor.from_pretrained(output_dir)
        scores = averages(
            evaluate_model(model, processor, test, (args.task,), batch_size=recipe.eval_batch_size), args.task
        )
        result.update(test_pairs=len(test), **{f"test_{name}": mean_over_directions(scores, name) for name in
                                               ("bleu", "chrf")})  # fmt: skip
    return result


def mean_over_directions(scores: dict[str, float], metric: str) -> float | None:
    """The mean of ``metric`` over the directions of `averages` (keys ``"bleu xx-en"``, ``"bleu en-xx"``)."""
    values = [value for key, value in scores.items() if key.split()[0] == metric]
    return sum(values) / len(values) if values else None


def translation_points(history: list[dict[str, Any]], task: str) -> list[dict[str, Any]]:
    """``{"step", "minutes", "bleu", "nll"}`` of every evaluation with a dev BLEU of ``task``."""
    return [
        {"step": e["step"], "minutes": e["train_seconds"] / 60, "bleu": e[f"dev/{task}_bleu"],
         "nll": e.get(f"dev/loss/{task}")}
        for e in history
        if f"dev/{task}_bleu" in e and "train_seconds" in e
    ]  # fmt: skip


def plot_translation(points: list[dict[str, Any]], path: Path, title: str) -> None:
    """Dev BLEU and dev NLL against training minutes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    minutes = [p["minutes"] for p in points]
    for axis, key, label in ((axes[0], "bleu", "dev BLEU (greedy)"), (axes[1], "nll", "dev NLL (nats/token)")):
        axis.plot(minutes, [p[key] for p in points], marker="o", markersize=3)
        axis.set(xlabel="training minutes (evaluation excluded)", ylabel=label)
        axis.grid(True, alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main_translation(args: argparse.Namespace) -> None:
    """(iii): our MT or AST run, its table, learning_curve.png and learning_curve.json."""
    out, task = Path(args.output_dir), args.task
    print(f"training ours ({task.upper()}) for {args.minutes:g} min, {args.threads} thread(s); log in {out}/ours.log",
          flush=True)  # fmt: skip
    result = finish_child(args, "ours", start_child(args, "ours"))
    points = translation_points(read_history(out / "ours"), task)
    print(f"parameters: ours {result['params'] / 1e6:.2f}M")
    print(f"{'steps':>6} {'min':>6} {'dev NLL':>8} {'dev BLEU':>9}")
    for p in points:
        print(f"{p['step']:>6} {p['minutes']:>6.1f} {fmt(p['nll']):>8} {fmt(p['bleu'], 1):>9}")
    if result["test_pairs"]:
        print(f"test ({result['test_pairs']} pairs, the final model, greedy): BLEU {fmt(result['test_bleu'], 1)}, "
              f"chrF {fmt(result['test_chrf'], 1)}")  # fmt: skip
    title = f"{args.data}: {task.upper()}, {args.minutes:g} min, {args.threads} thread(s)"
    plot_translation(points, out / "learning_curve.png", title)
    summary = {"command": sys.argv, "task": task, "threads": args.threads, "minutes": args.minutes,
               "recipe_overrides": recipe_overrides(args), "params": {"ours": result["params"]},
               "test": {k: v for k, v in result.items() if k.startswith("test_")}, "points": {"ours": points}}  # fmt: skip
    (out / "learning_curve.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    print(f"wrote {out / 'learning_curve.png'} and {out / 'learning_curve.json'}")


# --------------------------------------------------------------------------------------------- running


def child(args: argparse.Namespace) -> None:
    """One model's run in this process; prints ``RESULT {json}``."""
    torch.set_num_threads(args.threads)
    ours = train_ours_translation if args.task in TRANSLATION_TASKS else train_ours
    run = {"ours": ours, "peer": train_peer}[args.child]
    result = run(args, Path(args.output_dir) / args.child)
    print("RESULT " + json.dumps(result), flush=True)


def child_command(args: argparse.Namespace, name: str) -> list[str]:
    command = [sys.executable, __file__, "--child", name, "--task", args.task, "--data", args.data,
               "--output_dir", args.output_dir,
               "--minutes", str(args.minutes), "--eval_interval", str(args.eval_interval),
               "--dev_examples", str(args.dev_examples), "--threads", str(args.threads)]  # fmt: skip
    if args.seconds_per_step is not None:
        command += ["--seconds_per_step", str(args.seconds_per_step)]
    for item in args.set:
        command += ["--set", item]
    return command + (["--quick"] if args.quick else [])


def start_child(args: argparse.Namespace, name: str) -> subprocess.Popen:
    """The run of ``name`` in a fresh process with ``args.threads`` threads, its output in <output_dir>/<name>.log."""
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false"}
    with open(Path(args.output_dir) / f"{name}.log", "w", encoding="utf-8") as log:  # the child keeps its own copy
        return subprocess.Popen(child_command(args, name), stdout=log, stderr=subprocess.STDOUT, env=env)


def finish_child(args: argparse.Namespace, name: str, process: subprocess.Popen) -> dict[str, Any]:
    """Wait for the run; its RESULT, or exit with the tail of its log."""
    process.wait()
    text = (Path(args.output_dir) / f"{name}.log").read_text(encoding="utf-8")
    results = [line for line in text.splitlines() if line.startswith("RESULT ")]
    if process.returncode or not results:
        sys.exit(
            f"{name} failed (exit code {process.returncode}); end of {args.output_dir}/{name}.log:\n{text[-3000:]}"
        )
    return json.loads(results[-1][len("RESULT ") :])


def train_both(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Both runs, at once (--jobs 2) or one after the other (--jobs 1)."""
    if args.jobs == 2:
        processes = {name: start_child(args, name) for name in ("ours", "peer")}
        return {name: finish_child(args, name, process) for name, process in processes.items()}
    return {name: finish_child(args, name, start_child(args, name)) for name in ("ours", "peer")}


# ---------------------------------------------------------------------------------------------- points


def read_history(folder: Path) -> list[dict[str, Any]]:
    path = folder / "dev_results.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else []


def to_points(history: list[dict[str, Any]], keys: dict[str, str], offset_seconds: float = 0.0) -> list[dict]:
    """``{"step", "minutes", "cer": {decoder: value}}`` of every evaluation that has a CER and a training time."""
    points = []
    for entry in history:
        cer = {name: entry[key] for name, key in keys.items() if key in entry}
        if cer and "train_seconds" in entry:
            points.append(
                {"step": entry["step"], "minutes": (offset_seconds + entry["train_seconds"]) / 60, "cer": cer}
            )
    return points


def stage_seconds(folder: Path, history: list[dict[str, Any]]) -> float:
    """A finished stage's training seconds: its last log line's, else its last evaluation's."""
    log = folder / "train_log.jsonl"
    lines = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
    entries = [json.loads(line) for line in reversed(lines) if line.strip()] + history[::-1]
    return next((entry["train_seconds"] for entry in entries if "train_seconds" in entry), 0.0)


def demo_points(root: Path) -> dict[str, list[dict]]:
    """``demo/<stage>`` -> points of the demo's ASR stages, minutes counted from the start of pre-training."""
    ends: dict[str | None, float] = {None: 0.0}
    points = {}
    for stage, parent in DEMO_STAGES:
        folder, offset = root / stage, ends[parent]
        history = read_history(folder)
        ends[stage] = offset + (stage_seconds(folder, history) if history else 0.0)
        stage_points = to_points(history, DECODERS, offset)
        if stage_points:
            points[f"demo/{stage}"] = stage_points
    return points


# ---------------------------------------------------------------------------------------------- report


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(points: dict[str, list[dict]]) -> str:
    """One row per evaluated step: our minutes and CER by decoder beside the peer's minutes and CER; then the
    demo stages' rows."""
    ours = {p["step"]: p for p in points["ours"]}
    peer = {p["step"]: p for p in points["peer"]}
    lines = [
        f"{'run':<15} {'steps':>6} {'min':>6} {'att':>7} {'ctc':>7} {'joint':>7} {'ctc+lm':>7} | {'peer min':>8} "
        f"{'peer CER':>8}"
    ]
    for step in sorted(ours.keys() | peer.keys()):
        lines.append(row("scratch", step, ours.get(step), peer.get(step)))
    for run, stage_points in points.items():
        if run.startswith("demo/"):
            lines += [row(run, p["step"], p, None) for p in stage_points]
    return "\n".join(lines)


def row(run: str, step: int, ours: dict | None, peer: dict | None) -> str:
    cer = ours["cer"] if ours else {}
    return (
        f"{run:<15} {step:>6} {fmt(ours and ours['minutes']):>6} {fmt(cer.get('attention')):>7} "
        f"{fmt(cer.get('ctc')):>7} {fmt(cer.get('joint')):>7} {fmt(cer.get('ctc+lm')):>7} | "
        f"{fmt(peer and peer['minutes']):>8} "
        f"{fmt(peer and peer['cer']['ctc']):>8}"
    )


def final_comparison(points: dict[str, list[dict]]) -> dict[str, Any]:
    """Our best decoder's CER over the peer's, at each run's last evaluation (the end of its minutes)."""
    ours, peer = points["ours"][-1], points["peer"][-1]
    decoder = min(ours["cer"], key=ours["cer"].get)
    ratio = ours["cer"][decoder] / peer["cer"]["ctc"] if peer["cer"]["ctc"] else math.inf
    return {"decoder": decoder, "ours": ours, "peer": peer, "ratio": ratio}


def final_line(final: dict[str, Any]) -> str:
    ours, peer = final["ours"], final["peer"]
    return (
        f"ours (best decoder: {final['decoder']}) / peer CER at {ours['minutes']:.1f} min: "
        f"{ours['cer'][final['decoder']]:.2f} / {peer['cer']['ctc']:.2f} = {final['ratio']:.3f} "
        f"(ours step {ours['step']} at {ours['minutes']:.2f} min, peer step {peer['step']} at {peer['minutes']:.2f} min)"
    )


def test_comparison(results: dict[str, dict]) -> dict[str, Any] | None:
    """The final models' CERs on the held-out test clips (ours: the decoder its dev chose), or None without them."""
    ours, peer = results["ours"].get("test_cer"), results["peer"].get("test_cer")
    if ours is None or peer is None:
        return None
    return {
        "ours": ours,
        "peer": peer,
        "ratio": ours / peer if peer else math.inf,
        "clips": results["ours"]["test_clips"],
    }


def test_line(test: dict[str, Any], dev_decoder: str) -> str:
    return (
        f"held-out test ({test['clips']} clips, the final models; ours decoded as its dev chose, best dev decoder "
        f"{dev_decoder}): ours / peer CER {test['ours']:.2f} / {test['peer']:.2f} = {test['ratio']:.3f}"
    )


def plot(points: dict[str, list[dict]], path: Path, title: str) -> None:
    """CER against minutes (every run) and against steps (the two scratch runs), log y."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_minutes, by_steps) = plt.subplots(1, 2, figsize=(13, 5))
    for run, run_points in points.items():
        for decoder in ("attention", "ctc", "joint", "ctc+lm"):
            shown = [p for p in run_points if decoder in p["cer"]]
            if not shown:
                continue
            label = f"{run} {decoder}" if run != "peer" else "peer (Parakeet CTC)"
            style = {"marker": "o", "markersize": 3, "linestyle": "--" if run.startswith("demo/") else "-"}
            by_minutes.plot([p["minutes"] for p in shown], [p["cer"][decoder] for p in shown], label=label, **style)
            if not run.startswith("demo/"):
                by_steps.plot([p["step"] for p in shown], [p["cer"][decoder] for p in shown], label=label, **style)
    for axis, xlabel in ((by_minutes, "training minutes (evaluation excluded)"), (by_steps, "steps")):
        axis.set(xlabel=xlabel, ylabel="dev CER (%)", yscale="log")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def report(args: argparse.Namespace, results: dict[str, dict], points: dict[str, list[dict]]) -> None:
    out = Path(args.output_dir)
    print(f"parameters: ours {results['ours']['params'] / 1e6:.2f}M, peer {results['peer']['params'] / 1e6:.2f}M")
    print(table(points))
    final = final_comparison(points)
    print(final_line(final))
    test = test_comparison(results)
    if test:
        print(test_line(test, final["decoder"]))
    title = f"{args.data}: {args.minutes:g} min each, {args.jobs} job(s) x {args.threads} thread(s)"
    plot(points, out / "learning_curve.png", title)
    summary = {"command": sys.argv, "jobs": args.jobs, "threads": args.threads, "minutes": args.minutes,
               "recipe_overrides": recipe_overrides(args), "params": {k: v["params"] for k, v in results.items()},
               "final": final, "test": test, "points": points}  # fmt: skip
    (out / "learning_curve.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    print(f"wrote {out / 'learning_curve.png'} and {out / 'learning_curve.json'}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    if args.child:
        return child(args)
    if args.task in TRANSLATION_TASKS:
        return main_translation(args)
    if argv is None:  # a program: both runs inherit the allocator our training commands use on CPUs
        print(f"memory allocator: {use_fast_allocator(training_on_cpu=not torch.cuda.is_available())}", flush=True)
    order = "side by side" if args.jobs == 2 else "one after the other"
    print(f"training ours and the peer {order} for {args.minutes:g} min each, {args.threads} thread(s) each; "
          f"logs in {args.output_dir}/ours.log and peer.log", flush=True)  # fmt: skip
    results = train_both(args)
    out = Path(args.output_dir)
    points = {"ours": to_points(read_history(out / "ours"), DECODERS),
              "peer": to_points(read_history(out / "peer"), {"ctc": PEER_KEY})}  # fmt: skip
    if results["ours"].get("ctc_lm_cer") is not None and points["ours"]:
        points["ours"][-1]["cer"]["ctc+lm"] = results["ours"]["ctc_lm_cer"]  # the final model's, with its LM
    if args.demo_dir:
        points.update(demo_points(Path(args.demo_dir)))
    report(args, results, points)


if __name__ == "__main__":
    main()
