"""Periodic dev evaluation: per-task dev losses, and greedy-decoding ASR CER/WER, AST and MT BLEU.

The dev subset is fixed for the whole run (the first ``examples_per_task`` examples of each task, spread over
languages), and so are its masks (a generator seeded once), so dev losses of different steps are comparable.
Work is split over processes and the sums / predictions are gathered.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from accelerate.utils import gather_object

from ..data.audio import decode_example
from ..evaluation import char_error_rate, corpus_bleu, normalize_text, spread_over_languages, word_error_rate
from ..pretraining import Mu2SlamCollator, split_by_layout
from .instances import InstanceBuilder, step_generator
from .losses import LossTracker, row_losses

GENERATION_METRICS = {"asr": ("cer", "wer"), "ast": ("bleu",), "mt": ("bleu",)}


def dev_subset(examples: Sequence[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """``count`` examples taken round-robin over the languages (in file order within each language)."""
    return spread_over_languages(examples, count)


class DevEvaluator:
    """Evaluates a model on a fixed dev subset.

    Args:
        builder: the run's `InstanceBuilder` (same processor and objectives as training).
        examples: task -> dev examples (already subset).
        batch_size / max_new_tokens: of the loss batches and of greedy decoding.
        seed: of the dev masks.
    """

    def __init__(
        self,
        builder: InstanceBuilder,
        examples: Mapping[str, Sequence[dict[str, Any]]],
        batch_size: int = 8,
        max_new_tokens: int = 64,
        seed: int = 0,
    ):
        self.builder = builder
        self.examples = {task: [decode_example(e) for e in rows] for task, rows in examples.items() if rows}
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        self.collator = Mu2SlamCollator(builder.config)

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
        tracker = LossTracker()
        generator = step_generator(self.seed, accelerator.process_index, 2**31)
        device = accelerator.device
        for task, examples in self.examples.items():
            mine = self._shard(examples, accelerator)
            for start in range(0, len(mine), self.batch_size):
                instances = self.builder.build({task: mine[start : start + self.batch_size]}, generator)
                for group in split_by_layout(instances):
                    batch = {k: v.to(device) for k, v in self.collator(group).items()}
                    outputs = model(**batch)
                    tracker.add_rows(group, row_losses(model, outputs, batch))
        summary = tracker.summary(accelerator)
        return {key: value for key, value in summary.items() if "/" in key}

    def _generation(self, model, accelerator) -> dict[str, float]:
        metrics = {}
        for task in ("asr", "ast", "mt"):
            if task not in self.examples:
                continue
            pairs = gather_object(self._decode(model, self._shard(self.examples[task], accelerator), task))
            references = [reference for reference, _, _ in pairs]
            hypotheses = [hypothesis for _, hypothesis, _ in pairs]
            if task == "asr":
                refs, hyps = [normalize_text(r) for r in references], [normalize_text(h) for h in hypotheses]
                metrics["asr_cer"], metrics["asr_wer"] = char_error_rate(refs, hyps), word_error_rate(refs, hyps)
            else:
                languages = {lang for _, _, lang in pairs}
                metrics[f"{task}_bleu"] = corpus_bleu(
                    references, hypotheses, languages.pop() if len(languages) == 1 else None
                )
        return metrics

    def _decode(self, model, examples: Sequence[dict[str, Any]], task: str) -> list[tuple[str, str, str]]:
        """(reference, hypothesis, target language) of each example, by greedy decoding."""
        processor, device, output = self.builder.processor, next(model.parameters()).device, []
        for start in range(0, len(examples), self.batch_size):
            batch = examples[start : start + self.batch_size]
            src = [e["source_lang"] for e in batch]
            tgt = [e.get("target_lang") or e["source_lang"] for e in batch]
            if task == "mt":
                inputs = processor(text=[e["source_text"] for e in batch])
            else:
                inputs = processor(audio=[e["audio"]["array"] for e in batch], sampling_rate=16_000)
            inputs = {k: v.to(device) for k, v in inputs.items()}
            ids = model.generate(
                **inputs, src_lang=src, tgt_lang=tgt, max_new_tokens=self.max_new_tokens, num_beams=1, do_sample=False
            )
            texts = processor.batch_decode(ids, skip_special_tokens=True)
            output += [(e["target_text"], t.strip(), lang) for e, t, lang in zip(batch, texts, tgt, strict=True)]
        return output


def write_dev_results(path: str | os.PathLike, history: list[dict[str, Any]]) -> None:
    """All dev evaluations so far, as one JSON list (rewritten atomically)."""
    from .checkpointing import write_json

    write_json(path, history)
