"""Mu2SlamProcessor: feature extractor + text tokenizer + frozen speech codebook, with language handling."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace
from typing import Any

import torch
from transformers import AutoProcessor, BatchFeature, ProcessorMixin
from transformers.utils import cached_file, logging

from .configuration_mu2slam import Mu2SlamConfig, check_saved_files, pretrained_location
from .feature_extraction_mu2slam import Mu2SlamFeatureExtractor
from .input_checks import TOKENIZER_FILES, verify_checksums
from .speech_codebook import CODEBOOK_CONFIG_NAME, CODEBOOK_WEIGHTS_NAME, Mu2SlamSpeechCodebook
from .tokenization_mu2slam import Mu2SlamTokenizer
from .vocabulary import (
    DEFAULT_LANGUAGES,
    IGNORE_INDEX,
    VocabularyLayout,
    check_vocabulary_matches,
    language_index,
    language_indices,
)

logger = logging.get_logger(__name__)

# What `from_pretrained` reads: the feature extractor's settings and the text tokenizer (processor_config.json, with
# the languages, and the speech codebook are read when present).
PROCESSOR_FILES = ("preprocessor_config.json", "tokenizer.json")


class Mu2SlamProcessor(ProcessorMixin):
    r"""
    One object for everything a Mu2SLAM model reads and writes:

    - `feature_extractor` ([`Mu2SlamFeatureExtractor`]): audio -> log-mel `input_features` + `attention_mask`;
    - `tokenizer` ([`Mu2SlamTokenizer`]): text <-> token ids (ids `[0, text_vocab_size)` of the vocabulary);
    - `speech_codebook` ([`Mu2SlamSpeechCodebook`], optional): log-mel -> one speech code per encoder frame,
      the targets of the speech objectives (saved as `speech_codebook.safetensors` + `.json`);
    - `languages`: the model's language codes, in language-embedding order.

    Example:
        ```python
        batch = processor(audio=[wav1, wav2], sampling_rate=16000, src_lang="fr", return_tensors="pt")
        ids = model.generate(**batch, tgt_lang="en")
        processor.batch_decode(ids, skip_special_tokens=True)
        ```
    """

    def __init__(
        self,
        feature_extractor: Mu2SlamFeatureExtractor,
        tokenizer: Mu2SlamTokenizer,
        speech_codebook: Mu2SlamSpeechCodebook | None = None,
        languages: list[str] | tuple[str, ...] = DEFAULT_LANGUAGES,
    ):
        self.speech_codebook = speech_codebook
        self.languages = list(languages)
        super().__init__(feature_extractor, tokenizer)

    # ------------------------------------------------------------------------------------ languages

    def language_id(self, code: str) -> int:
        """Language-embedding index of `code`, or a ValueError listing the known codes (`language_index`)."""
        return language_index(self.languages, code, owner="processor")

    def language_ids(self, codes: str | list[str], batch_size: int) -> torch.Tensor:
        """(B,) language ids from one code for the batch or one code per example (`language_indices`)."""
        return torch.tensor(language_indices(self.languages, codes, batch_size, owner="processor"))

    @property
    def vocabulary(self) -> VocabularyLayout:
        if self.speech_codebook is None:
            raise ValueError("This processor has no speech codebook, so its vocabulary layout is incomplete.")
        return VocabularyLayout(len(self.tokenizer), self.speech_codebook.codebook_size)

    # ----------------------------------------------------------------------------------- processing

    def __call__(
        self,
        audio: Any = None,
        text: str | list[str] | None = None,
        sampling_rate: int | None = None,
        src_lang: str | list[str] | None = None,
        tgt_lang: str | list[str] | None = None,
        text_target: str | list[str] | None = None,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """Featurise audio and/or tokenize text for the model.

        Args:
            audio: one clip or a list of clips (16 kHz unless `resample=True` is passed on to the extractor).
            text: the encoder's text input (MT, text understanding) when no audio is given.
            src_lang / tgt_lang: language codes -> `src_lang_ids` / `tgt_lang_ids` (B,).
            text_target: target text -> `labels` (B, U), padded with -100 (the decoder loss ignores it).
            kwargs: passed to the feature extractor (audio) or the tokenizer (text).
        Returns:
            `BatchFeature` with `input_features` (B, T, 80) + `attention_mask` (B, T), or `input_ids` (B, L) +
            `attention_mask` (B, L); plus `src_lang_ids`, `tgt_lang_ids`, `labels` when asked for.
        """
        if audio is None and text is None:
            raise ValueError("Nothing to process: pass `audio=` (speech) and/or `text=`.")
        check_not_empty(audio=audio, text=text, text_target=text_target)
        if audio is not None and text is not None:
            raise ValueError(
                "Pass either `audio` or `text` as the model input; a transcript or translation of the audio goes "
                "in `text_target=` (it becomes `labels`)."
            )
        if audio is not None:
            batch = self.feature_extractor(audio, sampling_rate=sampling_rate, return_tensors=return_tensors, **kwargs)
        else:
            self.warn_unknown_text(text, src_lang, "processor(text=...)")
            batch = BatchFeature(dict(self.tokenizer(text, padding=True, return_tensors=return_tensors, **kwargs)))
        size = len(batch["attention_mask"])
        if src_lang is not None:
            batch["src_lang_ids"] = self.language_ids(src_lang, size)
        if tgt_lang is not None:
            batch["tgt_lang_ids"] = self.language_ids(tgt_lang, size)
        if text_target is not None:
            self.warn_unknown_text(text_target, tgt_lang or src_lang, "processor(text_target=...)")
            batch["labels"] = self.encode_targets(text_target)
        return batch

    def warn_unknown_text(self, texts: str | list[str], languages: str | list[str] | None, where: str) -> None:
        """Log, per language, the texts holding characters the tokenizer writes as ``<unk>`` (see
        `Mu2SlamTokenizer.unknown_text_report`); silent when every character is known."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if languages is None or isinstance(languages, str):
            languages = [languages or "?"] * len(texts)
        report = self.tokenizer.unknown_text_report(zip(languages, texts, strict=False))
        if report:
            logger.warning(report.message(where))

    def encode_targets(self, texts: str | list[str]) -> torch.Tensor:
        """Target texts -> (B, U) label ids ending with eos, padded with -100."""
        encoded = self.tokenizer(texts if isinstance(texts, list) else [texts], padding=True, return_tensors="pt")
        return encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, IGNORE_INDEX)

    def speech_codes(self, input_features: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, 80) log-mel -> (B, S) speech codes in [0, codebook_size), -100 at padding; S = front-end length."""
        if self.speech_codebook is None:
            raise ValueError(
                "This processor has no speech codebook. Build one with `build_best_rq(...)` or `fit_kmeans(...)` "
                "and pass it as `Mu2SlamProcessor(..., speech_codebook=codebook)`."
            )
        return self.speech_codebook(input_features, attention_mask)

    def batch_decode(self, *args, **kwargs) -> list[str]:
        """Token ids -> texts (see `PreTrainedTokenizerFast.batch_decode`); speech codes are dropped."""
        return self.tokenizer.batch_decode(*self._text_only(args), **kwargs)

    def decode(self, *args, **kwargs) -> str:
        return self.tokenizer.decode(*self._text_only(args), **kwargs)

    def _text_only(self, args: tuple) -> tuple:
        """Replace speech-code ids (>= text_vocab_size) by pad so the text tokenizer never sees them."""
        if not args:
            return args
        ids = torch.as_tensor(args[0]) if not isinstance(args[0], torch.Tensor) else args[0]
        ids = ids.masked_fill(ids >= len(self.tokenizer), self.tokenizer.pad_token_id)
        return (ids, *args[1:])

    def check_model_config(self, config) -> None:
        """Raise a ValueError naming every way this processor and a model config disagree."""
        check_vocabulary_matches(
            config,
            text_vocab_size=len(self.tokenizer),
            codebook_size=None if self.speech_codebook is None else self.speech_codebook.codebook_size,
            languages=self.languages,
            num_mel_bins=self.feature_extractor.feature_size,
        )
        if self.speech_codebook is not None:
            self.speech_codebook.check_compatible(SimpleNamespace(**config) if isinstance(config, dict) else config)

    # ----------------------------------------------------------------------------------- save / load

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output.pop("speech_codebook", None)  # saved in its own safetensors + json files
        return output

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs) -> list[str]:
        files = super().save_pretrained(save_directory, push_to_hub=False)
        # AutoFeatureExtractor (the ASR pipeline, remote code) reads preprocessor_config.json, not processor_config.json
        files += self.feature_extractor.save_pretrained(save_directory)
        if self.speech_codebook is not None:
            files += self.speech_codebook.save_pretrained(save_directory)
        if push_to_hub:  # transformers' mechanism: saves again into a temporary folder and uploads it
            self.push_to_hub(kwargs.pop("repo_id", str(save_directory).split(os.path.sep)[-1]), **kwargs)
        return files

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, check_integrity: bool = True, **kwargs
    ) -> Mu2SlamProcessor:
        """Load the processor, its speech codebook when saved, and check it against the model config beside it.

        ``check_integrity``: compare tokenizer.json and the speech codebook with the checksums saved beside them
        (`mu2slam_hf.input_checks`); False (or ``MU2SLAM_SKIP_INTEGRITY_CHECKS=1``) skips it.
        """
        check_saved_files(pretrained_model_name_or_path, PROCESSOR_FILES, "processor")
        verify_checksums(pretrained_model_name_or_path, (*TOKENIZER_FILES, CODEBOOK_WEIGHTS_NAME), check_integrity)
        with pretrained_location(pretrained_model_name_or_path):
            processor = super().from_pretrained(
                pretrained_model_name_or_path, check_integrity=check_integrity, **kwargs
            )
        hub_kwargs = {k: kwargs[k] for k in ("revision", "token", "cache_dir", "local_files_only") if k in kwargs}
        codebook_json = cached_file(
            pretrained_model_name_or_path,
            CODEBOOK_CONFIG_NAME,
            _raise_exceptions_for_missing_entries=False,
            **hub_kwargs,
        )
        if codebook_json is not None:
            cached_file(pretrained_model_name_or_path, "speech_codebook.safetensors", **hub_kwargs)
            processor.speech_codebook = Mu2SlamSpeechCodebook.from_pretrained(os.path.dirname(codebook_json))
        config_file = cached_file(
            pretrained_model_name_or_path, "config.json", _raise_exceptions_for_missing_entries=False, **hub_kwargs
        )
        if config_file is not None:
            with open(config_file, encoding="utf-8") as handle:
                model_config = json.load(handle)
            if model_config.get("model_type") == "mu2slam":
                processor.check_model_config(model_config)
        return processor


def check_not_empty(**inputs: Any) -> None:
    """Raise a ValueError naming an input that is an empty list (or array): there is nothing to encode, and the
    tokenizers library would fail deep inside with an IndexError."""
    for name, value in inputs.items():
        if value is not None and not isinstance(value, str) and hasattr(value, "__len__") and len(value) == 0:
            raise ValueError(f"`{name}` is empty: pass at least one {'clip' if name == 'audio' else 'text'}.")


Mu2SlamProcessor.register_for_auto_class("AutoProcessor")
AutoProcessor.register(Mu2SlamConfig, Mu2SlamProcessor, exist_ok=True)

__all__ = ["Mu2SlamProcessor"]
