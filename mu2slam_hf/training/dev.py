"""Periodic dev evaluation: per-task dev losses, and greedy-decoding ASR CER/WER (attention, CTC and joint),
AST and MT BLEU; language-identification accuracy on the speech examples when the model has that head; and each
task's encoder spread (`encoder_spread`), which tells a collapsed encoder before the metrics can.

The dev subset is fixed for the whole run (the first ``examples_per_task`` examples of each task, spread over
languages), and so are its masks (a generator seeded once), so dev losses of different steps are comparable.
Work is split over processes and the sums / predictions are gathered.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from accelerate.utils import gather_object

from ..asr_decoding import JOINT_CTC_WEIGHT, AsrDecodingOptions
from ..data.audio import decode_example
from ..data.schema import LABELLED_TASKS
from ..evaluation import (
    RETRIEVAL_METRICS,
    generate_predictions,
    predict_languages,
    retrieval_records,
    score,
    spread_over_languages,
)
from ..instances import InstanceBuilder, Mu2SlamCollator, split_by_layout
from ..modeling_retrieval import Mu2SlamForRetrieval
from .instance_stream import step_generator
from .losses import LossTracker

logger = logging.getLogger(__name__)
GENERATION_METRICS = {"asr": ("cer", "wer"), "ast": ("bleu",), "mt": ("bleu",)}
DEV_LOSS_TOTALS = ("language_id_loss", "retrieval_loss")  # dev losses beside the per-task ones
# Below this spread the encoder gives nearly one vector for every position: an MT model trained from scratch without
# an encoder-side loss falls far below it within a few hundred steps, its decoder then a language model that ignores
# the source; with `mt_source_mlm` the spread stays near its value at init (docs/training.md).
COLLAPSED_ENCODER_SPREAD = 0.1


def encoder_spread(states: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """(sum, count) for the spread of a batch's encoder states (B, E, D) over its real positions (mask (B, E)): the
    mean distance of a position's state from the mean state of all of them, over their mean norm. 0 when every
    position holds the same vector (a collapsed encoder the decoder cannot read); about 1 for unrelated states."""
    real = states[mask.bool()].float()
    if real.shape[0] < 2:
        return 0.0, 0.0
    spread = (real - real.mean(0)).norm(dim=-1).mean() / real.norm(dim=-1).mean().clamp_min(1e-6)
    return float(spread), 1.0


def warn_collapsed_encoder(metrics: Mapping[str, float], step: int) -> list[str]:
    """Log a warning for each task whose dev encoder spread is below `COLLAPSED_ENCODER_SPREAD`; returns them."""
    prefix = "dev/encoder_spread/"
    collapsed = [
        key.removeprefix(prefix)
        for key, value in metrics.items()
        if key.startswith(prefix) and value < COLLAPSED_ENCODER_SPREAD
    ]
    for task in collapsed:
        logger.warning(
            "step %d: the encoder gives nearly one vector for every position of the %s dev inputs (spread %.3f < "
            "%.1f), so the decoder cannot read its input. Give the encoder a loss of its own: `mt_source_mlm` (MT), "
            "`ctc_weight` (ASR) or `ctc_ast_source` (AST), or start from a pre-trained model.",
            step, task, metrics[prefix + task], COLLAPSED_ENCODER_SPREAD,
        )  # fmt: skip
    return collapsed


def decoding_limit(processor: Any, examples: Sequence[dict[str, Any]], floor: int, ceiling: int) -> int:
    """Greedy decoding's token limit for dev ``examples``: at least ``floor`` (the recipe's cost bound for models that
    do not stop yet), and a quarter more than the longest reference, so that a right hypothesis is never cut and
    counted wrong (a cut falls on the attention and joint decoders, never on the CTC head, and would tilt dev's choice
    of decoder); at most ``ceiling`` (the model's target positions after the start token)."""
    texts = [example["target_text"] for example in examples if example.get("target_text")]
    longest = max(len(ids) for ids in processor.tokenizer(texts)["input_ids"]) if texts else 0
    return min(max(floor, longest + (longest + 3) // 4), ceiling)


def dev_subset(examples: Sequence[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """``count`` examples taken round-robin over the languages (in file order within each language)."""
    return spread_over_languages(examples, count)


class DevEvaluator:
    """Evaluates a model on a fixed dev subset.

    Args:
        builder: the run's `InstanceBuilder` (same processor and objectives as training; its training-only
            corruption of fine-tuning sources is left out, see `InstanceBuilder.for_evaluation`).
        examples: task -> dev examples (already subset).
        batch_size: of the loss batches and of greedy decoding.
        max_new_tokens: greedy decoding's limit where no dev reference needs more (see `decoding_limit`).
        seed: of the dev masks.
        collate: instances -> the model's keyword arguments (default: the plain collator); the training loop
            passes its own, so dev batches carry what training batches carry (language-identification labels).
        decode: run greedy decoding (False for a run that trains language identification alone).
    """

    def __init__(
        self,
        builder: InstanceBuilder,
        examples: Mapping[str, Sequence[dict[str, Any]]],
        batch_size: int = 8,
        max_new_tokens: int = 64,
        seed: int = 0,
        collate: Callable[[Sequence[Any]], dict[str, torch.Tensor]] | None = None,
        decode: bool = True,
    ):
        self.builder = builder.for_evaluation()
        self.decode = decode
        self.examples = {task: [decode_example(e) for e in rows] for task, rows in examples.items() if rows}
        self.batch_size = batch_size
        every_example = [example for rows in self.examples.values() for example in rows]
        self.max_new_tokens = decoding_limit(
            builder.processor, every_example, max_new_tokens, builder.config.max_target_positions - 1
        )
        self.seed = seed
        self.collate = collate or Mu2SlamCollator(builder.config)

    @torch.no_grad()
    def evaluate(self, model, accelerator) -> dict[str, float]:
        """Dev losses (``dev/loss/<task>`` ...) and generation metrics (``dev/asr_cer`` ...), on every process."""
        unwrapped = accelerator.unwrap_model(model)
        was_training = unwrapped.training
        unwrapped.eval()
        try:
            with torch.random.fork_rng(devices=[]), accelerator.autocast():
                metrics = self._losses(unwrapped, accelerator)
                metrics.update(self._generation(unwrapped, accelerator))
        finally:
            unwrapped.train(was_training)
        return {f"dev/{key}": value for key, value in metrics.items()}

    def _shard(self, rows: Sequence[Any], accelerator) -> list[Any]:
        return list(rows[accelerator.process_index :: accelerator.num_processes])

    def _losses(self, model, accelerator) -> dict[str, float]:
        device = accelerator.device
        tracker = LossTracker(device)  # on the device: its sums are reduced across processes (NCCL: GPU tensors)
        generator = step_generator(self.seed, accelerator.process_index, 2**31)
        spreads = torch.zeros(len(self.examples), 2, dtype=torch.float64, device=device)  # (sum, count) per task
        for index, (task, examples) in enumerate(self.examples.items()):
            mine = self._shard(examples, accelerator)
            for start in range(0, len(mine), self.batch_size):
                instances = self.builder.build({task: mine[start : start + self.batch_size]}, generator)
                for group in split_by_layout(instances):
                    batch = self.collate(group)
                    outputs = model(**{k: v.to(device) for k, v in batch.items()})
                    tracker.add_output(group, outputs)
                    states = getattr(outputs, "encoder_last_hidden_state", None)
                    if states is not None and outputs.encoder_attention_mask is not None:
                        spread = encoder_spread(states, outputs.encoder_attention_mask)
                        spreads[index] += torch.tensor(spread, dtype=spreads.dtype, device=device)
        summary = tracker.summary(accelerator)
        metrics = {key: value for key, value in summary.items() if "/" in key or key in DEV_LOSS_TOTALS}
        if accelerator.num_processes > 1:
            spreads = accelerator.reduce(spreads, "sum")
        for task, (total, count) in zip(self.examples, spreads.tolist(), strict=True):
            if count:
                metrics[f"encoder_spread/{task}"] = total / count
        return metrics

    def _generation(self, model, accelerator) -> dict[str, float]:
        """Greedy decoding of each task's dev examples; ASR also with the CTC head alone (``asr_cer_ctc``...), the
        decoder that learns first, and with joint CTC/attention scoring (``asr_cer_joint``...)."""
        metrics = {}
        if isinstance(model, Mu2SlamForRetrieval):
            metrics.update(self._retrieval(model, accelerator))
        if getattr(model, "language_id_head", None) is not None:
            speech = [e for task in ("asr", "ast") for e in self.examples.get(task, [])]
            records = gather_object(predict_languages(model, self.builder.processor, self._shard(speech, accelerator)))
            if records:
                correct = sum(r["language"] == r["detected"] for r in records)
                metrics["language_id_accuracy"] = 100.0 * correct / len(records)
        for task in LABELLED_TASKS:
            if task not in self.examples or not self.decode:
                continue
            mine = self._shard(self.examples[task], accelerator)
            # never the model's chosen decoders: dev is what chooses them (greedy translation, plain)
            decoders = {"": {"decoder": "attention", "translation": {"num_beams": 1}}}
            if task == "asr":
                decoders.update({"_ctc": {"decoder": "ctc"}, "_joint": {"ctc_weight": JOINT_CTC_WEIGHT}})
            for suffix, options in decoders.items():
                records = gather_object(
                    generate_predictions(
                        model, self.builder.processor, mine, self.batch_size, self.max_new_tokens, **options
                    )
                )
                references = [r["reference"] for r in records]
                hypotheses = [r["hypothesis"] for r in records]
                for name in GENERATION_METRICS[task]:
                    languages = {r["target_lang"] for r in records}
                    target = languages.pop() if len(languages) == 1 else None
                    metrics[f"{task}_{name}{suffix}"] = score(name, references, hypotheses, target)
        return metrics

    def _retrieval(self, model, accelerator) -> dict[str, float]:
        """Recall@1/5/10 both ways over the dev (speech, text) pairs (``retrieval_s2t_r1``...); each process
        computes it on all of them (the candidate pool is the whole subset)."""
        pairs = [e for task in ("asr", "ast") for e in self.examples.get(task, [])]
        if not pairs:
            return {}
        records = retrieval_records(model, self.builder.processor, pairs, batch_size=self.batch_size)
        return {
            f"retrieval_{name}": 100.0 * sum(r[name] for r in records) / len(records) for name in RETRIEVAL_METRICS
        }


# Each ASR decoder the dev evaluation scores, as the CTC weight `generate` gives it: the attention decoder alone,
# joint CTC/attention, and the CTC head alone (weight 1: a CTC-only prefix search).
ASR_DECODER_CTC_WEIGHTS = {"dev/asr_cer": 0.0, "dev/asr_cer_joint": JOINT_CTC_WEIGHT, "dev/asr_cer_ctc": 1.0}


def dev_chosen_ctc_weight(metrics: dict[str, float]) -> float | None:
    """The CTC weight of the ASR decoder with the lowest dev CER in one dev evaluation (None without ASR CERs).

    Chosen on dev, it becomes the model's default for ASR (``model.asr_decoding.ctc_weight``), so that
    ``generate`` and ``pipeline()`` transcribe with the decoder that works best at this point of training.
    """
    scored = {key: metrics[key] for key in ASR_DECODER_CTC_WEIGHTS if key in metrics}
    if not scored:
        return None
    return ASR_DECODER_CTC_WEIGHTS[min(scored, key=scored.get)]


def dev_chosen_asr_decoding(generation_config: Mapping[str, Any]) -> dict[str, Any]:
    """`evaluate_model` options of a fine-tuned model's default ASR decoder, which its run chose on dev, never on test
    (its `AsrDecodingOptions`, see `Mu2SlamTrainer.save_final`); `generation_config` is generation_config.json's
    dict."""
    return AsrDecodingOptions.from_generation_config(generation_config).evaluation_options()


def write_dev_results(path: str | os.PathLike, history: list[dict[str, Any]]) -> None:
    """All dev evaluations so far, as one JSON list (rewritten atomically)."""
    from .checkpointing import write_json

    write_json(path, history)
