"""From a mixture step (task -> examples in the data schema) to `Mu2SlamInstance` rows.

Audio is decoded, featurised with the processor's feature extractor and quantised with its speech codebook; texts
are tokenized with offsets (-> word starts). Pre-training builds every objective of the paper from each example
(speech: eq. 2; text: eq. 3; ASR/AST and MT: forward, backward and alignment, eq. 4-6); fine-tuning builds the
plain P(y|x) instances (no [MASK]). Masks come from a generator seeded per (seed, process, step), so a step's
instances do not depend on what ran before it (exact resumption).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from ..configuration_mu2slam import Mu2SlamConfig
from ..data.audio import decode_example
from ..pretraining import (
    Mu2SlamInstance,
    build_mt_pretraining,
    build_speech_only,
    build_speech_text_pretraining,
    build_speech_to_text_finetuning,
    build_text_only,
    build_text_to_text_finetuning,
    word_starts_from_offsets,
)
from ..processing_mu2slam import Mu2SlamProcessor


def step_generator(seed: int, process_index: int, step: int) -> torch.Generator:
    """The mask generator of one step of one process."""
    state = np.random.SeedSequence([seed, process_index, step]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class InstanceBuilder:
    """Turns examples into instances with one processor and model config.

    Args:
        processor: feature extractor, tokenizer, speech codebook and language list of the run.
        config: the model config (vocabulary layout, loss weights).
        stage: "pretrain" (masked objectives) or "finetune" (plain sequence-to-sequence).
        cache_features: keep (features, codes) per audio path in memory.
        decode_workers: threads decoding audio (0: in the calling thread).
    """

    def __init__(
        self,
        processor: Mu2SlamProcessor,
        config: Mu2SlamConfig,
        stage: str = "pretrain",
        cache_features: bool = True,
        decode_workers: int = 0,
    ):
        self.processor = processor
        self.config = config
        self.stage = stage
        self.cache: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = {} if cache_features else None
        self.pool = ThreadPoolExecutor(decode_workers) if decode_workers > 0 else None

    # ------------------------------------------------------------------------------------------ inputs

    def speech(self, examples: Sequence[dict[str, Any]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(features (T, F), codes (S,)) of each example's audio."""
        keys = [(example.get("audio") or {}).get("path") for example in examples]
        missing = [i for i, key in enumerate(keys) if self.cache is None or key is None or key not in self.cache]
        computed = dict(zip(missing, self._featurise([examples[i] for i in missing]), strict=True))
        results = []
        for index, key in enumerate(keys):
            if index in computed:
                results.append(computed[index])
                if self.cache is not None and key is not None:
                    self.cache[key] = computed[index]
            else:
                results.append(self.cache[key])
        return results

    def _featurise(self, examples: Sequence[dict[str, Any]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if not examples:
            return []
        decoded = list(self.pool.map(decode_example, examples)) if self.pool else [decode_example(e) for e in examples]
        clips = [example["audio"]["array"] for example in decoded]
        batch = self.processor.feature_extractor(clips, sampling_rate=16_000, return_tensors="pt")
        features, mask = batch["input_features"], batch["attention_mask"]
        codes = self.processor.speech_codes(features, mask)
        lengths = mask.sum(-1).tolist()
        output = []
        for index, frames in enumerate(lengths):
            positions = int(self.config.speech_output_lengths(frames))
            output.append((features[index, :frames].clone(), codes[index, :positions].clone()))
        return output

    def text(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids (L,) ending with eos, word starts (L,)) of one text."""
        encoded = self.processor.tokenizer(text, return_offsets_mapping=True)
        ids = torch.tensor(encoded["input_ids"])
        return ids, word_starts_from_offsets(text, encoded["offset_mapping"])

    def lang(self, code: str) -> int:
        return self.config.language_id(code)

    # --------------------------------------------------------------------------------------- instances

    def build(self, step: Mapping[str, Sequence[dict[str, Any]]], generator: torch.Generator) -> list[Mu2SlamInstance]:
        """Every instance of one mixture step, task by task in the order of ``step``."""
        instances = []
        for task, examples in step.items():
            speech = self.speech(examples) if task in ("speech", "asr", "ast") else [None] * len(examples)
            for example, audio in zip(examples, speech, strict=True):
                instances += self.build_example(task, example, audio, generator)
        return instances

    def build_example(
        self,
        task: str,
        example: dict[str, Any],
        audio: tuple[torch.Tensor, torch.Tensor] | None,
        generator: torch.Generator,
    ) -> list[Mu2SlamInstance]:
        """The instances of one example (``audio``: its features and codes for speech tasks)."""
        config, source = self.config, self.lang(example["source_lang"])
        target = self.lang(example.get("target_lang") or example["source_lang"])
        if self.stage == "finetune":
            return [self._finetune(task, example, audio, source, target)]
        if task == "speech":
            return [build_speech_only(config, *audio, source, generator)]
        if task == "text":
            return [build_text_only(config, *self.text(example["source_text"]), source, generator)]
        if task in ("asr", "ast"):
            ids, starts = self.text(example["target_text"])
            return build_speech_text_pretraining(config, *audio, ids, starts, source, target, generator, task=task)
        if task == "mt":
            src_ids, src_starts = self.text(example["source_text"])
            tgt_ids, tgt_starts = self.text(example["target_text"])
            return build_mt_pretraining(config, src_ids, src_starts, tgt_ids, tgt_starts, source, target, generator)
        raise ValueError(f"example {example.get('id')!r}: unknown task {task!r}")

    def _finetune(self, task: str, example: dict, audio, source: int, target: int) -> Mu2SlamInstance:
        target_ids, _ = self.text(example["target_text"])
        if task in ("asr", "ast"):
            return build_speech_to_text_finetuning(self.config, audio[0], target_ids, source, target, task=task)
        if task == "mt":
            source_ids, _ = self.text(example["source_text"])
            return build_text_to_text_finetuning(self.config, source_ids, target_ids, source, target)
        raise ValueError(f"example {example.get('id')!r}: fine-tuning has no task {task!r} (asr, ast, mt only)")
