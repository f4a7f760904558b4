"""Fine-tuning Mu2SLAM with the Hugging Face `Trainer` / `Seq2SeqTrainer`: collators from the data schema,
`compute_metrics` for `predict_with_generate=True`, LoRA with PEFT, and sequence classification.

Example (ASR)::

    collator = Mu2SlamSeq2SeqCollator(processor, task="asr")
    args = Seq2SeqTrainingArguments(..., predict_with_generate=True, remove_unused_columns=False)
    trainer = Seq2SeqTrainer(model=model, args=args, data_collator=collator, train_dataset=train, eval_dataset=dev,
                             compute_metrics=make_compute_metrics(processor, "asr"))

`remove_unused_columns=False` is required: the collator reads the schema's columns (audio, texts, languages),
which are not arguments of the model's forward. The batch carries `src_lang_ids` / `tgt_lang_ids`, which
`Seq2SeqTrainer.prediction_step` passes on to `model.generate` with the rest of the batch (labels are ignored
there), so generation is conditioned on the right languages. Noisy fine-tuning and SpecAugment are switched on in
the model config (`decoder_noise_ratio`, `apply_spec_augment`) and act inside the model's training forward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from transformers import EvalPrediction

from .data.audio import decode_example
from .evaluation import METRICS_BY_TASK, score
from .modeling_mu2slam import IGNORE_INDEX, Mu2SlamForConditionalGeneration, Mu2SlamForSequenceClassification

SPEECH_TASKS = ("asr", "ast")
TEXT_TASKS = ("mt",)
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


# ------------------------------------------------------------------------------------------- seq2seq


class Mu2SlamSeq2SeqCollator:
    """Data-schema examples (ASR, AST or MT) -> keyword arguments of `Mu2SlamForConditionalGeneration.forward`.

    Speech examples use ``input_features`` ``(T, F)`` when present (precomputed), else their ``audio`` (decoded
    here from a path/bytes when needed). Returns (B rows, padded to the longest):

        input_features (B, T, F) + attention_mask (B, T)   for ASR / AST, or
        input_ids (B, L) + attention_mask (B, L)            for MT (the source text);
        src_lang_ids (B,), tgt_lang_ids (B,) (ASR: the source language), labels (B, U) ending with eos, -100 padded.

    Args:
        processor: the model's `Mu2SlamProcessor`.
        task: "asr", "ast" or "mt" for every example; None takes each example's ``task`` (one modality a batch).
        max_target_length: truncate labels to this many ids (eos kept); None keeps them whole.
        pad_to_multiple_of: round T / L / U up to a multiple of this.
    """

    def __init__(
        self,
        processor: Any,
        task: str | None = None,
        max_target_length: int | None = None,
        pad_to_multiple_of: int | None = None,
    ):
        if task is not None and task not in SPEECH_TASKS + TEXT_TASKS:
            raise ValueError(f"task must be one of {SPEECH_TASKS + TEXT_TASKS} or None, got {task!r}.")
        self.processor = processor
        self.task = task
        self.max_target_length = max_target_length
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("Cannot collate an empty list of examples.")
        tasks = [self.task or example["task"] for example in examples]
        speech = {task in SPEECH_TASKS for task in tasks}
        if len(speech) > 1 or not set(tasks) <= set(SPEECH_TASKS + TEXT_TASKS):
            raise ValueError(
                f"A batch needs ASR/AST examples only or MT examples only, got tasks {sorted(set(tasks))}."
            )
        batch = self._speech(examples) if speech.pop() else self._text(examples)
        src = [example["source_lang"] for example in examples]
        tgt = [
            s if task == "asr" else (e["target_lang"] or s) for e, s, task in zip(examples, src, tasks, strict=True)
        ]
        batch["src_lang_ids"] = self.processor.language_ids(src, len(examples))
        batch["tgt_lang_ids"] = self.processor.language_ids(tgt, len(examples))
        batch["labels"] = self._labels([example["target_text"] for example in examples])
        return batch

    def _round(self, length: int) -> int:
        multiple = self.pad_to_multiple_of
        return length if not multiple else -(-length // multiple) * multiple

    def _speech(self, examples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        features = [self._features(example) for example in examples]
        frames = self._round(max(f.shape[0] for f in features))
        padded = torch.full(
            (len(features), frames, features[0].shape[-1]), self.processor.feature_extractor.padding_value
        )
        for index, row in enumerate(features):
            padded[index, : row.shape[0]] = row
        lengths = torch.tensor([f.shape[0] for f in features])
        return {"input_features": padded, "attention_mask": (torch.arange(frames) < lengths[:, None]).long()}

    def _features(self, example: dict[str, Any]) -> torch.Tensor:
        """(T, F) log-mel features of one example: precomputed, or extracted from its audio."""
        if example.get("input_features") is not None:
            return torch.as_tensor(np.asarray(example["input_features"]), dtype=torch.float32)
        audio = decode_example(example)["audio"]
        extracted = self.processor.feature_extractor(
            audio["array"], sampling_rate=audio["sampling_rate"], return_tensors="pt"
        )
        return extracted["input_features"][0]

    def _text(self, examples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        texts = [example["source_text"] for example in examples]
        encoded = self.processor.tokenizer(
            texts, padding=True, pad_to_multiple_of=self.pad_to_multiple_of, return_tensors="pt"
        )
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def _labels(self, texts: list[str]) -> torch.Tensor:
        truncate = self.max_target_length is not None
        encoded = self.processor.tokenizer(
            texts,
            padding=True,
            truncation=truncate,
            max_length=self.max_target_length,
            pad_to_multiple_of=self.pad_to_multiple_of,
            return_tensors="pt",
        )
        return encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, IGNORE_INDEX)


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


# ---------------------------------------------------------------------------------------------- LoRA


def add_lora(
    model: Mu2SlamForConditionalGeneration,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.05,
    target_modules: Sequence[str] = DEFAULT_LORA_TARGETS,
    modules_to_save: Sequence[str] | None = None,
) -> Any:
    """Wrap `model` in a PEFT LoRA model (adapters on every attention projection by default); only the adapters
    (and `modules_to_save`) are trainable. The result trains with `Seq2SeqTrainer` and has `generate`."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        modules_to_save=list(modules_to_save) if modules_to_save else None,
    )
    return get_peft_model(model, config)


def merge_lora(model: Any) -> Mu2SlamForConditionalGeneration:
    """Fold the LoRA adapters into the weights and return the plain model (not a `PeftModel`), which
    `pipeline("automatic-speech-recognition")` accepts and `save_pretrained` saves as a normal checkpoint."""
    return model.merge_and_unload()


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
