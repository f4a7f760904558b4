"""Fine-tuning Mu2SLAM with transformers' `Trainer` / `Seq2SeqTrainer`: collators from the data schema,
`compute_metrics` for `predict_with_generate=True`, LoRA with PEFT, and sequence classification. (The package's
own Accelerate loop, behind `mu2slam-finetune`, is `mu2slam_hf.training.train`.)

Example (ASR)::

    model.config.ctc_loss_weight = 0.3   # joint CTC/attention fine-tuning (the recipes' value)
    collator = Mu2SlamSeq2SeqCollator(processor, model.config, task="asr")
    args = Seq2SeqTrainingArguments(..., predict_with_generate=True, remove_unused_columns=False)
    trainer = Seq2SeqTrainer(model=model, args=args, data_collator=collator, train_dataset=train, eval_dataset=dev,
                             compute_metrics=make_compute_metrics(processor, "asr"))

`remove_unused_columns=False` is required: the collator reads the schema's columns (audio, texts, languages),
which are not arguments of the model's forward. The batch carries `src_lang_ids` / `tgt_lang_ids`, which
`Seq2SeqTrainer.prediction_step` passes on to `model.generate` with the rest of the batch (`generate` ignores the
training-only keys), so generation is conditioned on the right languages. Noisy fine-tuning and SpecAugment are switched on in
the model config (`decoder_noise_ratio`, `apply_spec_augment`) and act inside the model's training forward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from transformers import EvalPrediction

from ..configuration_mu2slam import Mu2SlamConfig
from ..data.augmentation import AudioAugmentation
from ..data.schema import LABELLED_TASKS, SPEECH_TASKS
from ..evaluation import METRICS_BY_TASK, score
from ..instances import InstanceBuilder, Mu2SlamCollator
from ..lora import DEFAULT_LORA_TARGETS, add_lora, merge_lora
from ..modeling_mu2slam import Mu2SlamForSequenceClassification

# ------------------------------------------------------------------------------------------- seq2seq


class Mu2SlamSeq2SeqCollator:
    """Data-schema examples (ASR, AST or MT) -> keyword arguments of `Mu2SlamForConditionalGeneration.forward`.

    A thin wrapper over the training loop's own path (`InstanceBuilder` in fine-tuning mode, then `Mu2SlamCollator`),
    so `Seq2SeqTrainer` and `mu2slam-finetune` build the same batch from the same examples: same features and
    padding, same target language, same labels and the same CTC targets.

    Speech examples use ``input_features`` ``(T, F)`` when present (precomputed), else their ``audio`` (decoded
    here from a path/bytes when needed). Returns (B rows, padded to the longest):

        input_features (B, T, F) + attention_mask (B, T)   for ASR / AST, or
        input_ids (B, L) + attention_mask (B, L)            for MT (the source text);
        src_lang_ids (B,), tgt_lang_ids (B,) (ASR: the source language), tgt_modality_ids (B,) (text),
        decoder_input_ids (B, U), labels (B, U) ending with eos, -100 padded, example_weights (B,),
        ctc_labels (B, C) -100 padded: transcripts for the encoder's CTC loss (ASR rows; see ``ctc``).

    Args:
        processor: the model's `Mu2SlamProcessor`.
        config: the model's config (`model.config`): vocabulary layout, language ids, front-end lengths.
            The CTC loss is weighted by ``config.ctc_loss_weight`` (0.3 is the fine-tuning recipes' value).
        task: "asr", "ast" or "mt" for every example; None takes each example's ``task`` (one modality a batch).
        ctc: CTC targets on ASR rows.
        ctc_ast_source: CTC targets on AST rows from their ``source_text`` (the transcript), where present.
        mt_source_mlm: mask this fraction of each MT source's words and add the encoder's MLM loss there (the
            recipes' key of that name; from scratch, MT needs it). Masks are drawn from torch's global generator,
            and an evaluation collator should leave it at 0 so eval losses score the whole source.
        speed_perturbation: speed factors (e.g. ``(0.9, 1.0, 1.1)``): each clip is played at one of them, drawn
            from torch's global generator; leave it empty for an evaluation collator.
        silence_padding_s: silence of up to this many seconds before and after each clip (lengths drawn from torch's
            global generator; the recipes' key of that name); 0 for an evaluation collator.
        audio_augmentation: corruptions of the clips (reverberation, noise, telephone channel, gain; the recipes' key
            of that name), drawn from torch's global generator; None for an evaluation collator.
        max_target_length: truncate labels to this many ids (eos kept); None keeps them whole.
        pad_to_multiple_of: round T / L / U up to a multiple of this.
    """

    def __init__(
        self,
        processor: Any,
        config: Mu2SlamConfig,
        task: str | None = None,
        ctc: bool = True,
        ctc_ast_source: bool = False,
        max_target_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        mt_source_mlm: float = 0.0,
        speed_perturbation: Sequence[float] = (),
        silence_padding_s: float = 0.0,
        audio_augmentation: AudioAugmentation | None = None,
    ):
        if task is not None and task not in LABELLED_TASKS:
            raise ValueError(f"task must be one of {LABELLED_TASKS} or None, got {task!r}.")
        if not isinstance(config, Mu2SlamConfig):
            raise TypeError(f"config must be the model's Mu2SlamConfig (`model.config`), got {type(config).__name__}.")
        processor.check_model_config(config)
        self.task = task
        self.builder = InstanceBuilder(
            processor,
            config,
            stage="finetune",
            cache_features=False,
            ctc=ctc,
            ctc_ast_source=ctc_ast_source,
            max_target_length=max_target_length,
            mt_source_mlm=mt_source_mlm,
            speed_perturbation=speed_perturbation,
            silence_padding_s=silence_padding_s,
            audio_augmentation=audio_augmentation,
        )
        self.collator = Mu2SlamCollator(config, pad_to_multiple_of)

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("Cannot collate an empty list of examples.")
        examples = [{**example, "task": self.task or example["task"]} for example in examples]
        tasks = {example["task"] for example in examples}
        if not tasks <= set(LABELLED_TASKS) or len({task in SPEECH_TASKS for task in tasks}) > 1:
            raise ValueError(f"A batch needs ASR/AST examples only or MT examples only, got tasks {sorted(tasks)}.")
        speech = self.builder.speech(examples) if tasks <= set(SPEECH_TASKS) else [None] * len(examples)
        instances = [
            instance
            for example, audio in zip(examples, speech, strict=True)
            for instance in self.builder.build_example(example["task"], example, audio, generator=None)
        ]
        return self.collator(instances)


def decode_ids(processor: Any, ids: np.ndarray | torch.Tensor) -> list[str]:
    """(B, U) generated or label ids (-100 allowed) -> texts without special tokens."""
    ids = np.asarray(ids)
    ids = np.where(ids < 0, processor.tokenizer.pad_token_id, ids)
    return [text.strip() for text in processor.batch_decode(ids, skip_special_tokens=True)]


def make_compute_metrics(
    processor: Any, task: str, target_lang: str | None = None
) -> Callable[[EvalPrediction], dict[str, float]]:
    """A `compute_metrics` for `Trainer`/`Seq2SeqTrainer` (see `mu2slam_hf.evaluation` for the definitions).

    Args:
        processor: decodes predictions and labels (seq2seq tasks).
        task: "asr" (WER, CER; needs `predict_with_generate=True`), "ast"/"mt" (BLEU with the tokenizer of
            `target_lang`, chrF; `predict_with_generate=True`), or "classification" (accuracy from the logits).
        target_lang: the target language of an AST/MT evaluation set (picks the BLEU tokenizer).
    Returns:
        A function of an `EvalPrediction` returning e.g. ``{"wer": 12.3, "cer": 4.5}`` (percentages).
    """
    if task == "classification":
        return _classification_metrics
    if task not in METRICS_BY_TASK:
        raise ValueError(f"task must be one of {sorted(METRICS_BY_TASK)} or 'classification', got {task!r}.")

    def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
        predictions = prediction.predictions
        predictions = predictions[0] if isinstance(predictions, tuple) else predictions
        if np.asarray(predictions).ndim != 2:
            raise ValueError(
                f"Expected generated ids (batch, length), got shape {np.asarray(predictions).shape}: set "
                "`predict_with_generate=True` in Seq2SeqTrainingArguments."
            )
        hypotheses, references = decode_ids(processor, predictions), decode_ids(processor, prediction.label_ids)
        return {name: score(name, references, hypotheses, target_lang) for name in METRICS_BY_TASK[task]}

    return compute_metrics


def _classification_metrics(prediction: EvalPrediction) -> dict[str, float]:
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    predicted = np.asarray(logits).argmax(-1).tolist()
    return {"accuracy": score("accuracy", np.asarray(prediction.label_ids).tolist(), predicted)}


# ------------------------------------------------------------------------------------ classification


class Mu2SlamClassificationCollator:
    """XNLI-style examples -> keyword arguments of `Mu2SlamForSequenceClassification.forward`.

    A premise/hypothesis pair is encoded as ``premise </s> hypothesis </s>`` by the processor's tokenizer (its pair
    template); a single text when `text_pair_key` is None. Returns input_ids (B, L), attention_mask (B, L),
    src_lang_ids (B,) and labels (B,) when the examples have them.

    Args:
        processor: the model's `Mu2SlamProcessor`.
        text_key / text_pair_key / label_key / lang_key: field names of the examples (XNLI's by default).
        default_lang: language of examples without `lang_key`.
        max_length: truncate the encoded pair to this many ids.
    """

    def __init__(
        self,
        processor: Any,
        text_key: str = "premise",
        text_pair_key: str | None = "hypothesis",
        label_key: str = "label",
        lang_key: str = "language",
        default_lang: str | None = None,
        max_length: int | None = None,
    ):
        self.processor = processor
        self.text_key, self.text_pair_key, self.label_key = text_key, text_pair_key, label_key
        self.lang_key, self.default_lang, self.max_length = lang_key, default_lang, max_length

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        texts = [example[self.text_key] for example in examples]
        pairs = [example[self.text_pair_key] for example in examples] if self.text_pair_key else None
        encoded = self.processor.tokenizer(
            texts,
            pairs,
            padding=True,
            truncation=self.max_length is not None,
            max_length=self.max_length,
            return_tensors="pt",
        )
        languages = [example.get(self.lang_key) or self.default_lang for example in examples]
        if None in languages:
            raise ValueError(f"An example has no {self.lang_key!r} and no default_lang was given.")
        batch = {
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
            "src_lang_ids": self.processor.language_ids(languages, len(examples)),
        }
        if all(example.get(self.label_key) is not None for example in examples):
            batch["labels"] = torch.tensor([int(example[self.label_key]) for example in examples])
        return batch


def classification_model_from_pretrained(
    pretrained_model_name_or_path: str, num_labels: int, **kwargs
) -> Mu2SlamForSequenceClassification:
    """A sequence classifier whose encoder (and shared embedding) come from a Mu2SLAM seq2seq checkpoint; the
    decoder is dropped and the pooler/classifier are newly initialised (direct fine-tuning, paper 2.4)."""
    return Mu2SlamForSequenceClassification.from_pretrained(
        pretrained_model_name_or_path, num_labels=num_labels, **kwargs
    )


__all__ = [
    "DEFAULT_LORA_TARGETS",
    "Mu2SlamClassificationCollator",
    "Mu2SlamSeq2SeqCollator",
    "add_lora",
    "classification_model_from_pretrained",
    "decode_ids",
    "make_compute_metrics",
    "merge_lora",
]
