"""The instances of every objective: the masked objectives of pre-training (paper eq. 2-5, 3.1) and the plain
P(y|x) of fine-tuning, all as masked sequence-to-sequence instances.

An instance is one row of a batch: an encoder input of one or two segments ([speech; text]), the encoder
MLM targets, a decoder input and target, the target language and modality, optional CTC targets and a
loss weight. `Mu2SlamCollator` pads a list of them into the keyword arguments of
`Mu2SlamForConditionalGeneration.forward`.

Shapes: T log-mel frames, S = ``config.speech_output_lengths(T)`` speech positions (one speech code each),
L text tokens (ending with eos), U decoder positions.

Weights. Each instance carries ``example_weight`` = ``config.objective_loss_weights[OBJECTIVE_WEIGHT_KEYS[
objective]]``; the model multiplies it into that row's decoder AND encoder-MLM losses. The paper gives one
coefficient per task ("0.3 for the decoder loss" of speech to text); eq. 4 defines the encoder MLM and the
decoder loss as one loss l_p, so the coefficient scales both (speech MLM keeps weight 1 through the
speech-only data, 4x more frequent per step). CTC is weighted by the model (``config.ctc_loss_weight``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..configuration_mu2slam import Mu2SlamConfig
from ..data.schema import SPEECH_TEXT_TASKS
from ..vocabulary import EOS_ID, MASK_ID, NUM_SPECIAL_TOKENS, SPEECH_MODALITY, TEXT_MODALITY
from .masking import (
    MT_MASK_RATIO,
    SPEECH_MASK_RATIO,
    TEXT_MASK_RATIO,
    corrupt_text,
    denoising_decoder_sequences,
    full_decoder_sequences,
    masked_targets,
    speech_span_mask,
    word_span_mask,
)

OBJECTIVE_WEIGHT_KEYS = {
    "speech_only": "speech_only",
    "text_only": "text_only",
    "speech_to_text": "speech_to_text",
    "text_to_speech": "text_to_speech",
    "speech_text_alignment": "speech_text_alignment",
    "mt_forward": "mt",
    "mt_backward": "mt",
    "mt_alignment": "mt",
}
FINETUNE = "finetune"


@dataclass
class Mu2SlamInstance:
    """One masked sequence-to-sequence example (one batch row).

    Args:
        objective: a key of `OBJECTIVE_WEIGHT_KEYS`, or "finetune".
        task: the data task it was made from: "speech", "text", "asr", "ast" or "mt".
        example_weight: the loss weight of this row (see the module docstring).
        src_lang_id: language of the first encoder segment; text_lang_id: of the text segment after speech.
        tgt_lang_id / tgt_modality_id: language and modality (0 speech, 1 text) of the decoder output.
        decoder_input_ids (`(U,)`) / labels (`(U,)`, -100 where not counted): the decoder sequences.
        input_features (`(T, F)`): speech segment; speech_mlm_mask (`(S,)` bool): frames given the [MASK]
            embedding; speech_mlm_labels (`(S,)`): code ids at masked frames, -100 elsewhere.
        input_ids (`(L,)`): text segment (already corrupted); text_mlm_labels (`(L,)`): original ids at
            masked tokens, -100 elsewhere.
        ctc_labels (`(C,)`): transcript ids for the encoder CTC loss (ASR only).
    """

    objective: str
    task: str
    example_weight: float
    src_lang_id: int
    tgt_lang_id: int
    tgt_modality_id: int
    decoder_input_ids: torch.Tensor
    labels: torch.Tensor
    input_features: torch.Tensor | None = None
    speech_mlm_mask: torch.Tensor | None = None
    speech_mlm_labels: torch.Tensor | None = None
    input_ids: torch.Tensor | None = None
    text_lang_id: int | None = None
    text_mlm_labels: torch.Tensor | None = None
    ctc_labels: torch.Tensor | None = None

    @property
    def layout(self) -> tuple[bool, bool]:
        """(has speech, has text): instances share a batch only with the same layout."""
        return self.input_features is not None, self.input_ids is not None


def objective_weight(config: Mu2SlamConfig, objective: str) -> float:
    """The configured loss weight of an objective (``config.objective_loss_weights``)."""
    try:
        return float(config.objective_loss_weights[OBJECTIVE_WEIGHT_KEYS[objective]])
    except KeyError:
        raise ValueError(
            f"No loss weight for objective {objective!r}: known objectives {sorted(OBJECTIVE_WEIGHT_KEYS)}, "
            f"configured weights {sorted(config.objective_loss_weights)}."
        ) from None


# ------------------------------------------------------------------------------------------- inputs


def speech_code_ids(config: Mu2SlamConfig, input_features: torch.Tensor, codes: torch.Tensor) -> torch.LongTensor:
    """Validate (T, F) features and (S,) codes of one utterance; return the codes as vocabulary ids (S,)."""
    if input_features.ndim != 2 or input_features.shape[-1] != config.num_mel_bins:
        raise ValueError(
            f"`input_features` of one utterance must have shape (frames, {config.num_mel_bins}), "
            f"got {tuple(input_features.shape)}."
        )
    frames = input_features.shape[0]
    if frames < config.min_input_frames:
        raise ValueError(f"Audio too short: {frames} frames, the front end needs {config.min_input_frames}.")
    expected = config.speech_output_lengths(frames)
    if codes.ndim != 1 or codes.shape[0] != expected:
        raise ValueError(
            f"`codes` must have one code per front-end frame: {frames} log-mel frames give {expected} "
            f"(config.speech_output_lengths), got codes of shape {tuple(codes.shape)}."
        )
    return code_ids_of(config, codes)


def code_ids_of(config: Mu2SlamConfig, codes: torch.Tensor) -> torch.LongTensor:
    """(S,) speech codes in [0, codebook_size) -> vocabulary ids (S,)."""
    if bool(((codes < 0) | (codes >= config.codebook_size)).any()):
        raise ValueError(f"`codes` must lie in [0, {config.codebook_size}), got {codes.unique()[:8].tolist()}.")
    return config.vocabulary.code_to_id(codes.long())


def check_text(config: Mu2SlamConfig, input_ids: torch.Tensor, word_starts: torch.Tensor | None = None) -> None:
    """Validate one tokenised text (L,): text-vocabulary ids, no [MASK], a matching word-start flag."""
    if input_ids.ndim != 1 or input_ids.numel() == 0:
        raise ValueError(f"Text ids must be a non-empty 1-D tensor, got shape {tuple(input_ids.shape)}.")
    if bool(((input_ids < 0) | (input_ids >= config.text_vocab_size)).any()):
        raise ValueError(f"Text ids must lie in the text vocabulary [0, {config.text_vocab_size}).")
    if bool((input_ids == MASK_ID).any()):
        raise ValueError(f"Text ids already hold [MASK] ({MASK_ID}): pass the tokenizer's output before masking.")
    if word_starts is not None and word_starts.shape != input_ids.shape:
        raise ValueError(f"`word_starts` {tuple(word_starts.shape)} must match the ids {tuple(input_ids.shape)}.")


def ctc_targets(text_ids: torch.Tensor) -> torch.LongTensor:
    """(C,) CTC targets of a transcript: its text tokens without eos and other specials (blank is <pad>)."""
    return text_ids[text_ids >= NUM_SPECIAL_TOKENS].long()


def _speech_with_eos(code_ids: torch.Tensor) -> torch.LongTensor:
    return torch.cat([code_ids, code_ids.new_tensor([EOS_ID])])


def _masked_speech(
    config: Mu2SlamConfig, input_features: torch.Tensor, codes: torch.Tensor, generator: torch.Generator, ratio: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(code ids (S,), span mask (S,)) of one utterance."""
    code_ids = speech_code_ids(config, input_features, codes)
    return code_ids, speech_span_mask(len(code_ids), generator, ratio)


def _masked_text(
    config: Mu2SlamConfig, input_ids: torch.Tensor, word_starts: torch.Tensor, generator: torch.Generator, ratio: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(corrupted ids (L,), word-span mask (L,)) of one text."""
    check_text(config, input_ids, word_starts)
    mask = word_span_mask(input_ids, word_starts, generator, ratio)
    return corrupt_text(input_ids, mask, config.vocabulary, generator), mask


# -------------------------------------------------------------------------------- unlabeled (eq. 2, 3)


def build_speech_only(
    config: Mu2SlamConfig,
    input_features: torch.Tensor,
    codes: torch.Tensor,
    lang_id: int,
    generator: torch.Generator,
    mask_ratio: float = SPEECH_MASK_RATIO,
) -> Mu2SlamInstance:
    """Eq. 2 on speech: encoder S^m (masked frames -> [MASK] embedding), MLM of the codes z at m; decoder reads
    z^{not m} shifted right and predicts z_i at m (S positions, no eos). Target: speech, same language."""
    code_ids, mask = _masked_speech(config, input_features, codes, generator, mask_ratio)
    decoder_input_ids, labels = denoising_decoder_sequences(code_ids, mask, config.decoder_start_token_id)
    return Mu2SlamInstance(
        objective="speech_only",
        task="speech",
        example_weight=objective_weight(config, "speech_only"),
        src_lang_id=lang_id,
        tgt_lang_id=lang_id,
        tgt_modality_id=SPEECH_MODALITY,
        decoder_input_ids=decoder_input_ids,
        labels=labels,
        input_features=input_features,
        speech_mlm_mask=mask,
        speech_mlm_labels=masked_targets(code_ids, mask),
    )


def build_text_only(
    config: Mu2SlamConfig,
    input_ids: torch.Tensor,
    word_starts: torch.Tensor,
    lang_id: int,
    generator: torch.Generator,
    mask_ratio: float = TEXT_MASK_RATIO,
) -> Mu2SlamInstance:
    """Eq. 3 on text: encoder t^m (one span of ~50% of the words, 80/10/10), MLM at m; decoder reads t^{not m}
    shifted right and predicts t_i at m (L positions, eos never predicted). Target: text, same language."""
    corrupted, mask = _masked_text(config, input_ids, word_starts, generator, mask_ratio)
    decoder_input_ids, labels = denoising_decoder_sequences(input_ids, mask, config.decoder_start_token_id)
    return Mu2SlamInstance(
        objective="text_only",
        task="text",
        example_weight=objective_weight(config, "text_only"),
        src_lang_id=lang_id,
        tgt_lang_id=lang_id,
        tgt_modality_id=TEXT_MODALITY,
        decoder_input_ids=decoder_input_ids,
        labels=labels,
        input_ids=corrupted,
        text_mlm_labels=masked_targets(input_ids, mask),
    )


# ------------------------------------------------------------------------------ speech-text (eq. 4, 5)


def _check_task(task: str) -> None:
    if task not in SPEECH_TEXT_TASKS:
        raise ValueError(f"Speech-text task must be one of {SPEECH_TEXT_TASKS}, got {task!r}.")


def build_speech_to_text(
    config: Mu2SlamConfig,
    input_features: torch.Tensor,
    codes: torch.Tensor,
    text_ids: torch.Tensor,
    speech_lang_id: int,
    text_lang_id: int,
    generator: torch.Generator,
    task: str = "asr",
    mask_ratio: float = SPEECH_MASK_RATIO,
) -> Mu2SlamInstance:
    """Eq. 4 forward (ASR/AST): encoder S^m with MLM of the codes at m; decoder predicts all of y (text ids
    ending with eos) by plain teacher forcing. CTC on the transcript (no specials) for ASR only, computed by
    the same forward, i.e. on the masked speech input (one forward per row; CTC copes with masked frames)."""
    _check_task(task)
    check_text(config, text_ids)
    code_ids, mask = _masked_speech(config, input_features, codes, generator, mask_ratio)
    decoder_input_ids, labels = full_decoder_sequences(text_ids.long(), config.decoder_start_token_id)
    return Mu2SlamInstance(
        objective="speech_to_text",
        task=task,
        example_weight=objective_weight(config, "speech_to_text"),
        src_lang_id=speech_lang_id,
        tgt_lang_id=text_lang_id,
        tgt_modality_id=TEXT_MODALITY,
        decoder_input_ids=decoder_input_ids,
        labels=labels,
        input_features=input_features,
        speech_mlm_mask=mask,
        speech_mlm_labels=masked_targets(code_ids, mask),
        ctc_labels=ctc_targets(text_ids) if task == "asr" else None,
    )


def build_text_to_speech(
    config: Mu2SlamConfig,
    text_ids: torch.Tensor,
    word_starts: torch.Tensor,
    codes: torch.Tensor,
    text_lang_id: int,
    speech_lang_id: int,
    generator: torch.Generator,
    task: str = "asr",
    mask_ratio: float = TEXT_MASK_RATIO,
) -> Mu2SlamInstance:
    """Eq. 4 backward: encoder y^m (word span, 80/10/10) with MLM at m; decoder predicts all of the codes z
    followed by eos (S + 1 positions). Target: speech in the speech's language."""
    _check_task(task)
    code_ids = code_ids_of(config, codes)
    corrupted, mask = _masked_text(config, text_ids, word_starts, generator, mask_ratio)
    decoder_input_ids, labels = full_decoder_sequences(_speech_with_eos(code_ids), config.decoder_start_token_id)
    return Mu2SlamInstance(
        objective="text_to_speech",
        task=task,
        example_weight=objective_weight(config, "text_to_speech"),
        src_lang_id=text_lang_id,
        tgt_lang_id=speech_lang_id,
        tgt_modality_id=SPEECH_MODALITY,
        decoder_input_ids=decoder_input_ids,
        labels=labels,
        input_ids=corrupted,
        text_mlm_labels=masked_targets(text_ids, mask),
    )


def build_speech_text_alignment(
    config: Mu2SlamConfig,
    input_features: torch.Tensor,
    codes: torch.Tensor,
    text_ids: torch.Tensor,
    word_starts: torch.Tensor,
    speech_lang_id: int,
    text_lang_id: int,
    generator: torch.Generator,
    task: str = "asr",
    speech_mask_ratio: float = SPEECH_MASK_RATIO,
    text_mask_ratio: float = TEXT_MASK_RATIO,
) -> list[Mu2SlamInstance]:
    """Eq. 5: two rows sharing the encoder input [S^m; y^m] (speech spans and a word span, masked apart).

    Row 1 carries the encoder MLM over both segments (codes at the speech mask, text ids at the text mask)
    and the decoder prediction of the masked codes of z from z^{not m} (target speech, S positions).
    Row 2 has the same encoder input, no MLM labels (so the MLM counts once), and the decoder prediction
    of the masked tokens of y from y^{not m} (target text, L positions).
    """
    _check_task(task)
    code_ids, speech_mask = _masked_speech(config, input_features, codes, generator, speech_mask_ratio)
    corrupted, text_mask = _masked_text(config, text_ids, word_starts, generator, text_mask_ratio)
    start = config.decoder_start_token_id
    weight = objective_weight(config, "speech_text_alignment")
    shared = dict(
        objective="speech_text_alignment",
        task=task,
        example_weight=weight,
        src_lang_id=speech_lang_id,
        text_lang_id=text_lang_id,
        input_features=input_features,
        speech_mlm_mask=speech_mask,
        input_ids=corrupted,
    )
    speech_inputs, speech_labels = denoising_decoder_sequences(code_ids, speech_mask, start)
    text_inputs, text_labels = denoising_decoder_sequences(text_ids.long(), text_mask, start)
    speech_row = Mu2SlamInstance(
        **shared,
        tgt_lang_id=speech_lang_id,
        tgt_modality_id=SPEECH_MODALITY,
        decoder_input_ids=speech_inputs,
        labels=speech_labels,
        speech_mlm_labels=masked_targets(code_ids, speech_mask),
        text_mlm_labels=masked_targets(text_ids, text_mask),
    )
    text_row = Mu2SlamInstance(
        **shared,
        tgt_lang_id=text_lang_id,
        tgt_modality_id=TEXT_MODALITY,
        decoder_input_ids=text_inputs,
        labels=text_labels,
    )
    return [speech_row, text_row]


def build_speech_text_pretraining(
    config: Mu2SlamConfig,
    input_features: torch.Tensor,
    codes: torch.Tensor,
    text_ids: torch.Tensor,
    word_starts: torch.Tensor,
    speech_lang_id: int,
    text_lang_id: int,
    generator: torch.Generator,
    task: str = "asr",
) -> list[Mu2SlamInstance]:
    """All instances of one ASR/AST pair (eq. 6): forward, backward, and the two alignment rows."""
    return [
        build_speech_to_text(config, input_features, codes, text_ids, speech_lang_id, text_lang_id, generator, task),
        build_text_to_speech(config, text_ids, word_starts, codes, text_lang_id, speech_lang_id, generator, task),
        *build_speech_text_alignment(
            config, input_features, codes, text_ids, word_starts, speech_lang_id, text_lang_id, generator, task
        ),
    ]


# ------------------------------------------------------------------------------------------------- MT


def build_mt_direction(
    config: Mu2SlamConfig,
    source_ids: torch.Tensor,
    source_word_starts: torch.Tensor,
    target_ids: torch.Tensor,
    source_lang_id: int,
    target_lang_id: int,
    generator: torch.Generator,
    objective: str = "mt_forward",
    mask_ratio: float = MT_MASK_RATIO,
) -> Mu2SlamInstance:
    """Eq. 4 on text pairs: encoder source^m (25% of the words, 80/10/10) with MLM at m; decoder predicts all
    of the target (ending with eos). Backward is the same call with the pair swapped, objective "mt_backward"."""
    if objective not in ("mt_forward", "mt_backward"):
        raise ValueError(f"objective must be 'mt_forward' or 'mt_backward', got {objective!r}.")
    check_text(config, target_ids)
    corrupted, mask = _masked_text(config, source_ids, source_word_starts, generator, mask_ratio)
    decoder_input_ids, labels = full_decoder_sequences(target_ids.long(), config.decoder_start_token_id)
    return Mu2SlamInstance(
        objective=objective,
        task="mt",
        example_weight=objective_weight(config, objective),
        src_lang_id=source_lang_id,
        tgt_lang_id=target_lang_id,
        tgt_modality_id=TEXT_MODALITY,
        decoder_input_ids=decoder_input_ids,
        labels=labels,
        input_ids=corrupted,
        text_mlm_labels=masked_targets(source_ids, mask),
    )


def build_mt_alignment(
    config: Mu2SlamConfig,
    source_ids: torch.Tensor,
    source_word_starts: torch.Tensor,
    target_ids: torch.Tensor,
    target_word_starts: torch.Tensor,
    source_lang_id: int,
    target_lang_id: int,
    generator: torch.Generator,
    mask_ratio: float = MT_MASK_RATIO,
) -> list[Mu2SlamInstance]:
    """Eq. 5 on text pairs: two rows sharing the encoder input [x^m; y^m], one text segment of L_x + L_y
    tokens (each part keeps its eos; each part masked apart with its own word span).

    Row 1: encoder MLM over both parts, decoder predicts the masked tokens of x from x^{not m} (L_x positions).
    Row 2: no MLM labels, decoder predicts the masked tokens of y from y^{not m} (L_y positions).
    The model gives one language per text segment, so the whole [x; y] segment takes the source language.
    """
    source_corrupted, source_mask = _masked_text(config, source_ids, source_word_starts, generator, mask_ratio)
    target_corrupted, target_mask = _masked_text(config, target_ids, target_word_starts, generator, mask_ratio)
    encoder_ids = torch.cat([source_corrupted, target_corrupted])
    start = config.decoder_start_token_id
    shared = dict(
        objective="mt_alignment",
        task="mt",
        example_weight=objective_weight(config, "mt_alignment"),
        src_lang_id=source_lang_id,
        tgt_modality_id=TEXT_MODALITY,
        input_ids=encoder_ids,
    )
    source_inputs, source_labels = denoising_decoder_sequences(source_ids.long(), source_mask, start)
    target_inputs, target_labels = denoising_decoder_sequences(target_ids.long(), target_mask, start)
    mlm_labels = torch.cat([masked_targets(source_ids, source_mask), masked_targets(target_ids, target_mask)])
    return [
        Mu2SlamInstance(
            **shared,
            tgt_lang_id=source_lang_id,
            decoder_input_ids=source_inputs,
            labels=source_labels,
            text_mlm_labels=mlm_labels,
        ),
        Mu2SlamInstance(**shared, tgt_lang_id=target_lang_id, decoder_input_ids=target_inputs, labels=target_labels),
    ]


def build_mt_pretraining(
    config: Mu2SlamConfig,
    source_ids: torch.Tensor,
    source_word_starts: torch.Tensor,
    target_ids: torch.Tensor,
    target_word_starts: torch.Tensor,
    source_lang_id: int,
    target_lang_id: int,
    generator: torch.Generator,
) -> list[Mu2SlamInstance]:
    """All instances of one MT pair (eq. 6): forward, backward, and the two alignment rows."""
    forward = build_mt_direction(
        config, source_ids, source_word_starts, target_ids, source_lang_id, target_lang_id, generator, "mt_forward"
    )
    backward = build_mt_direction(
        config, target_ids, target_word_starts, source_ids, target_lang_id, source_lang_id, generator, "mt_backward"
    )
    alignment = build_mt_alignment(
        config,
        source_ids,
        source_word_starts,
        target_ids,
        target_word_starts,
        source_lang_id,
        target_lang_id,
        generator,
    )
    return [forward, backward, *alignment]


# ------------------------------------------------------------------------------------------- fine-tuning


def build_speech_to_text_finetuning(
    config: Mu2SlamConfig,
    input_features: torch.Tensor,
    text_ids: torch.Tensor,
    speech_lang_id: int,
    text_lang_id: int,
    task: str = "asr",
    weight: float = 1.0,
    ctc_text_ids: torch.Tensor | None = None,
) -> Mu2SlamInstance:
    """Fine-tuning (ASR/AST): plain P(y|x), no [MASK], no MLM; CTC on the encoder when ``ctc_text_ids`` is given
    (the transcript of the audio: the target for ASR, the source transcript for AST), weighted by
    ``config.ctc_loss_weight``."""
    _check_task(task)
    check_text(config, text_ids)
    if input_features.ndim != 2 or input_features.shape[-1] != config.num_mel_bins:
        raise ValueError(
            f"`input_features` must be (frames, {config.num_mel_bins}), got {tuple(input_features.shape)}."
        )
    decoder_input_ids, labels = full_decoder_sequences(text_ids.long(), config.decoder_start_token_id)
    return Mu2SlamInstance(
        objective=FINETUNE,
        task=task,
        example_weight=weight,
        src_lang_id=speech_lang_id,
        tgt_lang_id=text_lang_id,
        tgt_modality_id=TEXT_MODALITY,
        decoder_input_ids=decoder_input_ids,
        labels=labels,
        input_features=input_features,
        ctc_labels=None if ctc_text_ids is None else ctc_targets(ctc_text_ids),
    )


def build_text_to_text_finetuning(
    config: Mu2SlamConfig,
    source_ids: torch.Tensor,
    target_ids: torch.Tensor,
    source_lang_id: int,
    target_lang_id: int,
    weight: float = 1.0,
    masking: tuple[torch.Tensor, torch.Generator | None, float] | None = None,
) -> Mu2SlamInstance:
    """MT fine-tuning: P(y|x). With ``masking`` = (word starts (L,), generator, ratio), one span of that fraction of
    the source's words is corrupted as in text MLM (80/10/10) and the encoder predicts it (``text_mlm_labels``): an
    encoder-side loss that keeps the encoder's positions apart while the decoder is still a language model."""
    check_text(config, source_ids)
    check_text(config, target_ids)
    decoder_input_ids, labels = full_decoder_sequences(target_ids.long(), config.decoder_start_token_id)
    input_ids, mlm_labels = source_ids.long(), None
    if masking is not None:
        word_starts, generator, ratio = masking
        input_ids, mask = _masked_text(config, source_ids.long(), word_starts, generator, ratio)
        mlm_labels = masked_targets(source_ids.long(), mask)
    return Mu2SlamInstance(
        objective=FINETUNE,
        task="mt",
        example_weight=weight,
        src_lang_id=source_lang_id,
        tgt_lang_id=target_lang_id,
        tgt_modality_id=TEXT_MODALITY,
        decoder_input_ids=decoder_input_ids,
        labels=labels,
        input_ids=input_ids,
        text_mlm_labels=mlm_labels,
    )
