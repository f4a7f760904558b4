"""Mu2SlamConfig: every architecture, vocabulary and loss-weight setting of the model."""

from __future__ import annotations

import contextlib
import difflib
import inspect
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from transformers import GenerationConfig, PreTrainedConfig
from transformers.activations import ACT2FN

from .vocabulary import (
    BOS_ID,
    DEFAULT_LANGUAGES,
    EOS_ID,
    MASK_ID,
    MODALITIES,
    PAD_ID,
    UNK_ID,
    VocabularyLayout,
    language_index,
)

# Loss weights of the pre-training objectives (paper section 3.1). MT is not given in the paper.
DEFAULT_OBJECTIVE_LOSS_WEIGHTS = {
    "speech_only": 1.0,
    "text_only": 1.0,
    "speech_to_text": 0.3,
    "text_to_speech": 0.1,
    "speech_text_alignment": 0.1,
    "mt": 1.0,
}
# The CTC loss is weighted by `ctc_loss_weight` (in the model's forward), not per objective. Configs saved before
# that had an "ctc" entry here that nothing read; it is dropped on load.
LEGACY_OBJECTIVE_KEYS = ("ctc",)


def subsampled_lengths(lengths, num_layers: int = 2, kernel_size: int = 3, stride: int = 2):
    """Frames after ``num_layers`` unpadded convolutions: ``L -> (L - kernel_size) // stride + 1`` each.

    Works on ints and integer tensors. Output frame ``t`` only sees input frames of the same utterance,
    so padded frames can never leak into real ones. Lengths shorter than the receptive field give <= 0.
    """
    for _ in range(num_layers):
        lengths = (lengths - kernel_size) // stride + 1
    return lengths


def receptive_field(num_layers: int = 2, kernel_size: int = 3, stride: int = 2) -> int:
    """Fewest input frames that yield one output frame."""
    frames = 1
    for _ in range(num_layers):
        frames = (frames - 1) * stride + kernel_size
    return frames


ENCODER_POSITIONS = ("absolute", "rotary")
# Field -> smallest allowed value, for the integer fields (checked at construction, see `check_config_field`).
_INT_FIELDS = {
    "text_vocab_size": 6, "codebook_size": 1, "num_mel_bins": 1, "frontend_channels": 1, "frontend_kernel_size": 1,
    "frontend_stride": 1, "d_model": 1, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 1,
    "decoder_attention_heads": 1, "encoder_ffn_dim": 1, "decoder_ffn_dim": 1, "conformer_conv_kernel_size": 1,
    "max_target_positions": 1, "mask_time_length": 1, "mask_time_min_masks": 0, "mask_feature_length": 1,
    "mask_feature_min_masks": 0, "pad_token_id": 0, "bos_token_id": 0, "eos_token_id": 0, "unk_token_id": 0,
    "mask_token_id": 0, "decoder_start_token_id": 0, "intermediate_ctc_layer": 0, "retrieval_embedding_dim": 1,
    "ctc_upsampling": 1,
}  # fmt: skip
# Fractions in [0, 1].
_PROBABILITY_FIELDS = (
    "encoder_dropout", "decoder_dropout", "attention_dropout", "activation_dropout", "classifier_dropout",
    "decoder_noise_ratio", "mask_time_prob", "mask_feature_prob", "language_detection_threshold",
    "intermediate_ctc_weight", "retrieval_temperature",
)  # fmt: skip
_NON_NEGATIVE_FLOAT_FIELDS = (
    "init_std", "decoder_loss_weight", "mlm_loss_weight", "ctc_loss_weight", "language_id_loss_weight",
    "retrieval_spread_out_weight",
)  # fmt: skip
_BOOL_FIELDS = (
    "scale_embedding", "apply_spec_augment", "tie_word_embeddings", "is_encoder_decoder", "use_cache",
    "language_id_head", "language_id_all_layers", "retrieval_language_prefix",
)  # fmt: skip


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_config_field(name: str, value: Any) -> None:
    """Raise a ValueError naming ``name`` when ``value`` has the wrong type or range for that config field.

    Only single fields are checked here (cross-field rules live in `Mu2SlamConfig.__init__`); unknown names pass.
    """
    problem = _field_problem(name, value)
    if problem:
        raise ValueError(
            f"Mu2SlamConfig.{name} {problem}, got {value!r} ({type(value).__name__}). Fix it in config.json, the "
            "recipe's model_overrides or wherever it was set."
        )


def _field_problem(name: str, value: Any) -> str | None:
    """What is wrong with one field's value, or None."""
    if name in _INT_FIELDS:
        minimum = _INT_FIELDS[name]
        ok = _is_int(value) and value >= minimum
        return None if ok else f"must be an int >= {minimum}"
    if name in _PROBABILITY_FIELDS:
        return None if _is_number(value) and 0.0 <= value <= 1.0 else "must be a number in [0, 1]"
    if name in _NON_NEGATIVE_FLOAT_FIELDS:
        return None if _is_number(value) and value >= 0 else "must be a number >= 0"
    if name in _BOOL_FIELDS:
        return None if isinstance(value, bool) else "must be true or false"
    if name == "hidden_act":
        known = ", ".join(sorted(ACT2FN))
        return None if isinstance(value, str) and value in ACT2FN else f"must be an activation name ({known})"
    if name == "languages":
        ok = isinstance(value, list | tuple) and value and all(isinstance(c, str) and c for c in value)
        return None if ok else "must be a non-empty list of language codes"
    if name == "objective_loss_weights":
        return _loss_weights_problem(value)
    if name == "encoder_half_rate_layers":
        ok = value is None or (
            isinstance(value, list | tuple) and len(value) == 2 and all(_is_int(v) and v >= 0 for v in value)
        )
        return None if ok else "must be null or [first, end], two layer indices"
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _loss_weights_problem(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        return "must be a mapping of objective -> weight"
    unknown = sorted(set(value) - set(DEFAULT_OBJECTIVE_LOSS_WEIGHTS))
    if unknown:
        hint = _did_you_mean(unknown[0], DEFAULT_OBJECTIVE_LOSS_WEIGHTS)
        if "ctc" in unknown:
            hint = " (the CTC loss is weighted by the config's `ctc_loss_weight`)"
        return f"has unknown objective(s) {unknown}{hint}; known: {', '.join(DEFAULT_OBJECTIVE_LOSS_WEIGHTS)}"
    if not all(_is_number(weight) and weight >= 0 for weight in value.values()):
        return "must map each objective to a number >= 0"
    return None


# Keys transformers itself puts into a config's kwargs (saved by one of its versions, or passed by from_pretrained):
# accepted, and used or dropped by `PreTrainedConfig`. Generation parameters are added from `GenerationConfig`.
TRANSFORMERS_CONFIG_KEYS = frozenset({
    "auto_map", "torch_dtype", "name_or_path", "_name_or_path", "_commit_hash", "attn_implementation",
    "experts_implementation", "_attn_implementation_internal", "_experts_implementation_internal", "per_layer_config",
    "tokenizer_class", "vocab_size", "num_labels", "use_return_dict", "torchscript", "use_bfloat16", "tf_legacy_loss",
    "pruned_heads", "is_decoder", "cross_attention_hidden_size", "add_cross_attention", "tie_encoder_decoder",
    "finetuning_task", "prefix", "sep_token_id", "task_specific_params", "rope_scaling", "rope_theta",
})  # fmt: skip


def check_unknown_config_keys(cls: type[PreTrainedConfig], keys: Iterable[str]) -> None:
    """Raise a ValueError naming a key that is no field of ``cls`` nor one transformers sets (with the closest
    field): a misspelt ``num_mel_bin`` would otherwise be stored as an unused attribute and the default used."""
    known = cls.known_fields()
    accepted = known | TRANSFORMERS_CONFIG_KEYS | set(GenerationConfig._get_default_generation_params())
    unknown = [key for key in keys if key not in accepted]
    if unknown:
        raise ValueError(
            f"{unknown[0]!r} is not a {cls.__name__} field{_did_you_mean(unknown[0], known)}; it would be ignored. "
            "Fix the name in config.json, the recipe's model_overrides or wherever it was set."
        )


def _did_you_mean(name: str, candidates) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_pretrained_location(location: str | os.PathLike) -> None:
    """Refuse, with a clear FileNotFoundError, a path that is no folder here and cannot be a Hub repo id either.

    Hub ids are ``name`` or ``owner/name``; an absolute path, ``./``, ``../``, ``~`` or a second ``/`` can only be
    a local path, which transformers would otherwise report as a malformed repo id.
    """
    text = os.fspath(location)
    if os.path.exists(text):
        return
    if os.path.isabs(text) or text.startswith((".", "~")) or text.count("/") > 1 or "\\" in text:
        raise FileNotFoundError(_no_such_folder(text))


def _no_such_folder(text: str) -> str:
    return (
        f"No such folder: {text} (relative to {os.getcwd()}). Pass a folder that holds a saved model (a run's "
        "output_dir or one of its checkpoint-<step> folders), or a Hub repo id such as 'owner/name'."
    )


@contextlib.contextmanager
def pretrained_location(location: str | os.PathLike) -> Iterator[None]:
    """`check_pretrained_location`, then around the load: an error from a location that is no local path (a name
    that could be a Hub id, such as ``runs/ft1``) becomes a FileNotFoundError saying there is no such folder, with the
    Hub's reason after it (transformers' own message only speaks of the Hub and the network)."""
    check_pretrained_location(location)
    text = os.fspath(location)
    try:
        yield
    except (OSError, ValueError) as error:  # transformers' tokenizer loading raises a ValueError offline
        if os.path.exists(text) or str(error).startswith("No such folder"):
            raise
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FileNotFoundError(f"{_no_such_folder(text)} Loading it as a Hub repo id failed too: {reason}") from error


def check_saved_files(folder: str | os.PathLike, names: Iterable[str], what: str) -> None:
    """Raise a FileNotFoundError when the local ``folder`` lacks any of ``names`` (the files that ``what`` is loaded
    from), typically a model saved without its processor. Hub ids pass (transformers fetches their files)."""
    folder = os.fspath(folder)
    missing = [name for name in names if not os.path.isfile(os.path.join(folder, name))]
    if os.path.isdir(folder) and missing:
        raise FileNotFoundError(
            f"{folder} has no {' and no '.join(missing)}, which the {what} is loaded from: it holds a model saved without "
            f"its processor. Save the processor there too (`processor.save_pretrained({folder!r})`), or load the "
            "processor from the run folder or checkpoint the model came from."
        )


class Mu2SlamConfig(PreTrainedConfig):
    r"""
    Configuration of a Mu2SLAM encoder-decoder (Cheng et al., 2023): a speech front end (two stride-2
    Conv2d layers + a linear projection), a deep Conformer encoder shared by speech and text, a shallow
    Transformer decoder, and one vocabulary of text tokens and speech codes.

    Args:
        languages (`list[str]`): language codes; a code's index is its language-embedding id.
        text_vocab_size (`int`): size of the text tokenizer's vocabulary, specials included.
        codebook_size (`int`): number of speech codes of the frozen speech tokenizer.
        num_mel_bins (`int`): log-mel bins of the input features.
        frontend_channels (`int`): channels of the two front-end Conv2d layers.
        frontend_kernel_size / frontend_stride (`int`): of both Conv2d layers, on time and frequency.
        d_model (`int`): hidden size of encoder and decoder.
        encoder_layers / decoder_layers (`int`): Conformer and Transformer layer counts.
        encoder_attention_heads / decoder_attention_heads (`int`): attention heads.
        encoder_ffn_dim / decoder_ffn_dim (`int`): feed-forward hidden sizes.
        encoder_half_rate_layers (`list[int]` or None): `[first, end]`: encoder layers `first` to `end - 1` run on
            the speech frames at half the rate (Squeezeformer's temporal U-Net, Kim et al. 2022). A strided
            depthwise-separable convolution halves the frames before layer `first`; after layer `end - 1` each
            frame is repeated twice and the states from before the halving are added back, so the encoder's
            output, the CTC head and cross-attention keep the front end's rate. Those layers cost about half;
            text positions are never reduced. None (the default) runs every layer at the front end's rate.
        conformer_conv_kernel_size (`int`): depthwise convolution kernel of the Conformer blocks.
        encoder_positions (`str`): how the encoder knows where a frame or token is: "absolute" (sinusoids added to
            each segment's embeddings, the paper's) or "rotary" (RoPE on the self-attention queries and keys,
            counted from 0 in each segment; nothing is added to the embeddings).
        hidden_act (`str`): activation of the feed-forward blocks.
        encoder_dropout / decoder_dropout (`float`): residual dropout (paper: 0 and 0.1).
        attention_dropout / activation_dropout (`float`): dropout on attention weights / FFN hidden.
        classifier_dropout (`float`): dropout of the sequence-classification head (before and after its pooler).
        scale_embedding (`bool`): multiply token embeddings by sqrt(d_model).
        init_std (`float`): standard deviation of the weight initialisation.
        max_target_positions (`int`): longest decoder output the generation config allows.
        objective_loss_weights (`dict[str, float]`): weight of each pre-training objective.
        decoder_loss_weight / mlm_loss_weight / ctc_loss_weight (`float`): how the model's own forward sums
            the decoder, encoder-MLM and CTC losses it is given labels for.
        intermediate_ctc_layer (`int`): InterCTC (Lee and Watanabe, 2021): the CTC loss is also computed on the
            output of this Conformer layer (through the encoder's final LayerNorm and the same CTC head), which
            regularises the lower layers; 0 turns it off. Training only: decoding uses the last layer.
        intermediate_ctc_weight (`float`): the CTC loss is `(1 - w) * CTC(last layer) + w * CTC(that layer)`.
        ctc_upsampling (`int`): label slots the CTC head emits per encoder frame (1: one; 2: the CTC lattice runs
            at twice the encoder's frame rate). CTC needs a slot for every character and a blank between repeated
            ones; at 25 encoder frames a second fast speech in a language with many silent letters needs more (a
            tenth of espeak-ng's French clips needs over 0.9 slots a frame). Each slot is the frame plus a learnt
            linear offset of its own, zero at first, so a head grown from a 1-slot model keeps its best path.
        decoder_noise_ratio (`float`): noisy fine-tuning (paper 2.4, 0.06 there): in training only, this fraction
            of the decoder's input tokens (never the labels, never special tokens) is replaced by its nearest
            neighbour in the current token-embedding space within the same modality. 0 disables it.
        apply_spec_augment (`bool`): SpecAugment on `input_features` in training only (real frames only).
        mask_time_prob / mask_time_length / mask_time_min_masks: time masking as in Whisper/wav2vec 2.0
            (`mask_time_prob * frames / mask_time_length` spans of `mask_time_length` frames, at least the minimum).
        mask_feature_prob / mask_feature_length / mask_feature_min_masks: the same over the mel bins.
        language_id_head (`bool`): spoken language identification: a classifier over the mean of the encoder
            states of speech encoded without a language embedding (`Mu2SlamForConditionalGeneration.detect_language`;
            `generate` uses it when no `src_lang` is given). Added to a trained model by `add_language_id_head`.
        language_id_loss_weight (`float`): weight of its cross-entropy in the forward's loss (`language_labels`).
        language_id_all_layers (`bool`): the head reads a learned softmax-weighted sum of every encoder layer's
            states (the embeddings and each layer's output, as SUPERB's probes do) instead of the last layer's. An
            encoder fine-tuned long for ASR keeps the language in its middle layers more than in its last.
        language_detection_threshold (`float`): the lowest probability a detected language may have; below it,
            `generate` without `src_lang` refuses the input instead of guessing.
        retrieval_embedding_dim (`int`): size of the speech/text embeddings of `Mu2SlamForRetrieval` (a projection
            of the mean of the encoder states, L2-normalised).
        retrieval_temperature (`float`): the starting temperature of its contrastive softmax (similarities are
            divided by it; learned from there, as CLIP's logit scale is).
        retrieval_spread_out_weight (`float`): weight of the spread-out regulariser (Zhang et al., 2017) on the
            speech and the text embeddings of a batch; 0 turns it off.
        retrieval_language_prefix (`bool`): encode each side with its language embedding (the language/modality
            prefix of paper 001); False encodes both without one (the modality embedding stays).
    """

    model_type = "mu2slam"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {
        "num_hidden_layers": "decoder_layers",
        "hidden_size": "d_model",
        "num_attention_heads": "decoder_attention_heads",
    }

    def __init__(
        self,
        languages: list[str] | tuple[str, ...] = DEFAULT_LANGUAGES,
        text_vocab_size: int = 4096,
        codebook_size: int = 1024,
        num_mel_bins: int = 80,
        frontend_channels: int = 128,
        frontend_kernel_size: int = 3,
        frontend_stride: int = 2,
        d_model: int = 1024,
        encoder_layers: int = 24,
        decoder_layers: int = 6,
        encoder_attention_heads: int = 8,
        decoder_attention_heads: int = 8,
        encoder_ffn_dim: int = 4096,
        encoder_half_rate_layers: list[int] | None = None,
        decoder_ffn_dim: int = 4096,
        conformer_conv_kernel_size: int = 5,
        encoder_positions: str = "absolute",
        hidden_act: str = "silu",
        encoder_dropout: float = 0.0,
        decoder_dropout: float = 0.1,
        attention_dropout: float = 0.0,
        activation_dropout: float = 0.0,
        classifier_dropout: float = 0.1,
        scale_embedding: bool = True,
        init_std: float = 0.02,
        max_target_positions: int = 448,
        objective_loss_weights: dict[str, float] | None = None,
        decoder_loss_weight: float = 1.0,
        mlm_loss_weight: float = 1.0,
        ctc_loss_weight: float = 1.0,
        intermediate_ctc_layer: int = 0,
        intermediate_ctc_weight: float = 0.5,
        ctc_upsampling: int = 1,
        decoder_noise_ratio: float = 0.0,
        apply_spec_augment: bool = False,
        mask_time_prob: float = 0.05,
        mask_time_length: int = 10,
        mask_time_min_masks: int = 2,
        mask_feature_prob: float = 0.0,
        mask_feature_length: int = 10,
        mask_feature_min_masks: int = 0,
        language_id_head: bool = False,
        language_id_loss_weight: float = 1.0,
        language_id_all_layers: bool = False,
        language_detection_threshold: float = 0.5,
        retrieval_embedding_dim: int = 256,
        retrieval_temperature: float = 0.05,
        retrieval_spread_out_weight: float = 0.0,
        retrieval_language_prefix: bool = True,
        pad_token_id: int = PAD_ID,
        bos_token_id: int = BOS_ID,
        eos_token_id: int = EOS_ID,
        unk_token_id: int = UNK_ID,
        mask_token_id: int = MASK_ID,
        decoder_start_token_id: int = BOS_ID,
        tie_word_embeddings: bool = True,
        is_encoder_decoder: bool = True,
        use_cache: bool = True,
        **kwargs,
    ):
        if isinstance(objective_loss_weights, Mapping):
            objective_loss_weights = {
                k: v for k, v in objective_loss_weights.items() if k not in LEGACY_OBJECTIVE_KEYS
            }
        # Every argument, checked before any is used (a string d_model would otherwise fail deep inside a module).
        fields = {name: value for name, value in locals().items() if name not in ("self", "kwargs", "__class__")}
        for name, value in fields.items():
            check_config_field(name, value)
        self.languages = list(languages)
        if len(set(self.languages)) != len(self.languages):
            raise ValueError(f"`languages` has duplicates: {self.languages}")
        self.text_vocab_size = text_vocab_size
        self.codebook_size = codebook_size
        self.num_mel_bins = num_mel_bins
        self.frontend_channels = frontend_channels
        self.frontend_kernel_size = frontend_kernel_size
        self.frontend_stride = frontend_stride
        self.d_model = d_model
        self.encoder_layers = encoder_layers
        self.decoder_layers = decoder_layers
        self.encoder_attention_heads = encoder_attention_heads
        self.decoder_attention_heads = decoder_attention_heads
        self.encoder_ffn_dim = encoder_ffn_dim
        self.decoder_ffn_dim = decoder_ffn_dim
        self.conformer_conv_kernel_size = conformer_conv_kernel_size
        self.encoder_positions = encoder_positions
        self.hidden_act = hidden_act
        self.encoder_dropout = encoder_dropout
        self.decoder_dropout = decoder_dropout
        self.attention_dropout = attention_dropout
        self.activation_dropout = activation_dropout
        self.classifier_dropout = classifier_dropout
        self.scale_embedding = scale_embedding
        self.init_std = init_std
        self.max_target_positions = max_target_positions
        self.objective_loss_weights = {**DEFAULT_OBJECTIVE_LOSS_WEIGHTS, **(objective_loss_weights or {})}
        self.decoder_loss_weight = decoder_loss_weight
        self.mlm_loss_weight = mlm_loss_weight
        self.ctc_loss_weight = ctc_loss_weight
        self.intermediate_ctc_layer = intermediate_ctc_layer
        self.encoder_half_rate_layers = list(encoder_half_rate_layers) if encoder_half_rate_layers else None
        self.intermediate_ctc_weight = intermediate_ctc_weight
        self.ctc_upsampling = ctc_upsampling
        self.decoder_noise_ratio = decoder_noise_ratio
        self.apply_spec_augment = apply_spec_augment
        self.mask_time_prob = mask_time_prob
        self.mask_time_length = mask_time_length
        self.mask_time_min_masks = mask_time_min_masks
        self.mask_feature_prob = mask_feature_prob
        self.mask_feature_length = mask_feature_length
        self.mask_feature_min_masks = mask_feature_min_masks
        self.language_id_head = language_id_head
        self.language_id_loss_weight = language_id_loss_weight
        self.language_id_all_layers = language_id_all_layers
        self.language_detection_threshold = language_detection_threshold
        self.retrieval_embedding_dim = retrieval_embedding_dim
        self.retrieval_temperature = retrieval_temperature
        self.retrieval_spread_out_weight = retrieval_spread_out_weight
        self.retrieval_language_prefix = retrieval_language_prefix
        self.unk_token_id = unk_token_id
        self.mask_token_id = mask_token_id
        self.use_cache = use_cache
        for name, heads in (("encoder", encoder_attention_heads), ("decoder", decoder_attention_heads)):
            if d_model % heads:
                raise ValueError(f"d_model={d_model} is not divisible by {name}_attention_heads={heads}.")
        if conformer_conv_kernel_size % 2 == 0:
            raise ValueError(f"conformer_conv_kernel_size must be odd, got {conformer_conv_kernel_size}.")
        if intermediate_ctc_layer >= encoder_layers:
            raise ValueError(
                f"intermediate_ctc_layer must be below encoder_layers={encoder_layers} (0 turns InterCTC off), got "
                f"{intermediate_ctc_layer}."
            )
        half_rate = encoder_half_rate_layers
        if half_rate and not half_rate[0] < half_rate[1] <= encoder_layers:
            raise ValueError(
                f"encoder_half_rate_layers=[first, end] needs first < end <= encoder_layers={encoder_layers}, got "
                f"{list(half_rate)}."
            )
        if retrieval_temperature == 0:
            raise ValueError("retrieval_temperature must be above 0 (similarities are divided by it).")
        if encoder_positions not in ENCODER_POSITIONS:
            raise ValueError(f"encoder_positions must be one of {ENCODER_POSITIONS}, got {encoder_positions!r}.")
        if encoder_positions == "rotary" and (d_model // encoder_attention_heads) % 2:
            raise ValueError("encoder_positions='rotary' needs an even head size (d_model / encoder_attention_heads).")
        self.tie_word_embeddings = tie_word_embeddings
        check_unknown_config_keys(type(self), kwargs)
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            decoder_start_token_id=decoder_start_token_id,
            is_encoder_decoder=is_encoder_decoder,
            **kwargs,
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> Mu2SlamConfig:
        """`PreTrainedConfig.from_pretrained`, with a clear error for a local path that does not exist."""
        with pretrained_location(pretrained_model_name_or_path):
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def known_fields(cls) -> set[str]:
        """Every name a config can set: this class's arguments, transformers' common ones and their aliases."""
        own = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
        # num_labels is a property of PreTrainedConfig, set like a field (classification heads).
        return own | set(PreTrainedConfig().to_dict()) | set(cls.attribute_map) | {"num_labels"}

    @classmethod
    def check_overrides(cls, overrides: Mapping[str, Any]) -> None:
        """Raise a ValueError for a name that is no config field (with the closest one) or a value of the wrong
        type or range. Used on free-form maps (a recipe's ``model_overrides``) before a config is built."""
        known = cls.known_fields()
        for name, value in overrides.items():
            if name not in known:
                raise ValueError(f"{name!r} is not a Mu2SlamConfig field{_did_you_mean(name, known)}.")
            check_config_field(name, value)

    @property
    def vocab_size(self) -> int:
        """Derived from the layout (text tokens + speech codes), so it can never disagree with it."""
        return self.vocabulary.vocab_size

    @vocab_size.setter
    def vocab_size(self, value: int) -> None:
        if value != self.vocab_size:
            raise ValueError(
                f"vocab_size={value} disagrees with text_vocab_size + codebook_size = {self.vocab_size}. "
                "Set text_vocab_size (the tokenizer's size) and codebook_size instead."
            )

    @property
    def vocabulary(self) -> VocabularyLayout:
        return VocabularyLayout(self.text_vocab_size, self.codebook_size)

    @property
    def num_languages(self) -> int:
        return len(self.languages)

    def language_id(self, code: str) -> int:
        """Index of a language code in the language embedding, or a ValueError listing the known codes
        (`vocabulary.language_index`)."""
        return language_index(self.languages, code, owner="model")

    @staticmethod
    def modality_id(modality: str) -> int:
        try:
            return MODALITIES[modality]
        except KeyError:
            raise ValueError(f"Unknown modality {modality!r}: use one of {sorted(MODALITIES)}.") from None

    def speech_output_lengths(self, num_frames):
        """Encoder frames the speech front end makes of ``num_frames`` log-mel frames (int or tensor)."""
        return subsampled_lengths(num_frames, 2, self.frontend_kernel_size, self.frontend_stride)

    @property
    def min_input_frames(self) -> int:
        """Fewest log-mel frames that give one encoder frame (the front end's receptive field)."""
        return receptive_field(2, self.frontend_kernel_size, self.frontend_stride)


def check_processor_languages_beside(config: Mu2SlamConfig, folder: str | os.PathLike) -> None:
    """If ``folder`` holds a processor_config.json, its languages must be ``config.languages`` in the same order.

    The ASR pipeline reads the model config and never the processor, so a config whose language list was edited or
    reordered would otherwise map every language code to another language's embedding without a word.
    """
    path = os.path.join(os.fspath(folder), "processor_config.json")
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as handle:
        languages = json.load(handle).get("languages")
    if languages is not None and list(languages) != list(config.languages):
        raise ValueError(
            f"The model config in {folder} lists the languages {config.languages} but its processor was saved with "
            f"{list(languages)}: language ids would point at the wrong embeddings. Restore the `languages` of the "
            "config.json the model was trained with."
        )


class Mu2SlamRetrievalConfig(Mu2SlamConfig):
    """The config of `Mu2SlamForRetrieval`: every field of `Mu2SlamConfig`, under its own ``model_type`` so that
    `AutoModel` builds the dual encoder (one Auto class maps each config type to one model class).

    `from_pretrained` also reads the config of any Mu2SLAM folder (pre-trained or fine-tuned seq2seq), which is how
    a retrieval model starts from one.
    """

    model_type = "mu2slam_retrieval"

    def __init__(self, **kwargs):
        # Defined so that transformers keeps Mu2SlamConfig's checked __init__ (it turns subclasses without one into
        # dataclasses with a generated __init__ that would skip every field).
        super().__init__(**kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> Mu2SlamRetrievalConfig:
        with pretrained_location(pretrained_model_name_or_path):
            config_dict, kwargs = cls.get_config_dict(pretrained_model_name_or_path, **kwargs)
        if config_dict.get("model_type") not in (Mu2SlamConfig.model_type, cls.model_type):
            raise ValueError(
                f"{pretrained_model_name_or_path!s} holds a {config_dict.get('model_type')!r} model, not a Mu2SLAM one "
                "(model_type 'mu2slam' or 'mu2slam_retrieval'): a retrieval model starts from a Mu2SLAM checkpoint."
            )
        return cls.from_dict({**config_dict, "model_type": cls.model_type}, **kwargs)

    @classmethod
    def from_mu2slam_config(cls, config: Mu2SlamConfig) -> Mu2SlamRetrievalConfig:
        """The same fields as a retrieval config."""
        values = {key: value for key, value in config.to_dict().items() if key not in ("model_type", "auto_map")}
        return cls.from_dict(values)


Mu2SlamConfig.register_for_auto_class()

__all__ = [
    "Mu2SlamConfig",
    "Mu2SlamRetrievalConfig",
    "check_config_field",
    "check_pretrained_location",
    "check_processor_languages_beside",
    "check_saved_files",
    "check_unknown_config_keys",
    "pretrained_location",
    "subsampled_lengths",
    "receptive_field",
]
