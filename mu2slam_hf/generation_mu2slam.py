"""Generation for Mu2SLAM, kept beside the network as transformers keeps Whisper's (`generation_whisper.py`).

`Mu2SlamGenerationMixin` is everything `Mu2SlamForConditionalGeneration` does at inference besides its forward:
the routes inside `generate` (the attention decoder, joint CTC/attention scoring, the CTC head alone with or without
its n-gram language model), CTC decoding and alignment, attaching that language model, and spoken-language
identification. Shapes as in `modeling_mu2slam.py`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch
from torch.nn import functional as F
from transformers import GenerationMixin
from transformers.cache_utils import EncoderDecoderCache
from transformers.generation import LogitsProcessor, LogitsProcessorList
from transformers.modeling_outputs import ModelOutput
from transformers.utils import cached_file, logging

from .asr_decoding import DEFAULT_CTC_BEAMS, DEFAULT_LM_LENGTH_BONUS, DEFAULT_LM_WEIGHT, AsrDecodingOptions
from .ctc_decoding import (
    CTCPrefixLogitsProcessor,
    ctc_forced_align,
    ctc_greedy_decode,
    ctc_prefix_beam_search,
    ctc_token_spans,
)
from .input_checks import RangeCheck, check_finite, check_ranges, language_check, resolve_language_ids
from .ngram_lm import LM_FILE_NAME, CharNgramLanguageModel
from .vocabulary import (
    BOS_ID,
    EOS_ID,
    IGNORE_INDEX,
    MASK_ID,
    PAD_ID,
    SPEECH_MODALITY,
    TEXT_MODALITY,
    language_indices,
)

if TYPE_CHECKING:
    from .modeling_mu2slam import Mu2SlamEncoderOutput

logger = logging.get_logger(__name__)

# Keys of a collated training batch that generation does not take (a Seq2SeqTrainer batch goes to generate as is).
TRAINING_ONLY_KEYS = ("labels", "decoder_input_ids", "decoder_attention_mask", "mlm_labels", "ctc_labels",
                      "example_weights", "speech_mlm_mask", "language_labels")  # fmt: skip
# `generate` options of translation decoding that a fine-tuning run chooses on dev (training.translation_decoding).
TRANSLATION_DECODING_KEYS = ("num_beams", "no_repeat_ngram_size", "length_penalty", "repetition_penalty",
                             "max_length_ratio")  # fmt: skip
# Tokens a row may generate beyond `max_length_ratio` times its source positions: room for a short source's
# longer translation ("Ja." -> "Yes, it is.").
SOURCE_LENGTH_SLACK = 10


class Mu2SlamEncoderDecoderCache(EncoderDecoderCache):
    """The decoder's cache. Beam search reorders only the self-attention keys and values: every beam of an utterance
    holds the same cross-attention ones (computed from its encoder output, repeated per beam), and a beam is only ever
    replaced by a beam of the same utterance, so reordering them copied (B * beams, heads, E, head_dim) tensors twice
    per layer and step for nothing (45% of the beam search's decoding time at 5 beams on 10 s clips)."""

    def reorder_cache(self, beam_idx: torch.LongTensor):
        self.self_attention_cache.reorder_cache(beam_idx)


class Mu2SlamModalityLogitsProcessor(LogitsProcessor):
    """Keeps generation inside one modality: text tokens (+ eos) or speech codes (+ eos), never the other."""

    def __init__(self, allowed_ids: range, vocab_size: int, eos_token_id: int = EOS_ID):
        self.allowed = torch.zeros(vocab_size, dtype=torch.bool)
        self.allowed[allowed_ids.start : allowed_ids.stop] = True
        self.allowed[eos_token_id] = True

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        allowed = self.allowed.to(scores.device)[: scores.shape[-1]]
        return scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)


class Mu2SlamSourceLengthLogitsProcessor(LogitsProcessor):
    """Ends each row once it has generated ``limits[row]`` tokens (only eos is left to choose): a length limit
    relative to its own source, so a translation that stops reading its source cannot run on to the model's
    `max_new_tokens` while the batch's other rows have long finished.

    ``limits`` is `(B,)`; under beam search the rows are `(B * beams,)`, each utterance's beams in turn."""

    def __init__(self, limits: torch.LongTensor, eos_token_id: int = EOS_ID):
        self.limits = limits
        self.eos_token_id = eos_token_id
        self.prompt_length: int | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.prompt_length is None:  # the first step sees the decoder prompt alone, and every beam's row
            self.prompt_length = input_ids.shape[1]
            beams = input_ids.shape[0] // self.limits.shape[0]
            self.limits = self.limits.to(scores.device).repeat_interleave(beams)
        done = (input_ids.shape[1] - self.prompt_length) >= self.limits
        if not bool(done.any()):
            return scores
        ended = torch.full_like(scores[done], torch.finfo(scores.dtype).min)
        ended[:, self.eos_token_id] = 0.0
        scores = scores.clone()
        scores[done] = ended
        return scores


def source_positions(encoder_outputs: Mu2SlamEncoderOutput) -> torch.LongTensor:
    """(B,) the real source positions of each row of ``encoder_outputs``: its speech positions for speech input,
    its text positions for text input. The unit `max_length_ratio` counts in."""
    mask = encoder_outputs.attention_mask
    if encoder_outputs.speech_length:
        mask = mask[:, : encoder_outputs.speech_length]
    return mask.sum(dim=1)


def source_length_limits(
    encoder_outputs: Mu2SlamEncoderOutput, max_length_ratio: float | dict[str, float] | None, speech: bool
) -> torch.LongTensor | None:
    """(B,) `ceil(ratio * source positions) + SOURCE_LENGTH_SLACK` tokens per row; ``max_length_ratio`` is one
    ratio, or one per input modality (``{"speech": 0.3, "text": 2.0}``, as translation decoding saves it). None
    (no limit) without a ratio, or where the dict has none for this input's modality: a decoding chosen on MT dev
    rows alone, say, limits text input only."""
    if max_length_ratio is None:
        return None
    if isinstance(max_length_ratio, dict):
        unknown = set(max_length_ratio) - {"speech", "text"}
        if unknown:
            raise ValueError(f"max_length_ratio takes a ratio per input modality, 'speech' and 'text'; not {unknown}.")
        max_length_ratio = max_length_ratio.get("speech" if speech else "text")
        if max_length_ratio is None:
            return None
    if max_length_ratio < 0:
        raise ValueError(f"max_length_ratio must be at least 0, got {max_length_ratio}.")
    return torch.ceil(source_positions(encoder_outputs) * float(max_length_ratio)).long() + SOURCE_LENGTH_SLACK


class Mu2SlamGenerationMixin(GenerationMixin):
    """`generate` and the other decoding methods of `Mu2SlamForConditionalGeneration` (which holds the network:
    `self.model`, `self.ctc_head`, `self.language_id_head`, `self.asr_language_model`)."""

    def _language_ids(self, code: str | list[str] | None, batch: int, device: torch.device) -> torch.Tensor | None:
        if code is None:
            return None
        return torch.tensor(language_indices(self.config.languages, code, batch), device=device)

    # ------------------------------------------------------------------------- spoken language identification

    @torch.no_grad()
    def detect_language(
        self, input_features: torch.FloatTensor, attention_mask: torch.LongTensor | None = None, **kwargs
    ) -> tuple[list[str], torch.FloatTensor]:
        """The spoken language of each clip: (the most probable code per clip, `(B, num_languages)` probabilities in
        the order of `config.languages`). Takes the processor's output; other keys are ignored."""
        probabilities = self.language_logits(input_features, attention_mask).float().softmax(-1)
        return [self.config.languages[i] for i in probabilities.argmax(-1).tolist()], probabilities

    def _detected_language_ids(
        self, input_features: torch.Tensor, attention_mask: torch.Tensor | None, threshold: float | None = None
    ) -> torch.LongTensor:
        """(B,) ids of the detected languages; a ValueError naming the clips whose best language is less probable
        than `threshold` (default `config.language_detection_threshold`) rather than a guess."""
        if self.language_id_head is None:
            raise ValueError(
                f"`src_lang` is required: this model knows {self.config.num_languages} languages "
                f"({', '.join(self.config.languages)}) and has no language-identification head to detect them. Pass "
                "`src_lang=` (a code, or one per clip), or train a head with configuration/recipes/language-id.yaml."
            )
        threshold = self.config.language_detection_threshold if threshold is None else threshold
        _, probabilities = self.detect_language(input_features, attention_mask)
        best, ids = probabilities.max(-1)
        unsure = (best < threshold).nonzero().flatten().tolist()
        if unsure:
            guesses = []
            for row in unsure[:4]:
                values, indices = probabilities[row].topk(min(2, probabilities.shape[-1]))
                pairs = zip(values.tolist(), indices.tolist(), strict=True)
                shown = ", ".join(f"{self.config.languages[i]} {p:.2f}" for p, i in pairs)
                guesses.append(f"clip {row}: {shown}")
            raise ValueError(
                f"Could not identify the spoken language of {len(unsure)} clip(s) with probability >= {threshold:g} "
                f"({'; '.join(guesses)}). Pass `src_lang=` for them, or a lower `language_detection_threshold`."
            )
        return ids

    def _source_language_ids(
        self,
        src_lang: str | list[str] | None,
        src_lang_ids: torch.Tensor | None,
        reference: torch.Tensor,
        input_features: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        threshold: float | None = None,
    ) -> torch.Tensor | None:
        """(B,) source language ids (B = `reference.shape[0]`): given as ids or codes; for speech of a multilingual
        model without them, detected by the language-identification head; else None (one-language models need none).
        """
        if src_lang_ids is not None:
            return src_lang_ids
        if src_lang is not None or input_features is None or self.config.num_languages == 1:
            return self._language_ids(src_lang, reference.shape[0], reference.device)
        return self._detected_language_ids(input_features, attention_mask, threshold)

    def ctc_log_probs(self, encoder_outputs: Mu2SlamEncoderOutput) -> tuple[torch.Tensor, torch.Tensor]:
        """CTC log-probabilities `(B, S * config.ctc_upsampling, text_vocab_size)` (blank = <pad>) of the speech
        positions' label slots, and their `(B,)` real lengths."""
        speech_length = encoder_outputs.speech_length or 0
        if speech_length == 0:
            raise ValueError("CTC decoding needs speech input (`input_features`): the CTC head reads speech frames.")
        states = encoder_outputs.last_hidden_state[:, :speech_length]
        logits = self.ctc_head(states, self.model.shared.weight).float()
        frames = encoder_outputs.attention_mask[:, :speech_length].sum(-1)
        return F.log_softmax(logits, dim=-1), self.ctc_head.slot_lengths(frames)

    @torch.no_grad()
    def ctc_greedy_decode(
        self,
        input_features: torch.FloatTensor,
        attention_mask: torch.LongTensor | None = None,
        src_lang: str | list[str] | None = None,
        src_lang_ids: torch.LongTensor | None = None,
        **kwargs,
    ) -> torch.LongTensor:
        """Transcribe with the encoder's CTC head alone (best path; no decoder): fast, and the first decoder to
        learn in training. Takes the processor's output like `generate`; extra keys (`tgt_lang_ids`...) are ignored.

        Returns:
            `(B, L)` text token ids padded with <pad> (decode with `processor.batch_decode(...,
            skip_special_tokens=True)`).
        """
        return self._ctc_best_paths(self._encode_speech(input_features, attention_mask, src_lang, src_lang_ids))

    def _encode_speech(
        self,
        input_features: torch.Tensor,
        attention_mask: torch.Tensor | None,
        src_lang: str | list[str] | None,
        src_lang_ids: torch.Tensor | None,
    ) -> Mu2SlamEncoderOutput:
        """The encoder's output for speech input, the language given by code(s) or ids (or detected)."""
        src_lang_ids = self._source_language_ids(
            src_lang, src_lang_ids, input_features, input_features, attention_mask
        )
        return self.model.encoder(
            input_features=input_features, attention_mask=attention_mask, src_lang_ids=src_lang_ids
        )

    def _ctc_best_paths(self, encoder_outputs: Mu2SlamEncoderOutput, bos: int | None = None) -> torch.LongTensor:
        """`(B, L)` CTC best-path token ids padded with <pad>, each row after `bos` and ending with eos when `bos` is
        given (the layout of `generate`'s output)."""
        log_probs, lengths = self.ctc_log_probs(encoder_outputs)
        rows = ctc_greedy_decode(log_probs, lengths, blank=self.config.pad_token_id)
        if bos is not None:
            rows = [[bos, *row, self.config.eos_token_id] for row in rows]
        return self._padded_ids(rows, log_probs.device)

    def _padded_ids(self, rows: list[list[int]], device: torch.device) -> torch.LongTensor:
        ids = torch.full((len(rows), max(1, max(len(r) for r in rows))), self.config.pad_token_id, dtype=torch.long)
        for index, row in enumerate(rows):
            ids[index, : len(row)] = torch.tensor(row, dtype=torch.long)
        return ids.to(device)

    @torch.no_grad()
    def ctc_align(
        self,
        input_features: torch.FloatTensor,
        attention_mask: torch.LongTensor | None = None,
        src_lang: str | list[str] | None = None,
        src_lang_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        encoder_outputs: Mu2SlamEncoderOutput | None = None,
        **kwargs,
    ) -> list[list[tuple[int, int, int]]]:
        """The tokens of each clip with the CTC frames the CTC head puts them at: `(token, start, end)`, frames
        `[start, end)` (its label slots: `config.ctc_upsampling` to an encoder frame; `ctc_decoding.FrameClock` turns
        them into seconds).

        Without `labels`, the CTC head's own transcript (its best path, as `ctc_greedy_decode`). With `labels`
        `(B, L)` (a transcript per clip, e.g. `generate`'s output), the best alignment of each row's text tokens
        (Viterbi over the CTC lattice); pad, bos, eos, [MASK] and -100 are skipped. `encoder_outputs` of these
        clips, when the caller has them (e.g. from `generate(..., return_dict_in_generate=True)`), spare a second
        encoder pass. Extra keys are ignored.
        """
        if labels is not None:
            check_ranges(RangeCheck("labels", labels, self.config.text_vocab_size, allow_ignore=True))
        if encoder_outputs is None:
            encoder_outputs = self._encode_speech(input_features, attention_mask, src_lang, src_lang_ids)
        log_probs, lengths = self.ctc_log_probs(encoder_outputs)
        blank, skipped = self.config.pad_token_id, {IGNORE_INDEX, PAD_ID, BOS_ID, EOS_ID, MASK_ID}
        alignments = []
        for row, length in enumerate(lengths.tolist()):
            if labels is None:
                path = log_probs[row, :length].argmax(-1)
            else:
                tokens = [token for token in labels[row].tolist() if token not in skipped]
                path = ctc_forced_align(log_probs[row, :length], tokens, blank=blank)
            alignments.append(ctc_token_spans(path, blank=blank))
        return alignments

    @torch.no_grad()
    def generate(
        self,
        input_features: torch.FloatTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        input_ids: torch.LongTensor | None = None,
        src_lang: str | list[str] | None = None,
        tgt_lang: str | list[str] | None = None,
        tgt_modality: str = "text",
        src_lang_ids: torch.LongTensor | None = None,
        tgt_lang_ids: torch.LongTensor | None = None,
        logits_processor: LogitsProcessorList | None = None,
        ctc_weight: float | None = None,
        language_detection_threshold: float | None = None,
        lm_weight: float | None = None,
        lm_length_bonus: float | None = None,
        **kwargs,
    ) -> torch.LongTensor:
        r"""
        Generate text (ASR: `tgt_lang == src_lang`, the default; AST: another `tgt_lang`; MT from `input_ids`)
        or speech codes (`tgt_modality="speech"`). Tokens of the other modality can never be produced.

        Args:
            input_features (`(B, T, num_mel_bins)`) + attention_mask (`(B, T)`): speech input; or
            input_ids (`(B, L)`) + attention_mask (`(B, L)`): text input.
            src_lang / tgt_lang: language codes (one for the batch, or one per example), or the
                `*_lang_ids` tensors directly. Speech without `src_lang` is identified by the language-identification
                head when the model has one (`detect_language`); `tgt_lang` then defaults to the detected language.
            language_detection_threshold: the lowest probability a detected language may have (default
                `config.language_detection_threshold`); a clip below it is a ValueError, never a guess.
            ctc_weight: joint CTC/attention decoding for ASR (0.3 is ESPnet's usual weight): every step scores
                the decoder's best tokens by `(1 - w) log p_att + w log p_ctc(prefix)`, which keeps the output
                aligned with the audio (no repeated or dropped words). Works with greedy and beam search; 1 is a
                CTC-only prefix search. Default: the model's `asr_decoding.ctc_weight` when every row is ASR (speech
                in, text out, `tgt_lang == src_lang`), else 0; fine-tuning sets it to the decoder dev scored best, and
                without it (0) the attention decoder decodes alone.
            lm_weight / lm_length_bonus: with `ctc_weight=1`, the CTC head's prefix beam search (`num_beams` wide,
                default `asr_decoding.ctc_beams`) adds `lm_weight * log p_lm + lm_length_bonus` per token from the
                model's character n-gram language model of each row's language (`set_asr_language_model`), which
                fixes the spelling the CTC head gets wrong. Default: `asr_decoding.lm_weight` / `lm_length_bonus`
                when the model has a language model, else 0. With `0 < ctc_weight < 1` the
                same terms join the joint CTC/attention score of each candidate token (shallow fusion, ESPnet's
                decoding with an LM); there they default to 0.
            max_length_ratio: a length limit per row relative to its source (translation decoding): at most
                `ceil(ratio * source positions) + SOURCE_LENGTH_SLACK` new tokens, the positions being the encoder's
                speech positions (speech in) or text positions (text in); a dict gives one ratio per input modality
                (`{"speech": ..., "text": ...}`; a modality it leaves out has no limit). A fine-tuning run with
                `choose_translation_decoding` fits it on dev and saves it with the model's translation decoding.
                Default: none (`max_new_tokens` alone).
            kwargs: anything `GenerationMixin.generate` takes (`num_beams`, `max_new_tokens`, `encoder_outputs` of
                these inputs, ...); the training-only keys of a collated batch (`labels`, `ctc_labels`, ...) are
                ignored, so a `Seq2SeqTrainer` batch can be passed as it is.
        Returns:
            `(B, U)` ids, the decoder start token first (or `generate`'s dict with `return_dict_in_generate=True`).
        """
        reference = self._generation_input(input_features, input_ids, kwargs)
        batch, device = reference.shape[0], reference.device
        src_lang_ids = self._source_language_ids(
            src_lang, src_lang_ids, reference, input_features, attention_mask, language_detection_threshold
        )
        if tgt_lang_ids is None:
            tgt_lang_ids = self._language_ids(tgt_lang, batch, device)
        modality = self._target_modality(tgt_modality, kwargs.pop("tgt_modality_ids", None))
        encoder_outputs = self._generation_encoder_outputs(
            kwargs, input_features, attention_mask, input_ids, src_lang_ids
        )
        tgt_lang_ids = self._target_language_ids(tgt_lang_ids, src_lang_ids, batch, device)
        processors = self._modality_processors(logits_processor, modality)
        if ctc_weight is None:
            ctc_weight = self._default_ctc_weight(input_features, src_lang_ids, tgt_lang_ids, modality)
        if ctc_weight == 1.0 and input_features is not None and self._returns_ids_only(kwargs):
            # The CTC head alone needs no decoder: its best path (greedy) or a frame-synchronous prefix beam search,
            # far faster than transformers' token-by-token beam search, which runs the decoder at every step.
            self._check_asr_rows(src_lang_ids, tgt_lang_ids)
            return self._ctc_search(encoder_outputs, src_lang_ids, kwargs.get("num_beams"), lm_weight, lm_length_bonus)
        if ctc_weight or lm_weight or lm_length_bonus:
            fusion = (src_lang_ids, tgt_lang_ids, ctc_weight, kwargs, lm_weight, lm_length_bonus)
            processors.append(self._ctc_prefix_processor(encoder_outputs, *fusion))
        options = self._with_translation_decoding(kwargs, input_features, src_lang_ids, tgt_lang_ids)
        limits = source_length_limits(
            encoder_outputs, options.pop("max_length_ratio", None), speech=input_features is not None
        )
        if limits is not None:
            processors.append(Mu2SlamSourceLengthLogitsProcessor(limits, self.config.eos_token_id))
        generated = super().generate(
            encoder_outputs=encoder_outputs,
            tgt_lang_ids=tgt_lang_ids,
            tgt_modality_ids=torch.full((batch,), modality, dtype=torch.long, device=device),
            logits_processor=processors,
            **options,
        )
        self._warn_if_cut_at_length_limit(generated, kwargs)
        return generated

    @staticmethod
    def _generation_input(
        input_features: torch.Tensor | None, input_ids: torch.Tensor | None, generate_kwargs: dict
    ) -> torch.Tensor:
        """The one input of `generate` (speech or text, finite); drops the training-only keys of a collated batch."""
        check_finite(input_features, "input_features")
        if input_features is not None and input_ids is not None:
            raise ValueError("Pass either `input_features` (speech) or `input_ids` (text) to `generate`, not both.")
        reference = input_features if input_features is not None else input_ids
        if reference is None:
            raise ValueError("No input: pass `input_features` (speech) or `input_ids` (text) to `generate`.")
        for key in TRAINING_ONLY_KEYS:
            generate_kwargs.pop(key, None)
        return reference

    def _target_language_ids(
        self, tgt_lang_ids: torch.Tensor | None, src_lang_ids: torch.Tensor | None, batch: int, device: torch.device
    ) -> torch.Tensor:
        """(B,) checked target language ids: the given ones, else the source language's (transcription)."""
        if tgt_lang_ids is None:
            tgt_lang_ids = src_lang_ids
        tgt_lang_ids = resolve_language_ids(self.config, tgt_lang_ids, batch, device, "tgt_lang (or src_lang)")
        check_ranges(language_check(self.config, tgt_lang_ids, "tgt_lang (or src_lang)"))
        return tgt_lang_ids

    def _target_modality(self, tgt_modality: str, requested: torch.Tensor | None) -> int:
        """The modality id of `tgt_modality`; `tgt_modality_ids` of a collated batch must agree with it."""
        modality = self.config.modality_id(tgt_modality)
        if requested is not None and bool((torch.as_tensor(requested) != modality).any()):
            raise ValueError(f"`tgt_modality_ids` disagree with tgt_modality={tgt_modality!r}: pass one of them.")
        return modality

    def _generation_encoder_outputs(
        self,
        generate_kwargs: dict,
        input_features: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        input_ids: torch.Tensor | None,
        src_lang_ids: torch.Tensor | None,
    ) -> Mu2SlamEncoderOutput:
        """The caller's `encoder_outputs` (popped from `generate_kwargs`, in a new container), or a new encoder pass."""
        recorded = {
            key: generate_kwargs[key]
            for key in ("output_attentions", "output_hidden_states")
            if key in generate_kwargs
        }
        encoder_outputs = generate_kwargs.pop("encoder_outputs", None)
        if isinstance(encoder_outputs, ModelOutput):
            # A new container: beam search expands its tensors in place, which would leave the caller's encoder
            # outputs num_beams times as long (and a second call with them failing on the batch size).
            return type(encoder_outputs)(**dict(encoder_outputs.items()))
        if encoder_outputs is not None:
            return encoder_outputs
        return self.model.encoder(
            input_features=input_features,
            attention_mask=attention_mask,
            input_ids=input_ids,
            src_lang_ids=src_lang_ids,
            return_dict=True,
            **recorded,
        )

    def _modality_processors(self, logits_processor: LogitsProcessorList | None, modality: int) -> LogitsProcessorList:
        """The caller's logits processors, then the one that keeps the output in the target modality."""
        vocab = self.config.vocabulary
        allowed = vocab.speech_code_ids() if modality == SPEECH_MODALITY else vocab.text_token_ids()
        processors = LogitsProcessorList(logits_processor or [])
        processors.append(Mu2SlamModalityLogitsProcessor(allowed, self.config.vocab_size, self.config.eos_token_id))
        return processors

    def _prepare_cache_for_generation(self, generation_config, model_kwargs: dict, *args, **kwargs):
        """transformers' cache for `generate`, as a `Mu2SlamEncoderDecoderCache` (a cache the caller passes is kept)."""
        super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)
        cache = model_kwargs.get("past_key_values")
        if type(cache) is EncoderDecoderCache and not getattr(cache, "_is_user_defined", False):
            model_kwargs["past_key_values"] = Mu2SlamEncoderDecoderCache(
                cache.self_attention_cache, cache.cross_attention_cache
            )

    def _warn_if_cut_at_length_limit(self, generated: torch.LongTensor | ModelOutput, generate_kwargs: dict) -> None:
        """Warn about outputs that the generation config's default length limit (no length given in
        `generate_kwargs`) stopped before their end-of-sequence token: a transcript or translation cut short would
        otherwise look complete."""
        if any(key in generate_kwargs for key in ("max_new_tokens", "max_length", "generation_config")):
            return
        sequences = generated.sequences if isinstance(generated, ModelOutput) else generated
        limit = self.generation_config.max_new_tokens
        if limit is None or sequences.shape[1] - 1 < limit:
            return
        finished = (sequences[:, 1:] == self.config.eos_token_id).any(dim=1)
        cut = int((~finished).sum())
        if cut:
            logger.warning(
                f"{cut} of {sequences.shape[0]} outputs reached the {limit}-token limit (max_new_tokens of the "
                "generation config) without ending: they are cut short. Split long audio into shorter pieces (the "
                "ASR pipeline's chunk_length_s) or pass a larger max_new_tokens."
            )

    def _all_rows_asr(self, src_lang_ids: torch.Tensor | None, tgt_lang_ids: torch.Tensor) -> bool:
        """Whether every row transcribes (target language = source language)."""
        source = resolve_language_ids(self.config, src_lang_ids, tgt_lang_ids.shape[0], tgt_lang_ids.device, "src")
        return bool((source == tgt_lang_ids).all())

    def _check_asr_rows(self, src_lang_ids: torch.Tensor | None, tgt_lang_ids: torch.Tensor) -> None:
        if not self._all_rows_asr(src_lang_ids, tgt_lang_ids):
            raise ValueError(
                "ctc_weight > 0 is for speech recognition (tgt_lang == src_lang): the CTC head transcribes the "
                "audio, so it cannot score a translation. Use ctc_weight=0 for speech translation."
            )

    def _returns_ids_only(self, generate_kwargs: dict) -> bool:
        """A search returning only ids (no sampling, scores or dict outputs)."""
        sample = generate_kwargs.get("do_sample", self.generation_config.do_sample)
        extras = ("return_dict_in_generate", "output_scores", "output_logits", "logits_processor", "generation_config")
        return not sample and not any(generate_kwargs.get(key) for key in extras)

    def _ctc_search(
        self,
        encoder_outputs: Mu2SlamEncoderOutput,
        src_lang_ids: torch.Tensor,
        num_beams: int | None,
        lm_weight: float | None,
        length_bonus: float | None,
    ) -> torch.LongTensor:
        """`(B, L)` ids of the CTC head's transcripts (generate's layout): the best path, or a prefix beam search
        with the language model fused in (defaults from the generation config, see `generate`)."""
        config, language_model = self.generation_config, self.asr_language_model
        if lm_weight:
            self._required_language_model(lm_weight)
        lm_weight, length_bonus, num_beams = self.asr_decoding.ctc_search(
            lm_weight, length_bonus, num_beams, language_model is not None, config.num_beams
        )
        bos = config.decoder_start_token_id
        if num_beams == 1 and not lm_weight and not length_bonus:
            return self._ctc_best_paths(encoder_outputs, bos=bos)
        log_probs, lengths = self.ctc_log_probs(encoder_outputs)
        texts = language_model.token_texts if language_model is not None else None
        rows = []
        for row, (frames, length) in enumerate(zip(log_probs, lengths.tolist(), strict=True)):
            code = self.config.languages[int(src_lang_ids[row])]
            model = language_model.for_language(code) if lm_weight else None
            tokens = ctc_prefix_beam_search(
                frames[: int(length)], texts, num_beams, model, lm_weight, length_bonus, blank=self.config.pad_token_id
            )
            rows.append([bos, *tokens, self.config.eos_token_id])
        return self._padded_ids(rows, log_probs.device)

    def _required_language_model(self, lm_weight: float) -> CharNgramLanguageModel:
        if self.asr_language_model is None:
            raise ValueError(
                f"lm_weight={lm_weight} needs a CTC language model: this model has none. Build one with "
                "`CharNgramLanguageModel.from_texts` and attach it with `model.set_asr_language_model`, or pass "
                "lm_weight=0."
            )
        return self.asr_language_model

    def set_asr_language_model(
        self, language_model: CharNgramLanguageModel | None, lm_weight: float = DEFAULT_LM_WEIGHT,
        length_bonus: float = DEFAULT_LM_LENGTH_BONUS, num_beams: int = DEFAULT_CTC_BEAMS,
    ) -> None:  # fmt: skip
        """Attach a character n-gram language model for CTC decoding and make `lm_weight`, `length_bonus` and
        `num_beams` the defaults of CTC decoding (`generate(ctc_weight=1)`, `pipeline()` when the model's ASR
        decoder is the CTC head). Saved with the model (`ctc_language_model.json`); None removes it."""
        if language_model is not None:
            size = len(language_model.token_texts)
            if size != self.config.text_vocab_size:
                raise ValueError(
                    f"The language model was built for a tokenizer of {size} tokens, this model has "
                    f"{self.config.text_vocab_size}: build it with this model's tokenizer."
                )
            unknown = sorted(set(language_model.languages) - set(self.config.languages))
            if unknown:
                raise ValueError(f"The language model has languages {unknown} this model does not know.")
        attached = language_model is not None
        options = self.asr_decoding.replace(
            lm_weight=float(lm_weight) if attached else 0.0,
            lm_length_bonus=float(length_bonus) if attached else 0.0,
            ctc_beams=int(num_beams),
        )
        self.asr_language_model = language_model
        options.save_to(self.generation_config, "lm_weight", "lm_length_bonus", "ctc_beams")

    def load_asr_language_model(self, location: str | os.PathLike, **hub_kwargs) -> None:
        """Attach the `ctc_language_model.json` saved in `location` (a folder or Hub id), if it has one."""
        keep = ("revision", "token", "cache_dir", "local_files_only")
        path = cached_file(
            location, LM_FILE_NAME, _raise_exceptions_for_missing_entries=False,
            **{key: value for key, value in hub_kwargs.items() if key in keep},
        )  # fmt: skip
        options = self.asr_decoding
        if path is not None:
            language_model = CharNgramLanguageModel.load(path)
            self.set_asr_language_model(language_model, options.lm_weight, options.lm_length_bonus, options.ctc_beams)
        elif options.lm_weight:
            logger.warning(
                "%s sets asr_lm_weight=%s but has no %s: CTC decoding runs without its language model (copy the "
                "file beside the model, or pass lm_weight=0 to silence this).",
                location, options.lm_weight, LM_FILE_NAME,
            )  # fmt: skip
            options.replace(lm_weight=0.0).save_to(self.generation_config, "lm_weight")

    @property
    def asr_decoding(self) -> AsrDecodingOptions:
        """The model's default ASR decoder (`AsrDecodingOptions`), as saved in its generation config."""
        return AsrDecodingOptions.from_generation_config(self.generation_config)

    def _with_translation_decoding(
        self, kwargs: dict, input_features: torch.Tensor | None, src_lang_ids: torch.Tensor, tgt_lang_ids: torch.Tensor
    ) -> dict:
        """``kwargs`` with the model's translation decoding (`generation_config.translation_decoding`: beams,
        repetition and length controls its fine-tuning run chose on dev) when the rows translate (text in, or
        another target language) and the caller passes none of its keys and no generation config of its own:
        passing any of them replaces the saved choice as a whole."""
        saved = getattr(self.generation_config, "translation_decoding", None) or {}
        if not saved or "generation_config" in kwargs or any(key in kwargs for key in TRANSLATION_DECODING_KEYS):
            return kwargs
        if input_features is not None and self._all_rows_asr(src_lang_ids, tgt_lang_ids):
            return kwargs
        return {**kwargs, **saved}

    def set_translation_decoding(self, options: dict) -> None:
        """Make ``options`` (`generate` keyword arguments among `TRANSLATION_DECODING_KEYS`) the model's default
        translation decoding (AST and MT; saved in generation_config.json)."""
        unknown = set(options) - set(TRANSLATION_DECODING_KEYS)
        if unknown:
            raise ValueError(f"translation decoding takes {TRANSLATION_DECODING_KEYS}, not {sorted(unknown)}.")
        self.generation_config.translation_decoding = dict(options)
        self.generation_config._from_model_config = False  # else loading rebuilds it from the model config

    def set_asr_ctc_weight(self, ctc_weight: float) -> None:
        """Make `ctc_weight` the default of `generate` (and `pipeline()`) for ASR; saved in generation_config.json.
        0: the attention decoder alone, 1: the CTC head alone (prefix search), in between: joint decoding."""
        self.asr_decoding.replace(ctc_weight=float(ctc_weight)).save_to(self.generation_config, "ctc_weight")

    def _default_ctc_weight(
        self,
        input_features: torch.Tensor | None,
        src_lang_ids: torch.Tensor,
        tgt_lang_ids: torch.Tensor,
        modality: int,
    ) -> float:
        """The model's ASR CTC weight (`asr_decoding`) when every row is ASR (speech to text in the same language),
        else 0."""
        weight = self.asr_decoding.default_ctc_weight()
        if weight == 0 or input_features is None or modality != TEXT_MODALITY:
            return 0.0
        return weight if self._all_rows_asr(src_lang_ids, tgt_lang_ids) else 0.0

    def _ctc_prefix_processor(
        self,
        encoder_outputs,
        src_lang_ids,
        tgt_lang_ids,
        ctc_weight: float,
        generate_kwargs: dict,
        lm_weight: float | None = None,
        length_bonus: float | None = None,
    ) -> CTCPrefixLogitsProcessor:
        """Joint CTC/attention scoring for ASR (the CTC head transcribes: it cannot score a translation), with the
        model's n-gram LM fused in where ``lm_weight`` or ``length_bonus`` is given (None: 0, the LM is not used)."""
        if not ctc_weight:
            raise ValueError(
                "lm_weight fuses the CTC language model into joint CTC/attention decoding (0 < ctc_weight < 1) or "
                "the CTC head's beam search (ctc_weight=1): pass a ctc_weight, or lm_weight=0."
            )
        self._check_asr_rows(src_lang_ids, tgt_lang_ids)
        log_probs, lengths = self.ctc_log_probs(encoder_outputs)
        config = generate_kwargs.get("generation_config") or self.generation_config
        num_beams = generate_kwargs.get("num_beams") or config.num_beams or 1
        lm_weight, length_bonus = float(lm_weight or 0.0), float(length_bonus or 0.0)
        models, texts = None, None
        if lm_weight or length_bonus:
            language_model = self._required_language_model(lm_weight)
            codes = [self.config.languages[int(i)] for i in src_lang_ids.tolist()]
            models, texts = [language_model.for_language(code) for code in codes], language_model.token_texts
        return CTCPrefixLogitsProcessor(
            log_probs, lengths, ctc_weight, num_beams, self.config.eos_token_id, blank=self.config.pad_token_id,
            language_models=models, token_texts=texts, lm_weight=lm_weight, length_bonus=length_bonus,
        )  # fmt: skip
