"""The Accelerate training loop shared by pre-training and fine-tuning.

Each optimizer step, for each of ``gradient_accumulation_steps`` micro-steps: take the next draw of every task's
examples from the `TaskMixture`, built into instances (`InstanceStream`: in this process, or in
``dataloader.num_workers`` DataLoader worker processes, with the same result), group them by encoder layout
(`split_by_layout`), and run one forward + backward per group (gradients synchronised across processes only on the
last backward of the step).
Then clip, step Adam(W) and the Transformer schedule, log, evaluate on dev and checkpoint at their intervals.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from ..configuration_mu2slam import Mu2SlamConfig, Mu2SlamRetrievalConfig
from ..data.augmentation import AudioAugmentation
from ..data.batching import text_token_lengths
from ..data.manifest import held_out_texts, row_texts
from ..data.mixing import TaskMixture, step_budgets
from ..data.schema import SPEECH_TASKS
from ..data.streaming import StreamingTaskMixture, first_rows
from ..data.training_data import TrainingData
from ..instances import InstanceBuilder, Mu2SlamCollator, retrieval_pairs, split_by_layout, with_language_labels
from ..lora import add_lora
from ..processing_mu2slam import Mu2SlamProcessor
from ..vocabulary import IGNORE_INDEX
from .assets import (
    ConcatenatedRows,
    build_processor,
    extend_vocabulary,
    init_from_checkpoint,
    load_preset,
    merged_copy,
    new_model,
    replace_tokenizer,
    run_tokenizer,
)
from .averaging import WeightAverage
from .bf16_weights import Bf16Weights, use_bf16_weights
from .checkpointing import (
    TRAINER_STATE_NAME,
    checkpoint_train_seconds,
    latest_checkpoint,
    load_checkpoint,
    read_json,
    remove_stale_temporaries,
    save_checkpoint,
    write_json,
)
from .ctc_language_model import fit_ctc_language_model, language_model_text_rows, preferred_asr_ctc_weight
from .dev import (
    DevEvaluator,
    decoding_limit,
    dev_chosen_ctc_weight,
    dev_subset,
    warn_collapsed_encoder,
    write_dev_results,
)
from .instance_stream import InstanceStream, MixtureDraw, instance_loader
from .losses import LossTracker
from .preflight import (
    check_run_data,
    check_stream_rows,
    check_train_window,
    refuse_unknown_text,
    run_languages,
    warn_unknown_text,
)
from .recipe import Recipe, RecipeError
from .run_folder import RunFolder, claim_run_folder
from .schedule import peak_lr, transformer_schedule
from .translation_decoding import TRANSLATION_TASKS, choose_translation_decoding

logger = logging.getLogger(__name__)

# oneDNN runs bf16 matrix products and convolutions on CPUs and keeps the kernels it compiles per shape in a cache of
# 1,024 by default; a run's batches of varying length need more (the demo's stage 2 with 32-padded batches: 2,500
# kernels in 120 steps, about 150 KB each). oneDNN reads this once, at its first kernel, so it is set on import of the
# training loop; a value in the environment wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "4096")


@dataclass
class TrainingResult:
    """What `train` did: the last step, the per-step log and the dev evaluations (main process)."""

    step: int
    log: list[dict[str, float]] = field(default_factory=list)
    dev: list[dict[str, float]] = field(default_factory=list)
    output_dir: str = ""


CTC_LM_DEV_EXAMPLES = 80


STEP_PHASES = (
    "draw",
    "collate",
    "forward",
    "backward",
    "master_weights",
    "loss_tracking",
    "clip_grad_norm",
    "optimizer",
    "weight_average",
)


def phase(name: str) -> torch.profiler.record_function:
    """A training step's phase (one of STEP_PHASES) as a profiler range "train_step/<name>": free without a profiler;
    `benchmarks/bench_step_phases.py` sums the host and device time of each."""
    return torch.profiler.record_function(f"train_step/{name}")


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A collated batch on ``device``. To a GPU through pinned memory without waiting: a copy from ordinary memory
    makes the host wait until the GPU has finished the work queued before it, so the next step's launches stall."""
    if device.type != "cuda":
        return {key: value.to(device) for key, value in batch.items()}
    return {key: value.pin_memory().to(device, non_blocking=True) for key, value in batch.items()}


def make_accelerator(recipe: Recipe, output_dir: str | Path, log_with: str | None = "tensorboard") -> Accelerator:
    """Accelerator with the recipe's precision (None: the launcher's), TensorBoard logging under output_dir/logs."""
    # A multi-process launch (torchrun) on a machine without CUDA: gloo on the CPU (see configuration/accelerate/cpu_ddp.yaml).
    # Each run sets its own precision; the process group (PartialState) is kept.
    AcceleratorState._reset_state()
    cpu_only = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    precision = recipe.mixed_precision
    if precision == "auto":
        precision, reason = auto_mixed_precision()
        logger.warning("mixed_precision: auto -> %s (%s)", precision, reason)
    return Accelerator(
        cpu=cpu_only,
        mixed_precision=precision,
        log_with=log_with,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(Path(output_dir) / "logs")),
        # Text-only or speech-only groups leave parts of the model (front end, CTC head) without gradients.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


# bf16 autocast pays on a CPU only where its matrix products are clearly faster than fp32: the rest of a training
# step (norms, casts, the optimizer) does not speed up, so slower bf16 products make the whole step slower.
CPU_BF16_MIN_SPEEDUP = 1.5


@functools.cache
def auto_mixed_precision() -> tuple[str, str]:
    """("bf16" or "no", why): bf16 autocast where bf16 matrix products are fast, fp32 elsewhere.

    CUDA GPUs with bf16 support run it. On a CPU, AVX512-BF16 or AMX in the flags is necessary (elsewhere PyTorch
    emulates bf16, about 100x slower) but not sufficient: on some CPUs with AVX512-BF16, bf16 products run at half
    the speed of fp32. So a CPU with the flags is measured (:func:`cpu_bf16_speedup`, about 0.1 s, once per process)
    and gets bf16 only where its products are at least ``CPU_BF16_MIN_SPEEDUP`` times faster.
    """
    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return "bf16", f"CUDA device {torch.cuda.get_device_name()} supports bf16"
        return "no", "this CUDA device has no bf16"
    fast = sorted(cpu_flags() & {"avx512_bf16", "amx_bf16"})
    if not fast:
        return "no", "CPU without avx512_bf16/amx_bf16: bf16 would be emulated, far slower than fp32"
    speedup = cpu_bf16_speedup()
    measured = f"CPU flags {', '.join(fast)}; bf16 matrix products measured {speedup:.2f}x the speed of fp32"
    if speedup >= CPU_BF16_MIN_SPEEDUP:
        return "bf16", measured
    return "no", f"{measured}, under the {CPU_BF16_MIN_SPEEDUP}x that bf16 autocast needs to pay"


def cpu_bf16_speedup(size: int = 1024, repeats: int = 3) -> float:
    """fp32 time / bf16 time of a ``size``^3 matrix product on this CPU with the current threads (best of
    ``repeats`` after a warm-up call each)."""

    def best_seconds(dtype: torch.dtype) -> float:
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        a @ b
        timings = []
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            timings.append(time.perf_counter() - start)
        return min(timings)

    return best_seconds(torch.float32) / best_seconds(torch.bfloat16)


def cpu_flags() -> set[str]:
    """The CPU feature flags of the machine it runs on (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def load_train_sources(recipe: Recipe, data: str | os.PathLike | TrainingData) -> dict[str, Any]:
    """task -> train `datasets.Dataset` of every task with examples per step (long clips dropped)."""
    data = TrainingData.coerce(data)
    sources = {}
    limit = recipe.dataloader.max_audio_seconds
    for task in recipe.drawn_tasks():
        dataset = data.load(data.train_split_name, task)
        if limit and task in SPEECH_TASKS:
            dataset = dataset.filter(lambda d: d is None or d <= limit, input_columns="duration")
        if len(dataset) == 0:
            raise ValueError(f"{data}: no train examples of task {task!r}, which the recipe draws every step.")
        sources[task] = dataset
    return sources


def train_streams(recipe: Recipe, data: TrainingData, rank: int, world_size: int) -> dict[str, Any]:
    """task -> a function opening this process's stream of that task's train rows (long clips dropped)."""
    tasks = recipe.drawn_tasks()
    unbudgeted = sorted(set(tasks) - set(recipe.seconds_per_step) - set(recipe.tokens_per_step))
    if unbudgeted:
        raise RecipeError(
            f"--streaming batches every task by length, and the recipe draws {unbudgeted} by examples_per_step "
            f"(language sampling by temperature needs each language's size, which a stream does not tell ahead). "
            f"Give them seconds_per_step (speech tasks) or tokens_per_step (text tasks), or train without --streaming."
        )
    return {
        task: functools.partial(_open_train_stream, data, task, rank, world_size, recipe.dataloader.max_audio_seconds)
        for task in tasks
    }


def _open_train_stream(data: TrainingData, task: str, rank: int, world_size: int, limit: float | None):
    stream = data.stream(data.train_split_name, task, rank, world_size)
    if limit and task in SPEECH_TASKS:
        stream = stream.filter(lambda d: d is None or d <= limit, input_columns="duration")
    return stream


def first_windows(
    recipe: Recipe, data: TrainingData, streams: dict[str, Any], resume_from: Path | None
) -> dict[str, list[dict[str, Any]]]:
    """task -> the first ``stream_window`` train rows of each stream, checked: what a streaming run knows of its
    data before step 1 (a new tokenizer and the speech codebook's statistics are fit on them)."""
    languages, window = run_languages(recipe, resume_from), recipe.dataloader.stream_window
    sources = {}
    for task, open_stream in streams.items():
        rows = first_rows(open_stream(), window)
        if not rows:
            raise ValueError(f"{data}: no train examples of task {task!r}, which the recipe draws every step.")
        check_stream_rows(data, recipe.drawn_tasks(), languages, data.train_split_name, rows, 0)
        sources[task] = rows
    return sources


def load_dev_examples(
    recipe: Recipe, data: str | os.PathLike | TrainingData, languages: list[str] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """task -> the fixed dev subset (empty when the data has no eval split). ``languages``: the model's, which
    streamed rows are checked against (default: those the recipe names, see `run_languages`)."""
    rows = eval_rows(recipe, TrainingData.coerce(data), languages)
    return {
        task: dev_subset([row for row in rows if row["task"] == task], recipe.dev_examples_per_task)
        for task in recipe.drawn_tasks()
    } if rows else {}  # fmt: skip


def eval_rows(recipe: Recipe, data: TrainingData, languages: list[str] | None = None) -> list[dict[str, Any]]:
    """The rows of the eval split the dev subsets are taken from (none without one). Streaming data: the first
    ``stream_window`` rows of the eval split's stream, checked here against ``languages`` (the model's; default:
    the recipe's, see `run_languages`), as a stream is not checked ahead."""
    split = data.resolved_eval_split()
    if split is None:
        return []
    if not data.streaming:
        return list(data.load(split))
    rows = first_rows(data.stream(split), recipe.dataloader.stream_window)
    check_stream_rows(data, recipe.drawn_tasks(), languages or run_languages(recipe), split, rows, 0)
    return rows


def build_optimizer(recipe: Recipe, model: torch.nn.Module, d_model: int) -> torch.optim.Optimizer:
    """Adam / AdamW at the schedule's peak rate; weight decay on matrices only (not biases, norms, embeddings' 1-D)."""
    opt = recipe.optimizer
    lr = opt.lr if opt.lr is not None else peak_lr(d_model, opt.warmup_for(recipe.max_steps), opt.lr_scale)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": opt.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    cls = torch.optim.AdamW if opt.name == "adamw" else torch.optim.Adam
    # The fused kernel updates every tensor in one pass, faster than the per-parameter loop (docs/results.md); the
    # same update up to float rounding.
    return cls(groups, lr=lr, betas=tuple(opt.betas), eps=opt.eps, fused=True)


def refuse_other_features(recipe: Recipe, processor: Mu2SlamProcessor) -> None:
    """A ``features`` key that differs from the checkpoint's feature extractor: its model learned from other
    features, and fine-tuning it on these would start from a model that cannot hear them."""
    extractor = processor.feature_extractor
    for key, wanted in recipe.features.extractor_kwargs().items():
        saved = getattr(extractor, key)
        if wanted != saved:
            raise RecipeError(
                f"features.{key}: {wanted}, but {recipe.init_checkpoint} was trained with {key}={saved}: a "
                "fine-tuning run keeps its checkpoint's features. Remove the key, or pre-train a model with it."
            )


def prepare_model_and_processor(recipe: Recipe, sources: dict[str, Any], resume_from: Path | None):
    """(model, processor) of a new run, a fine-tuning run, or (architecture only) a resumed run."""
    retrieval = recipe.retrieval
    if resume_from is not None:
        processor = Mu2SlamProcessor.from_pretrained(resume_from)
        config_class = Mu2SlamRetrievalConfig if retrieval else Mu2SlamConfig
        model = new_model(config_class.from_pretrained(resume_from), recipe.seed, retrieval)  # weights: the state's
    elif recipe.init_checkpoint:
        model, processor = init_from_checkpoint(
            recipe.init_checkpoint, recipe.model_overrides, recipe.loss_weights, retrieval
        )
        refuse_other_features(recipe, processor)
        if recipe.tokenizer.replace:
            processor = replace_tokenizer(model, processor, run_tokenizer(recipe, ConcatenatedRows(sources.values())))
            logger.info("tokenizer.replace: %d text ids (%s) instead of the checkpoint's", len(processor.tokenizer),
                        recipe.tokenizer.path or recipe.tokenizer.kind)  # fmt: skip
    else:
        examples = ConcatenatedRows(sources.values())
        processor, config = build_processor(recipe, load_preset(recipe), examples)
        model = new_model(config, recipe.seed, retrieval)
    if resume_from is None and recipe.extend_vocabulary:
        characters, languages = extend_vocabulary(model, processor, list(sources.values()))
        logger.info("extend_vocabulary: added the characters %s and the languages %s", characters, languages)
    elif resume_from is None and recipe.init_checkpoint and not (recipe.language_id_only or recipe.retrieval):
        refuse_unknown_text(processor, sources.values(), recipe.init_checkpoint)
    if recipe.ctc_loss_weight is not None:
        model.config.ctc_loss_weight = recipe.ctc_loss_weight
    if recipe.language_id_weight:
        if model.language_id_head is None:
            model.add_language_id_head()
        model.config.language_id_loss_weight = recipe.language_id_weight
    if recipe.trainable_modules:
        train_only(model, recipe.trainable_modules)
    if recipe.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if recipe.lora.enabled:
        lora = recipe.lora
        model = add_lora(model, lora.r, lora.alpha, lora.dropout, lora.target_modules)
    return model, processor


def train_only(model: torch.nn.Module, prefixes: list[str]) -> None:
    """Freeze every parameter whose name starts with none of ``prefixes``; a prefix that names no parameter is a
    RecipeError listing the model's top-level modules."""
    names = [name for name, _ in model.named_parameters()]
    unmatched = [prefix for prefix in prefixes if not any(name.startswith(prefix) for name in names)]
    if unmatched:
        top = sorted({name.split(".")[0] for name in names})
        raise RecipeError(f"trainable_modules: {unmatched} name no parameter of the model; its modules are {top}.")
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(any(name.startswith(prefix) for prefix in prefixes))


class Mu2SlamTrainer:
    """One training run: ``Mu2SlamTrainer(recipe, data, output_dir).train(resume=...)``.

    Args:
        recipe: the validated recipe.
        data: a corpus folder of ``train.jsonl`` (and ``dev.jsonl``) manifests, or any `TrainingData`
            (a ``datasets`` folder or name, an audiofolder, CSV/TSV/JSONL tables).
        output_dir: checkpoints, logs, dev results and the final model + processor.
        log_with: Accelerate tracker ("tensorboard", or None for none).
        progress: show a tqdm bar with the per-task losses (main process).
    """

    def __init__(
        self,
        recipe: Recipe,
        data: str | os.PathLike | TrainingData,
        output_dir: str,
        log_with: str | None = "tensorboard",
        progress: bool = True,
    ):
        self.recipe, self.data, self.output_dir = recipe, TrainingData.coerce(data), Path(output_dir)
        self.accelerator = make_accelerator(recipe, output_dir, log_with)
        self.log_with, self.progress = log_with, progress
        self.run_folder: RunFolder | None = None  # the main process's lock on output_dir while it trains
        self.draws: Iterator[MixtureDraw] | None = None  # the built mixture draws, set up by `setup`
        self.bf16: Bf16Weights | None = None  # the bf16 copy that trains against the model (`bf16_weights`)
        # Training time without evaluation and saving: the x axis of learning curves against minutes, and what
        # max_train_minutes limits (a resumed run continues the checkpoint's count).
        self.train_seconds = 0.0

    # ------------------------------------------------------------------------------------------------ setup

    def setup(self, resume: bool, overwrite_output_dir: bool = False) -> int:
        """Build or restore everything; returns the step to continue after (0 for a new run).

        The output folder is claimed first (see `claim_run_folder`), and the data checked before anything is built.
        """
        recipe, accelerator = self.recipe, self.accelerator
        recipe.check_feature_cache(self.data.streaming)  # before the output folder is touched
        recipe.check_language_model_text()
        set_seed(recipe.seed)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if accelerator.is_main_process:
            self.run_folder = claim_run_folder(self.output_dir, resume, overwrite_output_dir, recipe.init_checkpoint)
            remove_stale_temporaries(self.output_dir)
        accelerator.wait_for_everyone()
        resume_from = latest_checkpoint(self.output_dir) if resume else None
        if resume and resume_from is None:
            logger.warning("--resume: no complete checkpoint in %s, starting from scratch.", self.output_dir)
        streams = None
        if self.data.streaming:
            streams = train_streams(recipe, self.data, accelerator.process_index, accelerator.num_processes)
            sources = first_windows(recipe, self.data, streams, resume_from)
        else:
            check_run_data(recipe, self.data, resume_from)
            sources = load_train_sources(recipe, self.data)
        model, self.processor = prepare_model_and_processor(recipe, sources, resume_from)
        self.config = (model.get_base_model() if recipe.lora.enabled else model).config
        self.builder = self._instance_builder(cache_features=streams is None)
        self.collator = Mu2SlamCollator(self.config, recipe.dataloader.pad_to_multiple_of)
        self.mixture = self._mixture(sources, streams, resume_from)
        dev_examples = load_dev_examples(recipe, self.data, self.config.languages)  # resumed or extended too
        if accelerator.is_main_process:
            warn_unknown_text(self.processor, [*sources.values(), *dev_examples.values()], str(self.data))
        self.dev = DevEvaluator(
            self.builder, dev_examples, recipe.eval_batch_size, recipe.eval_max_new_tokens, recipe.seed, self.collate,
            decode=not (recipe.language_id_only or recipe.retrieval),
        ) if any(dev_examples.values()) else None  # fmt: skip
        model.train()
        optimizer = build_optimizer(recipe, model, self.config.d_model)
        # Not passed to prepare(): Accelerate would step it once per process each step.
        opt = recipe.optimizer
        if opt.decay in ("linear", "cosine") and recipe.max_train_minutes:
            logger.warning(
                "optimizer.decay %r reaches 0 at max_steps (%d); a run stopped by max_train_minutes ends before it "
                "anneals. Set max_steps to the steps the minutes buy.", opt.decay, recipe.max_steps,
            )  # fmt: skip
        self.scheduler = transformer_schedule(optimizer, opt.warmup_for(recipe.max_steps), recipe.max_steps, opt.decay)
        self.spec_augment = self.config.apply_spec_augment
        accelerator.register_for_checkpointing(self.scheduler)
        bf16, reason = use_bf16_weights(
            recipe.bf16_weights, accelerator.mixed_precision, accelerator.num_processes, accelerator.device.type
        )
        logger.warning(reason)
        self.bf16 = Bf16Weights(model, self.config, accelerator.device) if bf16 else None
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.average = self._weight_average(resume_from)
        self.dev_history: list[dict[str, float]] = []
        step, self.train_seconds = 0, 0.0
        if resume_from is not None:
            trainer_state, process_state = load_checkpoint(accelerator, resume_from)
            self.mixture.load_state_dict(process_state["mixture"])
            self.dev_history = trainer_state.get("dev", [])
            step = int(trainer_state["step"])
            self.train_seconds = checkpoint_train_seconds(trainer_state)
            accelerator.print(f"Resumed from {resume_from} at step {step}.")
            if self.bf16 is not None:
                self.bf16.weights_from_master(trainable_only=False)
        self.mixture_state = self.mixture.state_dict()  # after the last draw trained on: what a checkpoint saves
        stream = InstanceStream(self.mixture, self.builder, recipe.seed, accelerator.process_index)
        self.draws = instance_loader(stream, recipe.dataloader.num_workers)
        if self.log_with:
            accelerator.init_trackers("mu2slam", config=_flat_hparams(recipe))
        return step

    def _instance_builder(self, cache_features: bool) -> InstanceBuilder:
        """The run's instance builder: the recipe's corruptions of training inputs, CTC targets and feature cache (not
        for streamed data, whose clips are not seen twice soon)."""
        recipe = self.recipe
        return InstanceBuilder(
            self.processor,
            self.config,
            recipe.stage,
            recipe.dataloader.cache_features and cache_features,
            ctc=bool(recipe.ctc_loss_weight),
            ctc_ast_source=recipe.ctc_ast_source,
            mt_source_mlm=recipe.mt_source_mlm,
            speed_perturbation=recipe.speed_perturbation,
            silence_padding_s=recipe.silence_padding_s,
            audio_augmentation=AudioAugmentation.from_dict(recipe.audio_augmentation),
        )

    def _mixture(
        self, sources: dict[str, Any], streams: dict[str, Any] | None, resume_from: Path | None
    ) -> TaskMixture | StreamingTaskMixture:
        """The run's per-step draws: over the train tables, or (``--streaming``) over the train streams."""
        recipe = self.recipe
        seed = recipe.seed + 1000 * self.accelerator.process_index
        text_lengths = functools.partial(text_token_lengths, tokenizer=self.processor.tokenizer)
        if streams is not None:
            tempered = sorted(t for t in recipe.drawn_tasks() if recipe.language_temperature.get(t, 1.0) != 1.0)
            if tempered:
                logger.warning(
                    "language_temperature is not applied to streamed data (%s): a stream's languages come in its own "
                    "proportions, which it cannot tell ahead. Load the data as a table to sample them.",
                    ", ".join(tempered),
                )
            check = functools.partial(
                check_train_window, self.data, recipe.drawn_tasks(), run_languages(recipe, resume_from)
            )
            return StreamingTaskMixture(
                streams, step_budgets(recipe.seconds_per_step, recipe.tokens_per_step), seed,
                recipe.dataloader.stream_window, recipe.shortest_first, text_lengths, check_window=check,
            )  # fmt: skip
        return TaskMixture(
            sources,
            recipe.examples_per_step,
            recipe.language_temperature,
            seed=seed,
            seconds_per_step=recipe.seconds_per_step,
            tokens_per_step=recipe.tokens_per_step,
            token_lengths={task: text_lengths(sources[task]) for task in recipe.tokens_per_step if task in sources},
            shortest_first=recipe.shortest_first,
        )

    def _weight_average(self, resume_from: Path | None) -> WeightAverage | None:
        """The recipe's EMA of the weights (registered, so checkpoints save it and resuming restores it)."""
        saved = read_json(resume_from / TRAINER_STATE_NAME)["recipe"].get("ema_decay") if resume_from else None
        if resume_from is not None and saved is not None and self.recipe.ema_decay is None:
            logger.warning("%s holds a weight average (ema_decay %s); this run, without ema_decay, drops it and "
                           "saves its last weights.", resume_from, saved)  # fmt: skip
        if self.recipe.ema_decay is None:
            return None
        if resume_from is not None and saved is None:
            raise RecipeError(
                f"ema_decay: {resume_from} was saved without a weight average, so resuming cannot continue one. "
                "Resume with `ema_decay: null`, or start a new run (a new --output_dir) from it with --init."
            )
        if self.accelerator.distributed_type == DistributedType.FSDP:
            raise RecipeError(
                "ema_decay: FSDP shards the weights across processes, and an average of them would need its own "
                "sharding; train with DDP (configuration/accelerate/*ddp*.yaml) or set ema_decay: null."
            )
        average = WeightAverage(self.accelerator.unwrap_model(self.model), self.recipe.ema_decay)
        self.accelerator.register_for_checkpointing(average)
        return average

    def final_model(self) -> torch.nn.Module:
        """The weights the run evaluates on dev and saves: the weight average when the recipe keeps one."""
        return self.average.module if self.average is not None else self.accelerator.unwrap_model(self.model)

    # ------------------------------------------------------------------------------------------------- step

    def train_step(self, step: int, tracker: LossTracker) -> None:
        """One optimizer step (all micro-steps, all layout groups)."""
        recipe, accelerator, model = self.recipe, self.accelerator, self.model
        accumulation = recipe.gradient_accumulation_steps
        # Augmentation only once the model has started to learn (SpeechBrain's augment warm-up).
        self.config.apply_spec_augment = self.spec_augment and step > recipe.spec_augment_from_step
        for micro in range(accumulation):
            with phase("draw"):
                draw = next(self.draws)
            self.mixture_state = draw.mixture_state
            groups = split_by_layout(draw.instances)
            micro_loss = torch.zeros((), device=accelerator.device)
            for index, group in enumerate(groups):
                last = micro == accumulation - 1 and index == len(groups) - 1
                with phase("collate"):
                    batch = to_device(self.collate(group), accelerator.device)
                with contextlib.nullcontext() if last else accelerator.no_sync(model):
                    with phase("forward"):
                        outputs = self._forward(batch)
                    with phase("backward"):
                        accelerator.backward(outputs.loss / accumulation)
                if self.bf16 is not None:
                    with phase("master_weights"):
                        self.bf16.gradients_to_master()
                with phase("loss_tracking"):
                    micro_loss += outputs.loss.detach()
                    tracker.add_output(group, outputs)
                    self._count_inputs(group, tracker)
            tracker.add_total("loss", micro_loss)
            tracker.add_total("micro_batches", 1)
        max_norm = recipe.optimizer.max_grad_norm
        with phase("clip_grad_norm"):
            self.grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_norm) if max_norm else None
        with phase("optimizer"):
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        if self.bf16 is not None:
            with phase("master_weights"):
                self.bf16.weights_from_master()
        if self.average is not None:
            with phase("weight_average"):
                self.average.update_parameters(accelerator.unwrap_model(model))

    def _forward(self, batch: dict[str, torch.Tensor]):
        """The model's outputs on a batch: the bf16 copy's with ``bf16_weights`` (under autocast, which `prepare`
        adds to the run's own model only), else the run's model's."""
        if self.bf16 is None:
            return self.model(**batch)
        with self.accelerator.autocast():
            return self.bf16.module(**batch)

    def collate(self, group) -> dict[str, torch.Tensor]:
        """One batch of the model's keyword arguments (with language-identification labels when the recipe trains
        that head; (speech, text) pairs for a retrieval run)."""
        batch = self.collator(group)
        if self.recipe.retrieval:
            return retrieval_pairs(batch)
        if self.recipe.language_id_weight:
            batch = with_language_labels(batch, only=self.recipe.language_id_only)
        return batch

    def _count_inputs(self, group, tracker: LossTracker) -> None:
        """Speech seconds and text tokens fed to the encoder (throughput); a retrieval run encodes each row's
        target text (its labels) as well."""
        speech_seconds = sum(i.input_features.shape[0] / 100.0 for i in group if i.input_features is not None)
        text_tokens = sum(i.input_ids.shape[0] for i in group if i.input_ids is not None)
        if self.recipe.retrieval:
            text_tokens += sum(int((i.labels != IGNORE_INDEX).sum()) for i in group)
        tracker.add_total("speech_seconds", speech_seconds)
        tracker.add_total("text_tokens", text_tokens)

    # ------------------------------------------------------------------------------------------------- loop

    def train(
        self, resume: bool = False, stop_after: int | None = None, overwrite_output_dir: bool = False
    ) -> TrainingResult:
        """Run to ``recipe.max_steps`` (or to ``stop_after`` steps, a test hook); returns the result.

        ``resume`` continues the run in output_dir; ``overwrite_output_dir`` replaces it; a folder holding a run
        with neither is an error. The folder is locked against other runs until this returns.
        """
        try:
            return self._train(resume, stop_after, overwrite_output_dir)
        finally:
            self.draws = None  # stops the DataLoader worker processes, if any
            if self.run_folder is not None:
                self.run_folder.release()

    def _train(self, resume: bool, stop_after: int | None, overwrite_output_dir: bool) -> TrainingResult:
        recipe, accelerator = self.recipe, self.accelerator
        start = self.setup(resume, overwrite_output_dir)
        result = TrainingResult(step=start, dev=list(self.dev_history), output_dir=str(self.output_dir))
        log_path = self.output_dir / "train_log.jsonl"
        if accelerator.is_main_process:
            _truncate_log(log_path, start)
        end = recipe.max_steps if stop_after is None else min(recipe.max_steps, start + stop_after)
        bar = tqdm(total=recipe.max_steps, initial=start, disable=not (self.progress and accelerator.is_main_process))
        tracker, clock = LossTracker(accelerator.device), time.perf_counter()
        for step in range(start + 1, end + 1):
            step_start = time.perf_counter()
            self.train_step(step, tracker)
            self.train_seconds = self._agreed_seconds(self.train_seconds + time.perf_counter() - step_start)
            if step % recipe.log_interval == 0 or step == end or self._out_of_time():
                entry = self._log(step, tracker, time.perf_counter() - clock, log_path)
                clock = time.perf_counter()
                result.log.append(entry)
                bar.set_postfix({k.split("/")[1]: f"{v:.3f}" for k, v in entry.items() if k.startswith("loss/")})
            bar.update(1)
            last = step == recipe.max_steps or self._out_of_time()
            if self.dev is not None and (step % recipe.eval_interval == 0 or last):
                result.dev.append(self.evaluate(step))
            if step % recipe.checkpoint_interval == 0 or last:
                self.save(step, result.dev)
            result.step = step
            if last:
                break
        bar.close()
        if result.step == recipe.max_steps or self._out_of_time():
            self.save_final()
        if self.log_with:
            accelerator.end_training()
        return result

    def _agreed_seconds(self, seconds: float) -> float:
        """The slowest process's training time, when a time limit applies and several processes train: they must
        stop after the same step, or those still stepping wait forever in a collective the others never join."""
        if self.recipe.max_train_minutes is None or self.accelerator.num_processes == 1:
            return seconds
        gathered = self.accelerator.gather(
            torch.tensor([seconds], dtype=torch.float64, device=self.accelerator.device)
        )
        return float(gathered.max())

    def _out_of_time(self) -> bool:
        limit = self.recipe.max_train_minutes
        return limit is not None and self.train_seconds >= 60 * limit

    def _log(self, step: int, tracker: LossTracker, seconds: float, log_path: Path) -> dict[str, float]:
        summary = tracker.summary(self.accelerator)
        entry = {"step": step, "lr": self.scheduler.get_last_lr()[0], "train_seconds": self.train_seconds, **summary}
        if self.grad_norm is not None:
            entry["grad_norm"] = float(self.grad_norm)
        entry["speech_seconds_per_second"] = summary.pop("speech_seconds") / seconds
        entry["text_tokens_per_second"] = summary.pop("text_tokens") / seconds
        entry.pop("speech_seconds"), entry.pop("text_tokens")
        if self.accelerator.is_main_process:
            with log_path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry) + "\n")
        if self.log_with:
            self.accelerator.log({k: v for k, v in entry.items() if k != "step" and math.isfinite(v)}, step=step)
        return entry

    def evaluate(self, step: int) -> dict[str, float]:
        """Dev losses and generation metrics at ``step``: logged, printed and appended to dev_results.json."""
        metrics = {
            "step": step,
            "train_seconds": self.train_seconds,
            **self.dev.evaluate(self.final_model(), self.accelerator),
        }
        self.dev_history.append(metrics)
        if self.accelerator.is_main_process:
            warn_collapsed_encoder(metrics, step)
            write_dev_results(self.output_dir / "dev_results.json", self.dev_history)
            shown = {k: round(v, 3) for k, v in metrics.items() if k.startswith("dev/") and "_loss/" not in k}
            self.accelerator.print(f"step {step} dev: {shown}")
        if self.log_with:
            self.accelerator.log({k: v for k, v in metrics.items() if k != "step"}, step=step)
        return metrics

    # -------------------------------------------------------------------------------------------- saving

    def save_model_and_processor(self, folder: Path) -> None:
        """The loadable folder: model (safetensors; LoRA merged) + processor. Collective (sharded models)."""
        accelerator = self.accelerator
        state_dict = None
        if self.average is None and not self.recipe.lora.enabled:
            state_dict = accelerator.get_state_dict(self.model)  # collective: every process takes part
        if accelerator.is_main_process:
            model = self.final_model()
            if self.recipe.lora.enabled:
                merged_copy(model).save_pretrained(folder)
            else:
                model.save_pretrained(folder, state_dict=state_dict)
            self.processor.save_pretrained(folder)

    def save(self, step: int, dev: list[dict[str, float]]) -> Path | None:
        trainer_state = {
            "step": step,
            "train_seconds": self.train_seconds,
            "recipe": self.recipe.to_dict(),
            "dev": dev,
        }
        return save_checkpoint(
            self.accelerator,
            self.output_dir,
            step,
            self.save_model_and_processor,
            {"mixture": self.mixture_state},
            trainer_state,
            self.recipe.keep_checkpoints,
        )

    def save_final(self) -> None:
        """Model + processor at the top of output_dir (``from_pretrained(output_dir)``), with the ASR decoder dev
        scored best as the model's default for ASR (``model.asr_decoding.ctc_weight``): the best greedy decoder of
        the last dev evaluation, or the CTC head with the recipe's language model where that is better on dev."""
        weight = dev_chosen_ctc_weight(self.dev_history[-1]) if self.dev_history else None
        if weight is not None and self.recipe.ctc_language_model and self.accelerator.is_main_process:
            weight = self.fit_ctc_language_model(weight)
        if weight is not None:
            self.final_model().set_asr_ctc_weight(weight)
            self.accelerator.print(f"ASR decoding default (chosen on dev): ctc_weight={weight:g}")
        if self.recipe.choose_translation_decoding and self.accelerator.is_main_process:
            self.fit_translation_decoding()
        self.save_model_and_processor(self.output_dir)
        self.accelerator.wait_for_everyone()

    def fit_ctc_language_model(self, chosen_ctc_weight: float) -> float:
        """Fit the recipe's character n-gram LM of the train text (weight chosen on the dev ASR examples), attach it to
        the model (saved with it), and return the ASR decoder's CTC weight to keep: 1 (the CTC head, with the LM where
        it helped) unless ``chosen_ctc_weight``, the decoder the last dev evaluation preferred, does better on the
        LM's dev clips. The fit is written to ctc_language_model_fit.json."""
        model = self.final_model()
        split = self.data.train_split_name
        train_rows = self.data.stream(split) if self.data.streaming else self.data.load(split)
        all_dev_rows = eval_rows(self.recipe, self.data, self.config.languages)
        extra = self.language_model_text(all_dev_rows) if self.recipe.ctc_language_model_text else None
        # More dev clips than the periodic evaluation's: 12 weight/bonus pairs are chosen on them.
        dev_rows = [row for row in all_dev_rows if row["task"] == "asr"]
        dev = dev_subset(dev_rows, max(self.recipe.dev_examples_per_task, CTC_LM_DEV_EXAMPLES))
        other = None if chosen_ctc_weight == 1.0 else chosen_ctc_weight
        fit = fit_ctc_language_model(
            model, self.processor, train_rows, dev, self.recipe.ctc_language_model,
            batch_size=self.recipe.eval_batch_size, other_ctc_weight=other, extra_rows=extra,
            max_new_tokens=decoding_limit(
                self.processor, dev, self.recipe.eval_max_new_tokens, self.config.max_target_positions - 1
            ),
        )  # fmt: skip
        weight = fit["ctc_weight_chosen"] = preferred_asr_ctc_weight(fit)
        write_json(self.output_dir / "ctc_language_model_fit.json", fit)
        against = "" if other is None else f"; ctc_weight={other:g} greedy: {fit['dev_cer_other']:.1f}"
        if "extra_text" in fit:
            extra_fit = fit["extra_text"]
            self.accelerator.print(
                f"CTC language model with ctc_language_model_text: dev CER {extra_fit['dev_cer']:.1f} "
                f"({'kept' if extra_fit['kept'] else 'not kept: the train text alone scores lower on dev'})"
            )
        self.accelerator.print(
            f"CTC language model (order {fit['order']}): dev CER {fit['dev_cer_greedy']:.1f} greedy -> "
            f"{fit['dev_cer']:.1f} (lm_weight {fit['lm_weight']:g}, length_bonus {fit['length_bonus']:g}, "
            f"{fit['num_beams']} beams){against}"
        )
        return weight

    def language_model_text(self, dev_rows: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """The train text of the recipe's ``ctc_language_model_text`` folders, without any sentence of the run's dev
        rows, of its data's dev/test manifests (a manifest folder) or of those folders' dev/test splits."""
        folders = list(self.recipe.ctc_language_model_text)
        held_out = {text for row in dev_rows for text in row_texts(row)}
        sources = folders + ([self.data.dataset_name] if self.data.kind == "manifest" else [])
        sources = [folder for folder in sources if any(Path(folder, f"{s}.jsonl").is_file() for s in ("dev", "test"))]
        return language_model_text_rows(folders, held_out | held_out_texts(sources))

    def fit_translation_decoding(self) -> None:
        """Choose the model's translation decoding on the dev AST/MT rows (`choose_translation_decoding`; as many
        rows per task as the periodic dev evaluation decodes), set it on the model and write the fit to
        translation_decoding_fit.json."""
        rows = [
            row for row in eval_rows(self.recipe, self.data, self.config.languages) if row["task"] in TRANSLATION_TASKS
        ]
        if not rows:
            self.accelerator.print("choose_translation_decoding: no AST/MT dev rows; the model keeps greedy decoding")
            return
        dev = [e for task in TRANSLATION_TASKS for e in dev_subset([r for r in rows if r["task"] == task],
                                                                self.recipe.dev_examples_per_task)]  # fmt: skip
        limit = decoding_limit(
            self.processor, dev, self.recipe.eval_max_new_tokens, self.config.max_target_positions - 1
        )
        fit = choose_translation_decoding(self.final_model(), self.processor, dev, self.recipe.eval_batch_size, limit)
        self.final_model().set_translation_decoding(fit["chosen"])
        write_json(self.output_dir / "translation_decoding_fit.json", fit)
        best = max(fit["candidates"], key=lambda c: (c["chrf"], c["bleu"]))
        self.accelerator.print(
            f"translation decoding (chosen on {fit['dev_examples']} dev rows): {fit['chosen']}, dev chrF "
            f"{best['chrf']:.1f}, BLEU {best['bleu']:.2f} (greedy: chrF {fit['candidates'][0]['chrf']:.1f})"
        )


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines after ``step`` (steps a resumed run will redo)."""
    if not path.exists():
        return
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def _flat_hparams(recipe: Recipe) -> dict[str, Any]:
    """TensorBoard hparams: scalars and strings only, nested keys joined with dots."""
    flat: dict[str, Any] = {}

    def visit(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                visit(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(value, bool | int | float | str):
            flat[prefix] = value
        elif value is not None:
            flat[prefix] = str(value)

    visit("", recipe.to_dict())
    return flat


def train(
    recipe: Recipe,
    data: str | os.PathLike | TrainingData,
    output_dir: str,
    resume: bool = False,
    overwrite_output_dir: bool = False,
    **kwargs,
) -> TrainingResult:
    """Train with ``recipe`` on ``data`` into ``output_dir`` (see `Mu2SlamTrainer` and its ``train``)."""
    trainer = Mu2SlamTrainer(recipe, data, output_dir, **kwargs)
    return trainer.train(resume=resume, overwrite_output_dir=overwrite_output_dir)
