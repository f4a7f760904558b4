"""The training commands: ``mu2slam-pretrain`` / ``training_scripts/pretrain.py`` and ``mu2slam-finetune`` /
``training_scripts/finetune.py`` (run the scripts with
``accelerate launch --config_file configuration/accelerate/<cpu|single_gpu|multi_gpu_ddp|fsdp|...>.yaml``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

import torch
import yaml
from accelerate import PartialState

from ..data.training_data import DataSourceError, TrainingData
from ..data.validation import CorpusError
from ..training.loop import train
from ..training.memory_allocator import use_fast_allocator
from ..training.preflight import UnknownTextError
from ..training.recipe import RecipeError, load_recipe
from ..training.run_folder import RunFolderError

# Errors about the user's inputs: their message says what to fix, so the command prints it without a traceback.
USER_ERRORS = (RecipeError, RunFolderError, CorpusError, DataSourceError, UnknownTextError)


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", required=True, help="recipe YAML (configuration/recipes/*.yaml)")
    TrainingData.add_arguments(parser)
    parser.add_argument("--output_dir", required=True, help="checkpoints, logs, dev results, final model")
    folder = parser.add_mutually_exclusive_group()
    folder.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    folder.add_argument(
        "--overwrite_output_dir", action="store_true", help="replace the run in output_dir (deletes its checkpoints)"
    )
    parser.add_argument("--max_steps", type=int, help="override the recipe's max_steps")
    parser.add_argument(
        "--mixed_precision", choices=("no", "bf16", "fp16", "launcher"), help="'launcher': accelerate's"
    )
    parser.add_argument("--gradient_checkpointing", action="store_true", help="recompute layer activations")
    parser.add_argument(
        "--extend_vocabulary", action="store_true",
        help="add the train texts' unknown characters as tokens and unknown languages as language embeddings",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, help="override the recipe's seed")
    parser.add_argument("--no_tensorboard", action="store_true", help="do not write TensorBoard logs")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="any recipe key, dotted, value in YAML: --set optimizer.warmup_steps=500 --set examples_per_step.mt=2",
    )  # fmt: skip


def parse_recipe_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``--set`` items (``KEY=VALUE``, the key dotted, the value in YAML) as the overrides ``load_recipe`` takes."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key] = yaml.safe_load(value)
    return overrides


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides = parse_recipe_overrides(args.set)
    for name in ("max_steps", "seed"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.mixed_precision is not None:
        overrides["mixed_precision"] = None if args.mixed_precision == "launcher" else args.mixed_precision
    if args.gradient_checkpointing:
        overrides["gradient_checkpointing"] = True
    if args.extend_vocabulary:
        overrides["extend_vocabulary"] = True
    return overrides


def _run(args: argparse.Namespace, overrides: dict[str, Any], stage: str, from_command_line: bool) -> None:
    if from_command_line:  # may re-execute this command with tcmalloc preloaded (a fifth faster CPU steps)
        # Before Accelerate starts a process group, which an exec would break.
        allocator = use_fast_allocator(training_on_cpu=not torch.cuda.is_available())
        if os.environ.get("RANK", "0") == "0":
            print(f"memory allocator: {allocator}", file=sys.stderr, flush=True)
    try:
        _train(args, overrides, stage)
    except USER_ERRORS as error:
        raise SystemExit(f"{type(error).__name__}: {error}") from None


def _train(args: argparse.Namespace, overrides: dict[str, Any], stage: str) -> None:
    recipe = load_recipe(args.recipe, overrides)
    recipe.require_stage(stage, args.recipe)
    result = train(
        recipe,
        TrainingData.from_arguments(args),
        args.output_dir,
        resume=args.resume,
        overwrite_output_dir=args.overwrite_output_dir,
        log_with=None if args.no_tensorboard else "tensorboard",
        progress=not args.no_progress,
    )
    if result.log and PartialState().is_main_process:
        last = {k: round(v, 4) for k, v in result.log[-1].items() if k == "loss" or k.startswith("loss/")}
        print(f"Finished at step {result.step}; last losses {last}; model + processor in {args.output_dir}")


def pretrain_main(argv: Sequence[str] | None = None) -> None:
    """Mu2SLAM pre-training (the masked objectives of the paper) with Accelerate."""
    parser = argparse.ArgumentParser(description=pretrain_main.__doc__)
    _common_arguments(parser)
    args = parser.parse_args(argv)
    _run(args, _overrides(args), "pretrain", from_command_line=argv is None)


def finetune_main(argv: Sequence[str] | None = None) -> None:
    """Mu2SLAM fine-tuning (plain P(y|x) on ASR/AST/MT; gradual stages are recipes) with Accelerate."""
    parser = argparse.ArgumentParser(description=finetune_main.__doc__)
    _common_arguments(parser)
    parser.add_argument("--init", help="trained folder (model + processor) to start from; overrides init_checkpoint")
    parser.add_argument("--lora", action="store_true", help="train LoRA adapters only (saved merged)")
    parser.add_argument("--lora_r", type=int, help="LoRA rank (recipe lora.r)")
    parser.add_argument("--decoder_noise_ratio", type=float, help="model config decoder_noise_ratio (paper: 0.06)")
    parser.add_argument("--spec_augment", action="store_true", help="model config apply_spec_augment=True")
    args = parser.parse_args(argv)
    overrides = _overrides(args)
    if args.init:
        overrides["init_checkpoint"] = args.init
    if args.lora:
        overrides["lora.enabled"] = True
    if args.lora_r is not None:
        overrides["lora.r"] = args.lora_r
    if args.decoder_noise_ratio is not None:
        overrides["model_overrides.decoder_noise_ratio"] = args.decoder_noise_ratio
    if args.spec_augment:
        overrides["model_overrides.apply_spec_augment"] = True
    _run(args, overrides, "finetune", from_command_line=argv is None)
