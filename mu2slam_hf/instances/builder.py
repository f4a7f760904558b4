"""From examples in the data schema (manifest rows) to `Mu2SlamInstance` rows, for every task of both stages.

Audio is decoded, featurised with the processor's feature extractor and quantised with its speech codebook; texts
are tokenized with offsets (-> word starts). Pre-training builds every objective of the paper from each example
(speech: eq. 2; text: eq. 3; ASR/AST and MT: forward, backward and alignment, eq. 4-6); fine-tuning builds the
plain P(y|x) instances (no [MASK]). Masks come from the generator the caller passes: the training loop seeds one per
(seed, process, draw) (`mu2slam_hf.training.instance_stream`), so a draw's instances do not depend on what ran
before it (exact resumption), nor on which process builds them.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..configuration_mu2slam import Mu2SlamConfig
from ..data.audio import decode_example, draw_speed_factors, speed_perturb
from ..data.augmentation import AudioAugmentation, Corruptions
from ..data.schema import SPEECH_TASKS, SPEECH_TEXT_TASKS, target_language
from ..processing_mu2slam import Mu2SlamProcessor
from ..vocabulary import SAMPLING_RATE
from .masking import word_starts_from_offsets
from .objectives import (
    Mu2SlamInstance,
    build_mt_pretraining,
    build_speech_only,
    build_speech_text_pretraining,
    build_speech_to_text_finetuning,
    build_text_only,
    build_text_to_text_finetuning,
)

SILENCE_WITH_CLIP_NORMALIZATION = (
    "silence_padding_s adds silence frames to features already normalised by their clip's own statistics "
    "(features.normalize_means), which the silence would have changed: the two cannot be combined. Set "
    "silence_padding_s: 0, or train a model without per-clip normalisation."
)


class InstanceBuilder:
    """Turns examples into instances with one processor and model config.

    Args:
        processor: feature extractor, tokenizer, speech codebook and language list of the run.
        config: the model config (vocabulary layout, loss weights).
        stage: "pretrain" (masked objectives) or "finetune" (plain sequence-to-sequence).
        cache_features: keep (features, codes) per audio path in memory.
        ctc: fine-tuning: CTC targets on ASR rows (their transcript).
        ctc_ast_source: fine-tuning: CTC targets on AST rows from their ``source_text`` (the transcript of the
            audio), where the example has one.
        max_target_length: fine-tuning: truncate target texts to this many ids (eos kept).
        mt_source_mlm: fine-tuning: mask this fraction of each MT source's words (one whole-word span, corrupted
            as pre-training's text MLM) and give the encoder MLM targets there (0: plain MT). See `for_evaluation`.
        speed_perturbation: speed factors (e.g. ``(0.9, 1.0, 1.1)``); each clip of a training batch is played at one
            of them, drawn uniformly from the batch's generator (Kaldi's speed perturbation). The cache keeps each
            (clip, factor) it has featurised. Empty: the audio as it is. See `for_evaluation`.
        silence_padding_s: fine-tuning: silence of a length drawn uniformly from [0, s] seconds before each clip
            and after it (frames of the feature extractor's output for digital silence, added to the cached
            features). 0: the clips as they are. See `for_evaluation`.
        audio_augmentation: corruptions of training clips (reverberation, noise, telephone channel, gain), drawn per
            clip from the batch's generator; a corrupted clip is featurised afresh, a clean one comes from the
            cache. None: the audio as it is. See `for_evaluation`.
    """

    def __init__(
        self,
        processor: Mu2SlamProcessor,
        config: Mu2SlamConfig,
        stage: str = "pretrain",
        cache_features: bool = True,
        ctc: bool = True,
        ctc_ast_source: bool = False,
        max_target_length: int | None = None,
        mt_source_mlm: float = 0.0,
        speed_perturbation: Sequence[float] = (),
        silence_padding_s: float = 0.0,
        audio_augmentation: AudioAugmentation | None = None,
    ):
        if silence_padding_s and stage != "finetune":
            raise ValueError(
                "silence_padding_s is for fine-tuning: pre-training's targets are codes of the clips' frames."
            )
        if silence_padding_s and processor.feature_extractor.normalize_means:
            raise ValueError(SILENCE_WITH_CLIP_NORMALIZATION)
        self.processor = processor
        self.config = config
        self.stage = stage
        self.cache: dict[tuple[str, float], tuple[torch.Tensor, torch.Tensor]] | None = {} if cache_features else None
        self.ctc, self.ctc_ast_source, self.max_target_length = ctc, ctc_ast_source, max_target_length
        self.mt_source_mlm = mt_source_mlm
        self.speed_perturbation = tuple(speed_perturbation)
        self.silence_padding_s = silence_padding_s
        self.audio_augmentation = audio_augmentation if audio_augmentation and audio_augmentation.active else None
        self._silence_frame: torch.Tensor | None = None

    def for_evaluation(self) -> InstanceBuilder:
        """This builder without the training-only corruption of inputs (``mt_source_mlm``, ``speed_perturbation``,
        ``silence_padding_s``, ``audio_augmentation``): dev losses score the whole source and the audio as decoding sees them. Shares the
        feature cache."""
        evaluation = copy.copy(self)
        evaluation.mt_source_mlm = 0.0
        evaluation.speed_perturbation = ()
        evaluation.silence_padding_s = 0.0
        evaluation.audio_augmentation = None
        return evaluation

    # ------------------------------------------------------------------------------------------ inputs

    def speech(
        self, examples: Sequence[dict[str, Any]], generator: torch.Generator | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(features (T, F), codes (S,)) of each example's audio, at a speed drawn from ``generator`` (torch's
        global generator when None) when the builder has ``speed_perturbation``, corrupted by its draws of
        ``audio_augmentation``."""
        factors = self.speed_factors(len(examples), generator)
        rng, corrupted = self._augmentation_draws(len(examples), generator)
        keys = [
            ((example.get("audio") or {}).get("path") if corruptions is None else None, factor)
            for example, factor, corruptions in zip(examples, factors, corrupted, strict=True)
        ]
        cached = self.cache or {}
        missing = [i for i, key in enumerate(keys) if key[0] is None or key not in cached]
        featurised = self._featurise(
            [examples[i] for i in missing], [factors[i] for i in missing], [corrupted[i] for i in missing], rng
        )
        computed = dict(zip(missing, featurised, strict=True))
        results = []
        for index, key in enumerate(keys):
            if index in computed:
                results.append(computed[index])
                if self.cache is not None and key[0] is not None:
                    self.cache[key] = computed[index]
            else:
                results.append(cached[key])
        return self._pad_with_silence(results, generator) if self.silence_padding_s else results

    def _pad_with_silence(
        self, speech: list[tuple[torch.Tensor, torch.Tensor | None]], generator: torch.Generator | None
    ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Each clip's features `(T, F)` with `silence_padding_s` at most of silence frames before and after them
        (lengths drawn uniformly per clip and side)."""
        extractor = self.processor.feature_extractor
        if self._silence_frame is None:
            silence = np.zeros(SAMPLING_RATE, dtype=np.float32)  # one second
            frames = extractor(silence, sampling_rate=SAMPLING_RATE, return_tensors="pt")["input_features"][0]
            self._silence_frame = frames[frames.shape[0] // 2]  # away from the edges' padding
        most = round(self.silence_padding_s * SAMPLING_RATE / extractor.hop_length)
        lengths = torch.randint(most + 1, (len(speech), 2), generator=generator).tolist()
        return [
            (
                torch.cat([self._silence_frame.expand(before, -1), features, self._silence_frame.expand(after, -1)]),
                codes,
            )
            for (features, codes), (before, after) in zip(speech, lengths, strict=True)
        ]

    def speed_factors(self, count: int, generator: torch.Generator | None) -> list[float]:
        """One speed factor per clip: drawn uniformly from ``speed_perturbation``, else 1.0."""
        return draw_speed_factors(self.speed_perturbation, count, generator)

    def _augmentation_draws(
        self, count: int, generator: torch.Generator | None
    ) -> tuple[np.random.Generator | None, list[Corruptions | None]]:
        """The batch's numpy generator for ``audio_augmentation`` (seeded from ``generator``) and each clip's drawn
        corruptions (None: clean); (None, all None) without augmentation, drawing nothing from ``generator``."""
        if self.audio_augmentation is None:
            return None, [None] * count
        rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
        return rng, self.audio_augmentation.draw(count, rng)

    def _featurise(
        self,
        examples: Sequence[dict[str, Any]],
        factors: Sequence[float],
        corrupted: Sequence[Corruptions | None] = (),
        rng: np.random.Generator | None = None,
    ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """(features, codes) of each example played at its speed factor, the ``corrupted`` ones through
        ``audio_augmentation``; codes only for pre-training (fine-tuning has no speech targets). Precomputed
        ``input_features`` are used as they are."""
        precomputed = [e for e in examples if e.get("input_features") is not None]
        if precomputed and len(precomputed) < len(examples):
            raise ValueError("Pass `input_features` for every example of a batch or for none.")
        if precomputed and (self.speed_perturbation or self.audio_augmentation):
            raise ValueError(
                "speed_perturbation and audio_augmentation change the audio before its features are computed, but "
                "these examples carry precomputed `input_features`: pass the audio instead, or leave both unset."
            )
        if precomputed:
            features_list = [torch.as_tensor(np.asarray(e["input_features"]), dtype=torch.float32) for e in examples]
            return [(f, self._codes(f.unsqueeze(0), None)) for f in features_list]
        if not examples:
            return []
        clips = [
            speed_perturb(decode_example(example)["audio"]["array"], factor)
            for example, factor in zip(examples, factors, strict=True)
        ]
        if any(c is not None for c in corrupted):
            clips = [
                clip if corruptions is None else self.audio_augmentation.corrupt(clip, corruptions, index, clips, rng)
                for index, (clip, corruptions) in enumerate(zip(clips, corrupted, strict=True))
            ]
        batch = self.processor.feature_extractor(clips, sampling_rate=SAMPLING_RATE, return_tensors="pt")
        features, mask = batch["input_features"], batch["attention_mask"]
        codes = self._codes(features, mask)
        output = []
        for index, frames in enumerate(mask.sum(-1).tolist()):
            positions = int(self.config.speech_output_lengths(frames))
            row_codes = None if codes is None else codes[index, :positions].clone()
            output.append((features[index, :frames].clone(), row_codes))
        return output

    def _codes(self, features: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
        if self.stage == "finetune":
            return None
        codes = self.processor.speech_codes(features, mask)
        return codes[0] if mask is None else codes

    def text(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids (L,) ending with eos, word starts (L,)) of one text."""
        encoded = self.processor.tokenizer(text, return_offsets_mapping=True)
        ids = torch.tensor(encoded["input_ids"])
        return ids, word_starts_from_offsets(text, encoded["offset_mapping"])

    def target_ids(self, text: str) -> torch.Tensor:
        """(U,) ids of a fine-tuning target, ending with eos, truncated to ``max_target_length``."""
        ids = self.text(text)[0]
        limit = self.max_target_length
        if limit is not None and ids.shape[0] > limit:
            ids = torch.cat([ids[: limit - 1], ids[-1:]])
        return ids

    def lang(self, code: str) -> int:
        return self.config.language_id(code)

    # --------------------------------------------------------------------------------------- instances

    def build(self, step: Mapping[str, Sequence[dict[str, Any]]], generator: torch.Generator) -> list[Mu2SlamInstance]:
        """Every instance of one mixture step, task by task in the order of ``step``."""
        instances = []
        for task, examples in step.items():
            speech = self.speech(examples, generator) if task in SPEECH_TASKS else [None] * len(examples)
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
        target = self.lang(target_language(example))
        if self.stage == "finetune":
            return [self._finetune(task, example, audio, source, target, generator)]
        if task == "speech":
            return [build_speech_only(config, *audio, source, generator)]
        if task == "text":
            return [build_text_only(config, *self.text(example["source_text"]), source, generator)]
        if task in SPEECH_TEXT_TASKS:
            ids, starts = self.text(example["target_text"])
            return build_speech_text_pretraining(config, *audio, ids, starts, source, target, generator, task=task)
        if task == "mt":
            src_ids, src_starts = self.text(example["source_text"])
            tgt_ids, tgt_starts = self.text(example["target_text"])
            return build_mt_pretraining(config, src_ids, src_starts, tgt_ids, tgt_starts, source, target, generator)
        raise ValueError(f"example {example.get('id')!r}: unknown task {task!r}")

    def _finetune(
        self, task: str, example: dict, audio, source: int, target: int, generator: torch.Generator | None
    ) -> Mu2SlamInstance:
        target_ids = self.target_ids(example["target_text"])
        if task in SPEECH_TEXT_TASKS:
            ctc_ids = None
            if task == "asr" and self.ctc:
                ctc_ids = target_ids
            elif task == "ast" and self.ctc_ast_source and example.get("source_text"):
                ctc_ids = self.text(example["source_text"])[0]
            return build_speech_to_text_finetuning(
                self.config, audio[0], target_ids, source, target, task=task, ctc_text_ids=ctc_ids
            )
        if task == "mt":
            source_ids, word_starts = self.text(example["source_text"])
            masking = (word_starts, generator, self.mt_source_mlm) if self.mt_source_mlm else None
            return build_text_to_text_finetuning(self.config, source_ids, target_ids, source, target, masking=masking)
        raise ValueError(f"example {example.get('id')!r}: fine-tuning has no task {task!r} (asr, ast, mt only)")
