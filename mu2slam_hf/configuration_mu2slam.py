"""Mu2SlamConfig: every architecture, vocabulary and loss-weight setting of the model."""

from __future__ import annotations

from transformers import PreTrainedConfig

from .vocabulary import (
    BOS_ID,
    DEFAULT_LANGUAGES,
    EOS_ID,
    MASK_ID,
    MODALITIES,
    PAD_ID,
    UNK_ID,
    VocabularyLayout,
)

# Loss weights of the pre-training objectives (paper section 3.1). MT is not given in the paper.
DEFAULT_OBJECTIVE_LOSS_WEIGHTS = {
    "speech_only": 1.0,
    "text_only": 1.0,
    "speech_to_text": 0.3,
    "text_to_speech": 0.1,
    "speech_text_alignment": 0.1,
    "mt": 1.0,
    "ctc": 1.0,
}


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
        conformer_conv_kernel_size (`int`): depthwise convolution kernel of the Conformer blocks.
        hidden_act (`str`): activation of the feed-forward blocks.
        encoder_dropout / decoder_dropout (`float`): residual dropout (paper: 0 and 0.1).
        attention_dropout / activation_dropout (`float`): dropout on attention weights / FFN hidden.
        scale_embedding (`bool`): multiply token embeddings by sqrt(d_model).
        init_std (`float`): standard deviation of the weight initialisation.
        max_target_positions (`int`): longest decoder output the generation config allows.
        objective_loss_weights (`dict[str, float]`): weight of each pre-training objective.
        decoder_loss_weight / mlm_loss_weight / ctc_loss_weight (`float`): how the model's own forward sums
            the decoder, encoder-MLM and CTC losses it is given labels for.
        decoder_noise_ratio (`float`): noisy fine-tuning (paper 2.4, 0.06 there): in training only, this fraction
            of the decoder's input tokens (never the labels, never special tokens) is replaced by its nearest
            neighbour in the current token-embedding space within the same modality. 0 disables it.
        apply_spec_augment (`bool`): SpecAugment on `input_features` in training only (real frames only).
        mask_time_prob / mask_time_length / mask_time_min_masks: time masking as in Whisper/wav2vec 2.0
            (`mask_time_prob * frames / mask_time_length` spans of `mask_time_length` frames, at least the minimum).
        mask_feature_prob / mask_feature_length / mask_feature_min_masks: the same over the mel bins.
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
        decoder_ffn_dim: int = 4096,
        conformer_conv_kernel_size: int = 5,
        hidden_act: str = "silu",
        encoder_dropout: float = 0.0,
        decoder_dropout: float = 0.1,
        attention_dropout: float = 0.0,
        activation_dropout: float = 0.0,
        scale_embedding: bool = True,
        init_std: float = 0.02,
        max_target_positions: int = 448,
        objective_loss_weights: dict[str, float] | None = None,
        decoder_loss_weight: float = 1.0,
        mlm_loss_weight: float = 1.0,
        ctc_loss_weight: float = 1.0,
        decoder_noise_ratio: float = 0.0,
        apply_spec_augment: bool = False,
        mask_time_prob: float = 0.05,
        mask_time_length: int = 10,
        mask_time_min_masks: int = 2,
        mask_feature_prob: float = 0.0,
        mask_feature_length: int = 10,
        mask_feature_min_masks: int = 0,
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
        self.hidden_act = hidden_act
        self.encoder_dropout = encoder_dropout
        self.decoder_dropout = decoder_dropout
        self.attention_dropout = attention_dropout
        self.activation_dropout = activation_dropout
        self.scale_embedding = scale_embedding
        self.init_std = init_std
        self.max_target_positions = max_target_positions
        self.objective_loss_weights = {**DEFAULT_OBJECTIVE_LOSS_WEIGHTS, **(objective_loss_weights or {})}
        self.decoder_loss_weight = decoder_loss_weight
        self.mlm_loss_weight = mlm_loss_weight
        self.ctc_loss_weight = ctc_loss_weight
        if not 0.0 <= decoder_noise_ratio <= 1.0:
            raise ValueError(f"decoder_noise_ratio must be in [0, 1], got {decoder_noise_ratio}.")
        self.decoder_noise_ratio = decoder_noise_ratio
        self.apply_spec_augment = apply_spec_augment
        self.mask_time_prob = mask_time_prob
        self.mask_time_length = mask_time_length
        self.mask_time_min_masks = mask_time_min_masks
        self.mask_feature_prob = mask_feature_prob
        self.mask_feature_length = mask_feature_length
        self.mask_feature_min_masks = mask_feature_min_masks
        self.unk_token_id = unk_token_id
        self.mask_token_id = mask_token_id
        self.use_cache = use_cache
        for name, heads in (("encoder", encoder_attention_heads), ("decoder", decoder_attention_heads)):
            if d_model % heads:
                raise ValueError(f"d_model={d_model} is not divisible by {name}_attention_heads={heads}.")
        if conformer_conv_kernel_size % 2 == 0:
            raise ValueError(f"conformer_conv_kernel_size must be odd, got {conformer_conv_kernel_size}.")
        self.tie_word_embeddings = tie_word_embeddings
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            decoder_start_token_id=decoder_start_token_id,
            is_encoder_decoder=is_encoder_decoder,
            **kwargs,
        )

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
        """Index of a language code in the language embedding, or a ValueError listing the known codes."""
        try:
            return self.languages.index(code)
        except ValueError:
            raise ValueError(
                f"Unknown language code {code!r}. This model knows {len(self.languages)} languages: "
                f"{', '.join(self.languages)}. Pass one of these (ISO 639-1 codes)."
            ) from None

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


Mu2SlamConfig.register_for_auto_class()

__all__ = ["Mu2SlamConfig", "subsampled_lengths", "receptive_field"]
