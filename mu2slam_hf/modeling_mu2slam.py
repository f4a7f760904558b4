"""Mu2SLAM: a speech front end, a Conformer encoder shared by speech and text, and a Transformer decoder.

Shapes used in the docstrings: B batch, T log-mel frames, S encoder frames of the speech segment
(``config.speech_output_lengths(T)``), L text tokens, E = S + L encoder positions, U decoder positions,
D ``d_model``, V the unified vocabulary (see ``vocabulary.py``).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Unpack

import torch
from safetensors import SafetensorError
from tokenizers import Tokenizer
from torch import nn
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPastAndCrossAttentions,
    ModelOutput,
    SequenceClassifierOutput,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices
from transformers.utils import logging
from transformers.utils.generic import TransformersKwargs, can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_mu2slam import (
    Mu2SlamConfig,
    check_processor_languages_beside,
    pretrained_location,
)
from .generation_mu2slam import Mu2SlamEncoderDecoderCache, Mu2SlamGenerationMixin
from .input_checks import (
    TOKENIZER_FILES,
    WEIGHT_FILES,
    FiniteCheck,
    RangeCheck,
    check_finite_weights,
    check_forward_kwargs,
    check_ranges,
    check_speech_inputs,
    language_check,
    record_checksums,
    resolve_language_ids,
    verify_checksums,
)
from .ngram_lm import LM_FILE_NAME, CharNgramLanguageModel
from .pipeline_mu2slam import register_asr_pipeline
from .vocabulary import (
    IGNORE_INDEX,
    NUM_SPECIAL_TOKENS,
    SPEECH_MODALITY,
    TEXT_MODALITY,
    UNKNOWN_LANGUAGE_ID,
    check_vocabulary_matches,
)

logger = logging.get_logger(__name__)


# Every Auto class a saved folder answers to with trust_remote_code=True, wherever the package is not installed.
# save_pretrained writes only the entry of the class it is called on, so a folder saved from the seq2seq model
# would not load with AutoModel or AutoModelForSequenceClassification.
REMOTE_CODE_AUTO_MAP = {
    "AutoConfig": "configuration_mu2slam.Mu2SlamConfig",
    "AutoModel": "modeling_mu2slam.Mu2SlamModel",
    "AutoModelForSpeechSeq2Seq": "modeling_mu2slam.Mu2SlamForConditionalGeneration",
    "AutoModelForSeq2SeqLM": "modeling_mu2slam.Mu2SlamForConditionalGeneration",
    "AutoModelForSequenceClassification": "modeling_mu2slam.Mu2SlamForSequenceClassification",
}


# ----------------------------------------------------------------------------------------------- outputs


@dataclass
class Mu2SlamEncoderOutput(ModelOutput):
    """
    Args:
        last_hidden_state (`(B, E, D)`): encoder output; speech positions first, then text positions.
        hidden_states (`tuple` of `(B, E, D)`): the embeddings and every layer's output, when asked for (the
            layers of `config.encoder_half_rate_layers` with ceil(S/2) speech positions; see
            `Mu2SlamTimeReduction.upsample`).
        attentions (`tuple` of `(B, heads, E, E)`): attention weights (eager attention only), when asked for.
        attention_mask (`(B, E)`): 1 at real positions, 0 at padding.
        speech_length (`int`): S, the number of (padded) speech positions at the front; None for text only.
    """

    last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    attention_mask: torch.LongTensor | None = None
    speech_length: int | None = None


@dataclass
class Mu2SlamSeq2SeqOutput(ModelOutput):
    """Decoder outputs plus the encoder's (see `Mu2SlamEncoderOutput`)."""

    last_hidden_state: torch.FloatTensor | None = None
    past_key_values: Cache | None = None
    decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    decoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None
    encoder_last_hidden_state: torch.FloatTensor | None = None
    encoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    encoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    encoder_attention_mask: torch.LongTensor | None = None
    encoder_speech_length: int | None = None


@dataclass
class Mu2SlamSeq2SeqLMOutput(ModelOutput):
    """
    Args:
        loss: weighted sum of the losses below that had labels (config `*_loss_weight`).
        logits (`(B, U, V)`): decoder prediction scores over the unified vocabulary.
        decoder_loss / mlm_loss / ctc_loss: the unweighted parts (None when their labels were not given).
        row_losses (`(B, 4)`, detached): per row, unweighted: decoder cross-entropy summed over its counted tokens,
            that token count, the same for the encoder MLM (0 without `mlm_labels`). What training logs and what
            evaluation reports as NLL, without a second pass.
        encoder_attention_mask (`(B, E)`): the mask of `encoder_last_hidden_state`.
        language_id_loss: the unweighted language-identification cross-entropy (with `language_labels`).
        language_logits (`(B, num_languages)`): the language-identification head's scores (with `language_labels`).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    decoder_loss: torch.FloatTensor | None = None
    mlm_loss: torch.FloatTensor | None = None
    ctc_loss: torch.FloatTensor | None = None
    row_losses: torch.FloatTensor | None = None
    past_key_values: Cache | None = None
    decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    decoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None
    encoder_last_hidden_state: torch.FloatTensor | None = None
    encoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    encoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    encoder_attention_mask: torch.LongTensor | None = None
    language_id_loss: torch.FloatTensor | None = None
    language_logits: torch.FloatTensor | None = None


# ------------------------------------------------------------------------------------- building blocks


def sinusoidal_positions(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Fixed sinusoidal embeddings of integer `positions` (any shape) -> (*positions.shape, dim), float32."""
    half = dim // 2
    inv_freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=positions.device, dtype=torch.float32) / half)
    angles = positions.float().unsqueeze(-1) * inv_freq
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def rotary_angles(positions: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE (Su et al. 2021) of integer ``positions`` (E,) -> (cos, sin), each (E, head_dim), float32."""
    inv_freq = 10000.0 ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.float().unsqueeze(-1) * inv_freq
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(states: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """(B, H, E, head_dim) queries or keys rotated by their positions' angles (the rotate-half form)."""
    cos, sin = (part.to(states.dtype) for part in rotary)
    first, second = states.chunk(2, dim=-1)
    return states * cos + torch.cat([-second, first], dim=-1) * sin


class Mu2SlamScaledEmbedding(nn.Embedding):
    """Token embedding multiplied by `embed_scale` (sqrt(D) when `config.scale_embedding`)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int, embed_scale: float = 1.0):
        super().__init__(num_embeddings, embedding_dim, padding_idx)
        self.embed_scale = embed_scale

    @classmethod
    def for_config(cls, config: Mu2SlamConfig) -> Mu2SlamScaledEmbedding:
        """The unified-vocabulary token embedding, scaled by sqrt(d_model) when `config.scale_embedding`."""
        embed_scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        return cls(config.vocab_size, config.d_model, config.pad_token_id, embed_scale)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return super().forward(input_ids) * self.embed_scale


class Mu2SlamSpeechProjection(nn.Linear):
    """The front end's projection to d_model: a Linear layer with its own initialisation (see `_init_weights`)."""


class Mu2SlamSpeechFrontEnd(nn.Module):
    """Two stride-2 Conv2d layers over (time, mel) and a linear projection: (B, T, F) -> S (B, S, D).

    The convolutions are unpadded, so output frame t sees only input frames [4t, 4t + 7): the frames of its
    own utterance. Padding in a batch therefore never changes a real output frame.
    """

    def __init__(self, config: Mu2SlamConfig):
        super().__init__()
        channels, kernel, stride = config.frontend_channels, config.frontend_kernel_size, config.frontend_stride
        self.conv1 = nn.Conv2d(1, channels, kernel, stride)
        self.conv2 = nn.Conv2d(channels, channels, kernel, stride)
        self.config = config
        self.proj = Mu2SlamSpeechProjection(
            channels * config.speech_output_lengths(config.num_mel_bins), config.d_model
        )

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        hidden = F.relu(self.conv1(input_features.unsqueeze(1)))  # (B, C, T', F')
        hidden = F.relu(self.conv2(hidden))  # (B, C, S, F'')
        batch, channels, frames, freq = hidden.shape
        return self.proj(hidden.permute(0, 2, 1, 3).reshape(batch, frames, channels * freq))


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain softmax attention. query (B, H, Q, d), key/value (B, H, K, d) -> ((B, Q, H, d), (B, H, Q, K)).
    ``attention_mask``: additive (eager's masks) or boolean, True where a query may attend (SDPA's masks, which
    leave a causal module's mask out where it is only causal)."""
    queries, keys = query.shape[-2], key.shape[-2]
    if attention_mask is None and getattr(module, "is_causal", False) and queries > 1:
        causal = torch.ones(queries, keys, dtype=torch.bool, device=query.device).tril(keys - queries)
        attention_mask = causal[None, None]
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        scores = torch.where(attention_mask[:, :, :, :keys], scores, torch.finfo(scores.dtype).min)
    elif attention_mask is not None:
        scores = scores + attention_mask[:, :, :, :keys]
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def attention_function(implementation: str, query: torch.Tensor) -> Callable:
    """The attention interface of ``implementation`` (transformers' registry), except for SDPA in low-precision
    training on a CPU: there SDPA's CPU flash kernel runs its backward pass 3-4x slower than the same attention as
    matrix products (bf16, 4 heads of 64, 75-150 frames: 16-18 ms against 4.5-6 ms forward and backward), a fifth to
    a quarter of the small preset's training step, so the same computation runs as `eager_attention_forward`, which
    takes SDPA's masks. In float32, and without gradients, the flash kernel is as fast or faster and is kept."""
    if (
        implementation == "sdpa"
        and query.device.type == "cpu"
        and query.dtype in (torch.bfloat16, torch.float16)
        and query.requires_grad
    ):
        return eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)


def any_length_attention_kernels(query: torch.Tensor) -> contextlib.AbstractContextManager:
    """SDPA on a GPU without cuDNN's fused attention (the other enabled kernels stay as the user set them).

    cuDNN's kernel, SDPA's first choice on recent GPUs, builds a graph for every new sequence length, tens of
    milliseconds of host time each; length-bucketed batches and a decoder cache that grows by one position per token
    bring a new length to almost every call (on an H200 it took 330 ms of a 495 ms training step). The flash and
    memory-efficient kernels take any length at no such cost.
    """
    if not query.is_cuda or not torch.backends.cuda.cudnn_sdp_enabled() or torch.compiler.is_compiling():
        return contextlib.nullcontext()
    enabled = {
        SDPBackend.FLASH_ATTENTION: torch.backends.cuda.flash_sdp_enabled(),
        SDPBackend.EFFICIENT_ATTENTION: torch.backends.cuda.mem_efficient_sdp_enabled(),
        SDPBackend.MATH: torch.backends.cuda.math_sdp_enabled(),
    }
    return sdpa_kernel([backend for backend, on in enabled.items() if on] or [SDPBackend.MATH])


class Mu2SlamAttention(nn.Module):
    """Multi-head attention through transformers' attention interface (eager, sdpa, flash, flex).

    Self-attention when `key_value_states` is None, cross-attention otherwise; with an `EncoderDecoderCache`
    the decoder's keys/values are appended per step and the cross-attention keys/values computed once.
    """

    def __init__(self, config: Mu2SlamConfig, num_heads: int, is_causal: bool = False, layer_idx: int | None = None):
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = config.d_model // num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = is_causal
        self.layer_idx = layer_idx
        self.attention_dropout = config.attention_dropout
        self.q_proj = nn.Linear(config.d_model, config.d_model)
        self.k_proj = nn.Linear(config.d_model, config.d_model)
        self.v_proj = nn.Linear(config.d_model, config.d_model)
        self.out_proj = nn.Linear(config.d_model, config.d_model)

    def _heads(self, states: torch.Tensor, proj: nn.Linear) -> torch.Tensor:
        batch, length, _ = states.shape
        return proj(states).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        key_value_states: torch.Tensor | None = None,
        past_key_values: EncoderDecoderCache | None = None,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``rotary``: the (cos, sin) of :func:`rotary_angles` for self-attention with RoPE (the encoder's)."""
        is_cross_attention = key_value_states is not None
        query = self._heads(hidden_states, self.q_proj)

        cache, reuse_cross = None, False
        if past_key_values is not None:
            if is_cross_attention:
                reuse_cross = past_key_values.is_updated.get(self.layer_idx, False)
                past_key_values.is_updated[self.layer_idx] = True
                cache = past_key_values.cross_attention_cache
            else:
                cache = past_key_values.self_attention_cache

        if reuse_cross:
            key, value = cache.layers[self.layer_idx].keys, cache.layers[self.layer_idx].values
        else:
            source = key_value_states if is_cross_attention else hidden_states
            key, value = self._heads(source, self.k_proj), self._heads(source, self.v_proj)
            if cache is not None:
                key, value = cache.update(key, value, self.layer_idx)
        if rotary is not None:
            query, key = apply_rotary(query, rotary), apply_rotary(key, rotary)

        attention_interface = attention_function(self.config._attn_implementation, query)
        with any_length_attention_kernels(query):
            output, weights = attention_interface(
                self,
                query,
                key,
                value,
                attention_mask,
                dropout=self.attention_dropout if self.training else 0.0,
                scaling=self.scaling,
                **kwargs,
            )
        output = output.reshape(*hidden_states.shape[:-1], -1)
        return self.out_proj(output), weights


class Mu2SlamFeedForward(nn.Module):
    def __init__(self, config: Mu2SlamConfig, ffn_dim: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(config.d_model, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, config.d_model)
        self.act = ACT2FN[config.hidden_act]
        self.activation_dropout = config.activation_dropout
        self.dropout = dropout

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = F.dropout(self.act(self.fc1(hidden_states)), self.activation_dropout, self.training)
        return F.dropout(self.fc2(hidden_states), self.dropout, self.training)


class Mu2SlamConvolutionModule(nn.Module):
    """Conformer convolution: pointwise + GLU, depthwise conv, LayerNorm, SiLU, pointwise.

    Padded positions are zeroed before the depthwise convolution and each segment (speech, then text) is
    convolved on its own, so no padding and no other segment ever leaks into a real position. LayerNorm
    replaces the original BatchNorm: batch statistics would couple the utterances of a batch.
    """

    def __init__(self, config: Mu2SlamConfig):
        super().__init__()
        channels, kernel = config.d_model, config.conformer_conv_kernel_size
        self.pointwise_in = nn.Linear(channels, 2 * channels)
        self.depthwise = nn.Conv1d(channels, channels, kernel, padding=kernel // 2, groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.pointwise_out = nn.Linear(channels, channels)
        self.dropout = config.encoder_dropout

    def forward(self, hidden_states: torch.Tensor, padding_mask: torch.Tensor, speech_length: int) -> torch.Tensor:
        """hidden_states (B, E, D), padding_mask (B, E) with 1 at real positions -> (B, E, D)."""
        hidden_states = F.glu(self.pointwise_in(hidden_states), dim=-1)
        hidden_states = hidden_states.masked_fill(~padding_mask.bool().unsqueeze(-1), 0.0).transpose(1, 2)
        segments = hidden_states.split([speech_length, hidden_states.shape[-1] - speech_length], dim=-1)
        hidden_states = torch.cat([self.depthwise(seg) for seg in segments if seg.shape[-1] > 0], dim=-1)
        hidden_states = F.silu(self.norm(hidden_states.transpose(1, 2)))
        return F.dropout(self.pointwise_out(hidden_states), self.dropout, self.training)


class Mu2SlamHalvingConvolution(nn.Conv1d):
    """The depthwise stride-2 convolution of `Mu2SlamTimeReduction` (a class of its own for its initialisation)."""


class Mu2SlamHalvingProjection(nn.Linear):
    """The pointwise projection of `Mu2SlamTimeReduction` (a class of its own for its initialisation)."""


class Mu2SlamTimeReduction(nn.Module):
    """Squeezeformer's temporal U-Net (Kim et al. 2022): the middle encoder layers see the speech frames at half the
    rate (`config.encoder_half_rate_layers`).

    `reduce` halves the speech segment with a depthwise convolution of stride 2 and a pointwise projection; `restore`
    repeats each reduced frame twice and adds the states from before the halving, so the layers after it, and all
    the encoder's output, are back at the front end's rate. Text positions pass through both unchanged. Padded
    frames are zeroed before the convolution, so a clip's frames are the same padded in a batch as alone.
    """

    def __init__(self, config: Mu2SlamConfig):
        super().__init__()
        width = config.d_model
        self.depthwise = Mu2SlamHalvingConvolution(width, width, 3, stride=2, padding=1, groups=width)
        self.pointwise = Mu2SlamHalvingProjection(width, width)

    def reduce(
        self, hidden_states: torch.Tensor, padding_mask: torch.Tensor, speech_length: int
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(B, S + L, D) states, (B, S + L) mask -> (B, ceil(S/2) + L, D), its mask, ceil(S/2)."""
        speech, text = hidden_states.split([speech_length, hidden_states.shape[1] - speech_length], dim=1)
        speech_mask, text_mask = padding_mask.split([speech_length, padding_mask.shape[1] - speech_length], dim=1)
        speech = speech.masked_fill(~speech_mask.bool().unsqueeze(-1), 0.0)
        speech = self.pointwise(self.depthwise(speech.transpose(1, 2)).transpose(1, 2))
        # Reduced frame t covers input frames 2t-1..2t+1: it is real when its centre 2t is.
        mask = torch.cat([speech_mask[:, ::2], text_mask], dim=1)
        return torch.cat([speech, text], dim=1), mask, speech.shape[1]

    @staticmethod
    def upsample(hidden_states: torch.Tensor, speech_length: int, total_length: int) -> torch.Tensor:
        """States of a half-rate layer (B, ceil(S/2) + L, D) -> (B, S + L, D), each speech frame repeated twice;
        states already at full rate (`total_length` = S + L positions) are returned as they are."""
        if hidden_states.shape[1] == total_length:
            return hidden_states
        text_length = total_length - speech_length
        speech, text = hidden_states.split([hidden_states.shape[1] - text_length, text_length], dim=1)
        return torch.cat([speech.repeat_interleave(2, dim=1)[:, :speech_length], text], dim=1)

    def restore(self, hidden_states: torch.Tensor, skip: torch.Tensor, speech_length: int) -> torch.Tensor:
        """Half-rate states (B, ceil(S/2) + L, D) and the states from before `reduce` (B, S + L, D) -> (B, S + L, D)."""
        upsampled = self.upsample(hidden_states, speech_length, skip.shape[1])
        return torch.cat([upsampled[:, :speech_length] + skip[:, :speech_length], upsampled[:, speech_length:]], 1)


class Mu2SlamConformerLayer(GradientCheckpointingLayer):
    """Macaron Conformer block: x + FFN/2, + MHSA, + Conv, + FFN/2, then LayerNorm (all sub-blocks pre-LN)."""

    def __init__(self, config: Mu2SlamConfig, layer_idx: int):
        super().__init__()
        self.ffn1_norm, self.ffn1 = nn.LayerNorm(config.d_model), self._ffn(config)
        self.attn_norm = nn.LayerNorm(config.d_model)
        self.self_attn = Mu2SlamAttention(config, config.encoder_attention_heads, layer_idx=layer_idx)
        self.conv_norm, self.conv = nn.LayerNorm(config.d_model), Mu2SlamConvolutionModule(config)
        self.ffn2_norm, self.ffn2 = nn.LayerNorm(config.d_model), self._ffn(config)
        self.final_norm = nn.LayerNorm(config.d_model)
        self.dropout = config.encoder_dropout

    @staticmethod
    def _ffn(config: Mu2SlamConfig) -> Mu2SlamFeedForward:
        return Mu2SlamFeedForward(config, config.encoder_ffn_dim, config.encoder_dropout)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        padding_mask: torch.Tensor,
        speech_length: int,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        """(B, E, D) -> (B, E, D). The attention weights are recorded from `self_attn` (see `Mu2SlamEncoder`)."""
        hidden_states = hidden_states + 0.5 * self.ffn1(self.ffn1_norm(hidden_states))
        attn_output, _ = self.self_attn(self.attn_norm(hidden_states), attention_mask, rotary=rotary, **kwargs)
        hidden_states = hidden_states + F.dropout(attn_output, self.dropout, self.training)
        hidden_states = hidden_states + self.conv(self.conv_norm(hidden_states), padding_mask, speech_length)
        hidden_states = hidden_states + 0.5 * self.ffn2(self.ffn2_norm(hidden_states))
        return self.final_norm(hidden_states)


class Mu2SlamDecoderLayer(GradientCheckpointingLayer):
    """Pre-LN Transformer decoder block: causal self-attention, cross-attention, feed-forward."""

    def __init__(self, config: Mu2SlamConfig, layer_idx: int):
        super().__init__()
        heads = config.decoder_attention_heads
        self.self_attn_norm = nn.LayerNorm(config.d_model)
        self.self_attn = Mu2SlamAttention(config, heads, is_causal=True, layer_idx=layer_idx)
        self.cross_attn_norm = nn.LayerNorm(config.d_model)
        self.cross_attn = Mu2SlamAttention(config, heads, layer_idx=layer_idx)
        self.ffn_norm = nn.LayerNorm(config.d_model)
        self.ffn = Mu2SlamFeedForward(config, config.decoder_ffn_dim, config.decoder_dropout)
        self.dropout = config.decoder_dropout

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None,
        past_key_values: EncoderDecoderCache | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        """(B, U, D) -> (B, U, D). The attention weights are recorded from `self_attn` and `cross_attn`."""
        attn, _ = self.self_attn(
            self.self_attn_norm(hidden_states), attention_mask, past_key_values=past_key_values, **kwargs
        )
        hidden_states = hidden_states + F.dropout(attn, self.dropout, self.training)
        attn, _ = self.cross_attn(
            self.cross_attn_norm(hidden_states),
            encoder_attention_mask,
            key_value_states=encoder_hidden_states,
            past_key_values=past_key_values,
            **kwargs,
        )
        hidden_states = hidden_states + F.dropout(attn, self.dropout, self.training)
        hidden_states = hidden_states + self.ffn(self.ffn_norm(hidden_states))
        return hidden_states


class Mu2SlamMLMHead(nn.Module):
    """Encoder MLM head: dense + activation + LayerNorm, then the (tied) token embedding as output layer."""

    def __init__(self, config: Mu2SlamConfig):
        super().__init__()
        self.dense = nn.Linear(config.d_model, config.d_model)
        self.act = ACT2FN[config.hidden_act]
        self.norm = nn.LayerNorm(config.d_model)
        self.decoder = nn.Linear(config.d_model, config.vocab_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(self.act(self.dense(hidden_states))))


class Mu2SlamCTCSlotOffsets(nn.Linear):
    """(B, S, D) -> (B, S, k * D): each encoder frame's offset for each of its k CTC label slots; zero at first
    (`_init_weights`), also when grown onto a trained 1-slot model."""


class Mu2SlamCTCHead(nn.Module):
    """CTC over the text tokens, tied to the text rows of the shared token embedding (blank = <pad>) plus a bias.

    Tying keeps the head free of a second vocabulary-sized matrix (64k x 1024 for the spm model). With
    `config.ctc_upsampling` k > 1 every encoder frame gives k label slots: slot j is the frame's state plus its own
    linear offset (`slot_offsets`, zero at first, so the k slots start as copies and a grown head's best path is the
    1-slot head's: CTC merges the repeats).
    """

    def __init__(self, config: Mu2SlamConfig):
        super().__init__()
        self.text_vocab_size = config.text_vocab_size
        self.bias = nn.Parameter(torch.zeros(config.text_vocab_size))
        self.upsampling = config.ctc_upsampling
        self.slot_offsets = (
            Mu2SlamCTCSlotOffsets(config.d_model, config.d_model * self.upsampling) if self.upsampling > 1 else None
        )

    def forward(self, hidden_states: torch.Tensor, token_embedding: torch.Tensor) -> torch.Tensor:
        """(B, S, D) encoder states, (V, D) embedding -> (B, S * ctc_upsampling, text_vocab_size) logits (the slots
        of frame t at positions t * k ... t * k + k - 1)."""
        if self.slot_offsets is not None:
            batch, frames, width = hidden_states.shape
            offsets = self.slot_offsets(hidden_states).view(batch, frames, self.upsampling, width)
            hidden_states = (hidden_states.unsqueeze(2) + offsets).view(batch, frames * self.upsampling, width)
        return F.linear(hidden_states, token_embedding[: self.text_vocab_size], self.bias)

    def slot_lengths(self, frame_lengths: torch.Tensor) -> torch.Tensor:
        """(B,) encoder frames -> (B,) CTC label slots."""
        return frame_lengths * self.upsampling


def masked_mean(hidden_states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, S, D) states, (B, S) mask -> (B, D) mean over the unmasked positions."""
    weights = mask.unsqueeze(-1).to(hidden_states.dtype)
    return (hidden_states * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class Mu2SlamLanguageIdHead(nn.Module):
    """Spoken language identification: a dense layer + tanh on every encoder state, then the statistics (mean and
    standard deviation) of those frames over the utterance (x-vector pooling), then one score per language.

    The per-frame nonlinearity before pooling lets the head count frames of language-specific sounds; a mean of the
    states alone is a linear view of the utterance average.
    """

    def __init__(self, config: Mu2SlamConfig):
        super().__init__()
        # One weight per encoder state (the embeddings, then each layer's output): `config.language_id_all_layers`.
        states = config.encoder_layers + 1
        self.layer_weights = nn.Parameter(torch.zeros(states)) if config.language_id_all_layers else None
        self.frames = nn.Linear(config.d_model, config.d_model)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(2 * config.d_model, config.num_languages)

    def mix_layers(self, hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The encoder's `hidden_states` (each (B, S, D)) -> their softmax(layer_weights)-weighted sum (B, S, D)."""
        if len(hidden_states) != self.layer_weights.shape[0]:
            raise ValueError(
                f"The language-identification head weighs {self.layer_weights.shape[0]} encoder states, but the "
                f"encoder returned {len(hidden_states)}: the head was trained for another encoder depth."
            )
        weights = self.layer_weights.softmax(-1).to(hidden_states[0].dtype)
        frames = hidden_states[-1].shape[1]  # half-rate layers (`encoder_half_rate_layers`) are repeated up to it
        states = [Mu2SlamTimeReduction.upsample(states, frames, frames) for states in hidden_states]
        return torch.einsum("l,lbsd->bsd", weights, torch.stack(states))

    def forward(self, hidden_states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, S, D) encoder states of speech (or their layer mix), (B, S) mask -> (B, num_languages) logits."""
        frames = torch.tanh(self.frames(hidden_states))
        mean = masked_mean(frames, mask)
        deviation = masked_mean((frames - mean.unsqueeze(1)) ** 2, mask).clamp(min=1e-6).sqrt()
        return self.classifier(self.dropout(torch.cat([mean, deviation], dim=-1)))


# ------------------------------------------------------------------------------ fine-tuning augmentation


def _span_mask(batch: int, length: int, prob: float, span: int, min_masks: int, lengths=None) -> torch.Tensor | None:
    """(batch, length) bool SpecAugment spans from transformers' `_compute_mask_indices`; None if nothing fits."""
    if prob <= 0 or span > length:
        return None
    attention = None if lengths is None else (torch.arange(length) < lengths.cpu().unsqueeze(-1)).long()
    return torch.from_numpy(_compute_mask_indices((batch, length), prob, span, attention, min_masks))


def spec_augment(
    input_features: torch.Tensor, attention_mask: torch.Tensor | None, config: Mu2SlamConfig
) -> torch.Tensor:
    """SpecAugment time and frequency masking of (B, T, F) log-mel features, on real frames only -> (B, T, F).

    Masked values become the utterance's mean over its real frames and bins (0 for normalised features, as in
    Whisper; the mean keeps unnormalised log-mels in range). Padded frames are left as they are.
    """
    batch, frames, bins = input_features.shape
    real = (
        torch.ones(batch, frames, dtype=torch.bool, device=input_features.device)
        if attention_mask is None
        else attention_mask.bool()
    )
    masked = torch.zeros_like(input_features, dtype=torch.bool)
    time = _span_mask(
        batch, frames, config.mask_time_prob, config.mask_time_length, config.mask_time_min_masks, real.sum(-1)
    )
    if time is not None:
        masked |= time.to(masked.device).unsqueeze(-1)
    freq = _span_mask(batch, bins, config.mask_feature_prob, config.mask_feature_length, config.mask_feature_min_masks)
    if freq is not None:
        masked |= freq.to(masked.device).unsqueeze(1)
    masked &= real.unsqueeze(-1)
    weights = real.unsqueeze(-1).to(input_features.dtype)
    mean = (input_features * weights).sum((1, 2)) / (weights.sum((1, 2)) * bins).clamp(min=1.0)
    return torch.where(masked, mean[:, None, None].to(input_features.dtype), input_features)


@torch.no_grad()
def nearest_neighbour_tokens(token_ids: torch.Tensor, embedding: torch.Tensor, candidates: range) -> torch.Tensor:
    """For each id (N,) in `candidates`, the other candidate with the highest cosine similarity in `embedding`
    (V, D) -> (N,). Only the N given rows are compared with the candidate rows: (N, |candidates|) similarities."""
    weight = embedding[candidates.start : candidates.stop].float()
    weight = F.normalize(weight, dim=-1)
    similarity = weight[token_ids - candidates.start] @ weight.T
    similarity[torch.arange(len(token_ids), device=token_ids.device), token_ids - candidates.start] = -float("inf")
    return similarity.argmax(-1) + candidates.start


@torch.no_grad()
def add_decoder_noise(
    decoder_input_ids: torch.Tensor,
    embedding: torch.Tensor,
    ratio: float,
    text_vocab_size: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Noisy fine-tuning (paper 2.4): replace each non-special token of (B, U) decoder inputs with probability
    `ratio` by its nearest neighbour (cosine) among the tokens of its own modality -> (B, U) new ids.

    Text tokens ([NUM_SPECIAL_TOKENS, text_vocab_size)) map to text tokens, speech codes ([text_vocab_size, V))
    to speech codes; the special tokens (pad, bos, eos, unk, [MASK]) are never replaced nor produced.
    """
    eligible = decoder_input_ids >= NUM_SPECIAL_TOKENS
    draws = torch.rand(decoder_input_ids.shape, generator=generator, device=generator.device if generator else None)
    chosen = eligible & (draws.to(decoder_input_ids.device) < ratio)
    if not bool(chosen.any()):
        return decoder_input_ids
    noisy = decoder_input_ids.clone()
    for candidates in (range(NUM_SPECIAL_TOKENS, text_vocab_size), range(text_vocab_size, embedding.shape[0])):
        in_range = chosen & (decoder_input_ids >= candidates.start) & (decoder_input_ids < candidates.stop)
        if len(candidates) < 2 or not bool(in_range.any()):
            continue
        unique, inverse = decoder_input_ids[in_range].unique(return_inverse=True)
        noisy[in_range] = nearest_neighbour_tokens(unique, embedding.detach(), candidates)[inverse]
    return noisy


# -------------------------------------------------------------------------------------------- models


class Mu2SlamPreTrainedModel(PreTrainedModel):
    config_class = Mu2SlamConfig
    config: Mu2SlamConfig
    base_model_prefix = "model"
    main_input_name = "input_features"
    input_modalities = ("audio", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["Mu2SlamConformerLayer", "Mu2SlamDecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    # The `auto_map` that `save_pretrained` writes (the retrieval model answers to other Auto classes).
    remote_code_auto_map = REMOTE_CODE_AUTO_MAP

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path, *args, allow_missing_weights: bool = False, check_integrity: bool = True,
        **kwargs,
    ):  # fmt: skip
        """`PreTrainedModel.from_pretrained`, with clear errors for a folder that does not exist, corrupt weights,
        weights that do not fit the config (missing encoder/decoder weights, extra layers; new task heads are fine),
        and a tokenizer or processor saved beside the model that does not fit its vocabulary or languages.

        Args:
            allow_missing_weights: load even when weights of the base model are missing or the checkpoint has layers
                the config lacks (the missing ones stay randomly initialised).
            check_integrity: compare the weights and tokenizer.json with the checksums saved beside them and refuse
                NaN/inf weights (`mu2slam_hf.input_checks`); False (or `MU2SLAM_SKIP_INTEGRITY_CHECKS=1`) skips it.
        """
        verify_checksums(pretrained_model_name_or_path, WEIGHT_FILES + TOKENIZER_FILES, check_integrity)
        return_info = kwargs.pop("output_loading_info", False)
        try:
            with pretrained_location(pretrained_model_name_or_path):
                model, info = super().from_pretrained(
                    pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs
                )
        except SafetensorError as error:
            raise ValueError(
                f"The weights in {pretrained_model_name_or_path!s} are corrupt or truncated ({error}). Re-download "
                "or re-save them; the training loop's previous checkpoint-<step> folder is left intact by design."
            ) from error
        check_finite_weights(model, pretrained_model_name_or_path, check_integrity)
        if not allow_missing_weights:
            model.check_loaded_weights(info, pretrained_model_name_or_path)
        check_tokenizer_beside(model.config, pretrained_model_name_or_path)
        check_processor_languages_beside(model.config, pretrained_model_name_or_path)
        if isinstance(model, Mu2SlamGenerationMixin):
            model.load_asr_language_model(pretrained_model_name_or_path, **kwargs)
        return (model, info) if return_info else model

    def check_loaded_weights(self, info: dict, location) -> None:
        """Raise a ValueError when the checkpoint lacks weights of the base model (random layers would run) or has
        layers this config does not (a config with fewer layers than the weights)."""
        base = getattr(self, self.base_model_prefix, None)
        head_prefix = f"{self.base_model_prefix}." if isinstance(base, nn.Module) else ""
        missing = sorted(key for key in info["missing_keys"] if key.startswith(head_prefix))
        extra_layers = sorted(key for key in info["unexpected_keys"] if self._is_extra_layer(key))
        problems = [f"{len(missing)} weight(s) missing (e.g. {missing[:3]})"] if missing else []
        if extra_layers:
            problems.append(f"{len(extra_layers)} weight(s) of layers the config lacks (e.g. {extra_layers[:3]})")
        if problems:
            raise ValueError(
                f"The weights in {location!s} do not fit this config: {'; '.join(problems)}. Is config.json the one "
                "the weights were saved with (layer counts, sizes)? Pass allow_missing_weights=True to load anyway "
                "(missing layers stay randomly initialised, extra ones are dropped)."
            )

    def _is_extra_layer(self, key: str) -> bool:
        """Whether a checkpoint key names a layer beyond one of this model's layer lists."""
        module: nn.Module = self
        for part in key.split(".")[:-1]:
            if isinstance(module, nn.ModuleList):
                if not (part.isdigit() and int(part) < len(module)):
                    return True
                module = module[int(part)]
            elif isinstance(getattr(module, part, None), nn.Module):
                module = getattr(module, part)
            else:
                return False
        return False

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save weights (safetensors), config and the remote code, with a complete `auto_map`."""
        self.config.auto_map = dict(self.remote_code_auto_map)
        output = super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            record_checksums(save_directory, WEIGHT_FILES)
        language_model = getattr(self, "asr_language_model", None)
        if language_model is not None:
            language_model.save(os.path.join(save_directory, LM_FILE_NAME))
        return output

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        super()._init_weights(module)
        if isinstance(module, Mu2SlamMLMHead):
            init.zeros_(module.decoder.bias)
        elif isinstance(module, Mu2SlamCTCHead):
            init.zeros_(module.bias)
        elif isinstance(module, Mu2SlamCTCSlotOffsets):
            init.zeros_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, Mu2SlamLanguageIdHead) and module.layer_weights is not None:
            init.zeros_(module.layer_weights)  # every layer weighed equally at first
        elif isinstance(module, nn.Conv2d | Mu2SlamSpeechProjection):
            init_speech_frontend_layer(module)
        elif isinstance(module, Mu2SlamHalvingConvolution):
            # The halving starts as a (1/4, 1/2, 1/4) smoothing and an identity projection, so the half-rate layers
            # first see the residual stream at its own scale (a random init would shrink it about 100x).
            init.copy_(module.weight, torch.tensor([0.25, 0.5, 0.25]).expand_as(module.weight))
            init.zeros_(module.bias)
        elif isinstance(module, Mu2SlamHalvingProjection):
            init.eye_(module.weight)
            init.zeros_(module.bias)


def init_speech_frontend_layer(layer: nn.Conv2d | nn.Linear) -> None:
    """Variance-preserving init of the speech front end (He for its ReLU convolutions, the only 2-D ones in the
    model; LeCun for its projection), so that normalised log-mels enter the encoder with a standard deviation near 1,
    on the scale of the sinusoidal positions added to them (0.6). With the model-wide N(0, 0.02) the speech frames
    came out about 100x smaller than the positions, and the encoder spent hundreds of steps growing its own input
    before it could learn the sounds.
    """
    if isinstance(layer, nn.Conv2d):
        init.kaiming_normal_(layer.weight, nonlinearity="relu")
    else:
        init.normal_(layer.weight, std=layer.in_features**-0.5)
    init.zeros_(layer.bias)


def check_tokenizer_beside(config: Mu2SlamConfig, folder) -> None:
    """If `folder` holds a tokenizer.json, its size must be `config.text_vocab_size` (else a clear ValueError)."""
    tokenizer_file = os.path.join(os.fspath(folder), "tokenizer.json")
    if os.path.isfile(tokenizer_file):
        text_vocab_size = Tokenizer.from_file(tokenizer_file).get_vocab_size(with_added_tokens=True)
        check_vocabulary_matches(config, text_vocab_size=text_vocab_size)


class Mu2SlamEncoder(Mu2SlamPreTrainedModel):
    """The shared encoder: speech, text, or [speech; text] in one sequence, through Conformer layers.

    Each segment gets its own positions (counted from 0), language and modality embedding. Speech frames
    listed in `speech_mlm_mask` are replaced by the [MASK] token's embedding (paper eq. 2).

    `output_hidden_states` / `output_attentions` are recorded by transformers' output capturing (forward hooks on
    the layers and attention modules listed in `_can_record_outputs`), not passed through the layers by hand.
    """

    _can_record_outputs = {"hidden_states": Mu2SlamConformerLayer, "attentions": Mu2SlamAttention}

    def __init__(self, config: Mu2SlamConfig):
        super().__init__(config)
        self.embed_tokens = Mu2SlamScaledEmbedding.for_config(config)
        self.embed_languages = nn.Embedding(config.num_languages, config.d_model)
        self.embed_modalities = nn.Embedding(2, config.d_model)
        self.speech_frontend = Mu2SlamSpeechFrontEnd(config)
        self.layers = nn.ModuleList(Mu2SlamConformerLayer(config, i) for i in range(config.encoder_layers))
        self.time_reduction = Mu2SlamTimeReduction(config) if config.encoder_half_rate_layers else None
        self.layer_norm = nn.LayerNorm(config.d_model)
        self.dropout = config.encoder_dropout
        self.gradient_checkpointing = False
        self.post_init()

    def _segment(self, embeds: torch.Tensor, lang_ids: torch.Tensor, modality: int) -> torch.Tensor:
        modality_ids = torch.full_like(lang_ids, modality)
        known = (lang_ids != UNKNOWN_LANGUAGE_ID).unsqueeze(-1)
        language = self.embed_languages(lang_ids.clamp(min=0)) * known.to(embeds.dtype)
        embeds = embeds + (language + self.embed_modalities(modality_ids)).unsqueeze(1)
        if self.config.encoder_positions == "rotary":
            return embeds
        positions = sinusoidal_positions(torch.arange(embeds.shape[1], device=embeds.device), embeds.shape[-1])
        return embeds + positions.to(embeds.dtype)

    def _rotary(
        self, speech_length: int, text_length: int, device: torch.device, speech_stride: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """RoPE angles of [speech; text] positions, counted from 0 in each segment (as the absolute ones are).
        Half-rate speech frames (`speech_stride` 2) keep the position of the frame at their centre, so a position
        means the same time in every layer."""
        if self.config.encoder_positions != "rotary":
            return None
        speech = torch.arange(speech_length, device=device) * speech_stride
        positions = torch.cat([speech, torch.arange(text_length, device=device)])
        return rotary_angles(positions, self.config.d_model // self.config.encoder_attention_heads)

    def embed_speech(
        self,
        input_features: torch.Tensor,
        attention_mask: torch.Tensor | None,
        lang_ids: torch.Tensor,
        speech_mlm_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, F) features -> (B, S, D) embedded speech segment and its (B, S) mask."""
        if self.training and self.config.apply_spec_augment:
            input_features = spec_augment(input_features, attention_mask, self.config)
        speech = self.speech_frontend(input_features)
        if attention_mask is None:
            frame_mask = torch.ones(speech.shape[:2], dtype=torch.long, device=speech.device)
        else:
            lengths = self.config.speech_output_lengths(attention_mask.long().sum(-1))
            frame_mask = (torch.arange(speech.shape[1], device=speech.device) < lengths.unsqueeze(-1)).long()
        if speech_mlm_mask is not None:
            if speech_mlm_mask.shape != speech.shape[:2]:
                raise ValueError(
                    f"`speech_mlm_mask` has shape {tuple(speech_mlm_mask.shape)} but the speech front end makes "
                    f"{tuple(speech.shape[:2])} frames; build it with `config.speech_output_lengths`."
                )
            mask_embedding = self.embed_tokens.weight[self.config.mask_token_id] * self.embed_tokens.embed_scale
            speech = torch.where(speech_mlm_mask.bool().unsqueeze(-1), mask_embedding.to(speech.dtype), speech)
        return self._segment(speech, lang_ids, SPEECH_MODALITY), frame_mask

    def embed_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, lang_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) token ids -> (B, L, D) embedded text segment and its (B, L) mask."""
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.long()
        return self._segment(self.embed_tokens(input_ids), lang_ids, TEXT_MODALITY), mask

    @capture_outputs
    def forward(
        self,
        input_features: torch.FloatTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        input_ids: torch.LongTensor | None = None,
        text_attention_mask: torch.LongTensor | None = None,
        src_lang_ids: torch.LongTensor | None = None,
        text_lang_ids: torch.LongTensor | None = None,
        speech_mlm_mask: torch.BoolTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> Mu2SlamEncoderOutput:
        r"""
        Args:
            input_features (`(B, T, num_mel_bins)`): log-mel features of the speech segment.
            attention_mask (`(B, T)` or `(B, L)`): mask of `input_features` when given, else of `input_ids`.
            input_ids (`(B, L)`): token ids of the text segment (text only, or after the speech segment).
            text_attention_mask (`(B, L)`): mask of `input_ids` when both segments are given.
            src_lang_ids (`(B,)`): language of the first segment.
            text_lang_ids (`(B,)`): language of the text segment when both are given (default `src_lang_ids`).
            speech_mlm_mask (`(B, S)` bool): speech frames replaced by the [MASK] embedding.
            kwargs: `output_hidden_states`, `output_attentions` (eager attention), `return_dict` and the other
                `TransformersKwargs`; any other key is a TypeError.

        Returns:
            `Mu2SlamEncoderOutput`, or its `to_tuple()` (the fields that are not None, in order) with
            `return_dict=False` (default `config.return_dict`).
        """
        check_forward_kwargs(self, kwargs)
        has_speech, has_text = input_features is not None, input_ids is not None
        if not (has_speech or has_text):
            raise ValueError(
                "No encoder input: pass `input_features` (speech, from the feature extractor) and/or `input_ids` (text)."
            )
        reference = input_features if has_speech else input_ids
        batch, device = reference.shape[0], reference.device
        src_lang_ids = resolve_language_ids(self.config, src_lang_ids, batch, device, "src_lang_ids")
        text_lang = None
        if has_text:
            text_lang = src_lang_ids if text_lang_ids is None or not has_speech else text_lang_ids
            text_lang = resolve_language_ids(self.config, text_lang, batch, device, "text_lang_ids")
        if input_ids is not None and input_ids.ndim != 2:
            raise ValueError(f"`input_ids` must have shape (batch, length), got {tuple(input_ids.shape)}.")
        short_audio = check_speech_inputs(self.config, input_features, attention_mask) if has_speech else None
        check_ranges(
            FiniteCheck("input_features", input_features),
            short_audio or RangeCheck("input lengths", None, 0),
            RangeCheck("input_ids", input_ids, self.config.vocab_size),
            language_check(self.config, src_lang_ids, "src_lang_ids", allow_unknown=True),
            language_check(self.config, text_lang if has_speech else None, "text_lang_ids", allow_unknown=True),
        )

        if has_speech and not has_text and speech_mlm_mask is None and not self._records_outputs(kwargs):
            return self._encode_speech_in_length_groups(input_features, attention_mask, src_lang_ids, kwargs)
        text_mask = (text_attention_mask if has_speech else attention_mask) if has_text else None
        return self._encode(
            input_features, attention_mask, input_ids, text_mask, src_lang_ids, text_lang, speech_mlm_mask, kwargs
        )

    def _records_outputs(self, kwargs: dict) -> bool:
        return any(kwargs.get(f"output_{name}", getattr(self.config, f"output_{name}", False))
                   for name in ("hidden_states", "attentions"))  # fmt: skip

    def _encode(
        self, input_features, attention_mask, input_ids, text_mask, src_lang_ids, text_lang, speech_mlm_mask, kwargs
    ) -> Mu2SlamEncoderOutput:
        """The encoder proper, on checked inputs: the segments embedded, concatenated and run through the layers."""
        segments, masks = [], []
        if input_features is not None:
            embeds, mask = self.embed_speech(input_features, attention_mask, src_lang_ids, speech_mlm_mask)
            segments.append(embeds), masks.append(mask)
        if input_ids is not None:
            embeds, mask = self.embed_text(input_ids, text_mask, text_lang)
            segments.append(embeds), masks.append(mask)
        speech_length = segments[0].shape[1] if input_features is not None else 0

        hidden_states = F.dropout(torch.cat(segments, dim=1), self.dropout, self.training)
        padding_mask = torch.cat(masks, dim=1)
        hidden_states = self._run_layers(hidden_states, padding_mask, speech_length, kwargs)
        return Mu2SlamEncoderOutput(
            last_hidden_state=self.layer_norm(hidden_states),
            attention_mask=padding_mask,
            speech_length=speech_length or None,
        )

    def _run_layers(
        self, hidden_states: torch.Tensor, padding_mask: torch.Tensor, speech_length: int, kwargs: dict
    ) -> torch.Tensor:
        """(B, E, D) embedded input (its first `speech_length` positions speech) through the Conformer layers ->
        (B, E, D); the layers of `config.encoder_half_rate_layers` see the speech at half the rate."""
        num_layers = len(self.layers)
        first, end = (num_layers + 1, num_layers + 1)
        if speech_length and self.time_reduction is not None:
            first, end = self.config.encoder_half_rate_layers
        full_mask, layer_speech_length, skip = padding_mask, speech_length, None
        for index in range(num_layers + 1):
            if index == first:
                skip = hidden_states
                hidden_states, padding_mask, layer_speech_length = self.time_reduction.reduce(
                    hidden_states, padding_mask, speech_length
                )
            if index == end:
                hidden_states = self.time_reduction.restore(hidden_states, skip, speech_length)
                padding_mask, layer_speech_length = full_mask, speech_length
            if index == num_layers:
                return hidden_states
            if index in (0, first, end):
                attention_bias = create_bidirectional_mask(
                    config=self.config, inputs_embeds=hidden_states, attention_mask=padding_mask
                )
                text_length = hidden_states.shape[1] - layer_speech_length
                stride = 2 if first <= index < end else 1
                rotary = self._rotary(layer_speech_length, text_length, hidden_states.device, stride)
            hidden_states = self.layers[index](
                hidden_states, attention_bias, padding_mask, layer_speech_length, rotary, **kwargs
            )

    def _encode_speech_in_length_groups(
        self, input_features, attention_mask, src_lang_ids, kwargs
    ) -> Mu2SlamEncoderOutput:
        """Speech-only batches are encoded in groups of clips of similar length (`length_groups`) and put back in
        one padded output. A batch that mixes short and long clips (fine-tuning steps that draw several speech tasks
        put them in one batch) then costs about its real frames, not rows x the longest clip. Real positions are the
        same as in one padded pass (padding never reaches them); positions past a group's longest clip are zeros."""
        batch, frames = input_features.shape[:2]
        lengths = attention_mask.long().sum(-1) if attention_mask is not None else None
        groups = length_groups(lengths) if lengths is not None and batch > 1 else []
        grouped_frames = sum(len(rows) * int(lengths[rows].max()) for rows in groups)
        # Several smaller passes cost more per frame on a CPU: only worth it when they drop much of the padding
        # (length-bucketed batches of one task mostly stay whole: grouping them would only add passes).
        if len(groups) < 2 or grouped_frames > GROUPING_MIN_SAVING * batch * int(lengths.max()):
            return self._encode(input_features, attention_mask, None, None, src_lang_ids, None, None, kwargs)
        width = int(self.config.speech_output_lengths(torch.tensor(frames)))
        hidden_states = None  # allocated in the dtype the layers return (float32 under autocast)
        padding_mask = attention_mask.new_zeros(batch, width, dtype=torch.long)
        for rows in groups:
            length = int(lengths[rows].max())
            part = self._encode(
                input_features[rows, :length], attention_mask[rows, :length], None, None, src_lang_ids[rows], None,
                None, kwargs,
            )  # fmt: skip
            states = part.last_hidden_state
            if hidden_states is None:
                hidden_states = states.new_zeros(batch, width, self.config.d_model)
            hidden_states = hidden_states.index_put((rows,), F.pad(states, (0, 0, 0, width - states.shape[1])))
            padding_mask[rows, : states.shape[1]] = part.attention_mask
        return Mu2SlamEncoderOutput(last_hidden_state=hidden_states, attention_mask=padding_mask, speech_length=width)


class Mu2SlamDecoder(Mu2SlamPreTrainedModel):
    """Transformer decoder over the unified vocabulary; each position gets position, language and modality.

    Hidden states, self- and cross-attention weights are recorded by transformers' output capturing.
    """

    _can_record_outputs = {
        "hidden_states": Mu2SlamDecoderLayer,
        "attentions": OutputRecorder(Mu2SlamAttention, index=1, layer_name="self_attn"),
        "cross_attentions": OutputRecorder(Mu2SlamAttention, index=1, layer_name="cross_attn"),
    }

    def __init__(self, config: Mu2SlamConfig):
        super().__init__(config)
        self.embed_tokens = Mu2SlamScaledEmbedding.for_config(config)
        self.embed_languages = nn.Embedding(config.num_languages, config.d_model)
        self.embed_modalities = nn.Embedding(2, config.d_model)
        self.layers = nn.ModuleList(Mu2SlamDecoderLayer(config, i) for i in range(config.decoder_layers))
        self.layer_norm = nn.LayerNorm(config.d_model)
        self.dropout = config.decoder_dropout
        self.gradient_checkpointing = False
        self.post_init()

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor,
        encoder_hidden_states: torch.FloatTensor,
        tgt_lang_ids: torch.LongTensor,
        tgt_modality_ids: torch.LongTensor,
        attention_mask: torch.LongTensor | None = None,
        encoder_attention_mask: torch.LongTensor | None = None,
        past_key_values: EncoderDecoderCache | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        """input_ids (B, U), encoder_hidden_states (B, E, D), tgt_lang_ids / tgt_modality_ids (B,) -> (B, U, D).

        `use_cache` defaults to `config.use_cache`; kwargs as in `Mu2SlamEncoder.forward`.
        """
        check_forward_kwargs(self, kwargs)
        if use_cache and past_key_values is None:
            past_key_values = Mu2SlamEncoderDecoderCache(
                DynamicCache(config=self.config), DynamicCache(config=self.config)
            )
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0

        embeds = self.embed_tokens(input_ids)
        positions = sinusoidal_positions(
            torch.arange(past_length, past_length + input_ids.shape[1], device=input_ids.device), embeds.shape[-1]
        )
        extra = self.embed_languages(tgt_lang_ids) + self.embed_modalities(tgt_modality_ids)
        hidden_states = embeds + positions.to(embeds.dtype) + extra.unsqueeze(1)
        hidden_states = F.dropout(hidden_states, self.dropout, self.training)

        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=hidden_states,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            position_ids=torch.arange(past_length, past_length + input_ids.shape[1], device=input_ids.device)[None],
        )
        cross_mask = create_bidirectional_mask(
            config=self.config,
            inputs_embeds=hidden_states,
            attention_mask=encoder_attention_mask,
            encoder_hidden_states=encoder_hidden_states,
        )
        for layer in self.layers:
            hidden_states = layer(
                hidden_states,
                causal_mask,
                encoder_hidden_states,
                cross_mask,
                past_key_values=past_key_values,
                **kwargs,
            )
        return BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=self.layer_norm(hidden_states),
            past_key_values=past_key_values if use_cache else None,
        )


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    """Decoder inputs from labels (B, U): start token, then labels[:, :-1], with -100 replaced by pad."""
    shifted = labels.new_full(labels.shape, pad_token_id)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill(shifted == IGNORE_INDEX, pad_token_id)


class Mu2SlamModel(Mu2SlamPreTrainedModel):
    """The bare encoder-decoder: token embedding shared by encoder input, decoder input and (in the LM) output."""

    _tied_weights_keys = {
        "encoder.embed_tokens.weight": "shared.weight",
        "decoder.embed_tokens.weight": "shared.weight",
    }

    def __init__(self, config: Mu2SlamConfig):
        super().__init__(config)
        self.shared = Mu2SlamScaledEmbedding.for_config(config)
        self.encoder = Mu2SlamEncoder(config)
        self.decoder = Mu2SlamDecoder(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.shared

    def set_input_embeddings(self, value: nn.Embedding):
        self.shared = value
        self.encoder.embed_tokens = value
        self.decoder.embed_tokens = value

    def get_encoder(self, modality: str | None = None) -> Mu2SlamEncoder:
        return self.encoder

    @can_return_tuple
    def forward(
        self,
        input_features: torch.FloatTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        input_ids: torch.LongTensor | None = None,
        text_attention_mask: torch.LongTensor | None = None,
        src_lang_ids: torch.LongTensor | None = None,
        text_lang_ids: torch.LongTensor | None = None,
        speech_mlm_mask: torch.BoolTensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.LongTensor | None = None,
        tgt_lang_ids: torch.LongTensor | None = None,
        tgt_modality_ids: torch.LongTensor | None = None,
        encoder_outputs: Mu2SlamEncoderOutput | None = None,
        past_key_values: EncoderDecoderCache | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> Mu2SlamSeq2SeqOutput:
        """Encoder arguments as in `Mu2SlamEncoder.forward`; decoder_input_ids (B, U); tgt ids (B,).

        `tgt_lang_ids` defaults to `src_lang_ids` (recognition), `tgt_modality_ids` to text. kwargs
        (`output_hidden_states`, `output_attentions`, ...) go to the encoder and the decoder; `return_dict=False`
        returns the output's `to_tuple()`.
        """
        check_forward_kwargs(self, kwargs)
        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                input_features=input_features,
                attention_mask=attention_mask,
                input_ids=input_ids,
                text_attention_mask=text_attention_mask,
                src_lang_ids=src_lang_ids,
                text_lang_ids=text_lang_ids,
                speech_mlm_mask=speech_mlm_mask,
                return_dict=True,
                **kwargs,
            )
        elif not isinstance(encoder_outputs, Mu2SlamEncoderOutput):
            raise TypeError(
                f"`encoder_outputs` must be the encoder's Mu2SlamEncoderOutput (it carries the attention mask and "
                f"the speech length), got {type(encoder_outputs).__name__}: run the encoder with return_dict=True."
            )
        if decoder_input_ids is None:
            raise ValueError("`decoder_input_ids` (or `labels` for the LM model) are required to run the decoder.")
        batch, device = decoder_input_ids.shape[0], decoder_input_ids.device
        if tgt_lang_ids is None:
            tgt_lang_ids = src_lang_ids
        tgt_lang_ids = resolve_language_ids(self.config, tgt_lang_ids, batch, device, "tgt_lang_ids")
        incremental = past_key_values is not None and past_key_values.get_seq_length() > 0
        if not incremental:  # decoding steps feed back ids this model produced: checked once, at the first
            check_ranges(
                RangeCheck("decoder_input_ids", decoder_input_ids, self.config.vocab_size),
                language_check(self.config, tgt_lang_ids, "tgt_lang_ids"),
            )
        if tgt_modality_ids is None:
            tgt_modality_ids = torch.full((batch,), TEXT_MODALITY, dtype=torch.long, device=device)
        decoder_outputs = self.decoder(
            input_ids=decoder_input_ids,
            encoder_hidden_states=encoder_outputs.last_hidden_state,
            tgt_lang_ids=tgt_lang_ids,
            tgt_modality_ids=torch.as_tensor(tgt_modality_ids, device=device).long().reshape(-1).expand(batch),
            attention_mask=decoder_attention_mask,
            encoder_attention_mask=encoder_outputs.attention_mask,
            past_key_values=past_key_values,
            use_cache=use_cache,
            return_dict=True,
            **kwargs,
        )
        return Mu2SlamSeq2SeqOutput(
            last_hidden_state=decoder_outputs.last_hidden_state,
            past_key_values=decoder_outputs.past_key_values,
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
            encoder_attention_mask=encoder_outputs.attention_mask,
            encoder_speech_length=encoder_outputs.speech_length,
        )


def masked_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, example_weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token cross-entropy over labels != -100; logits (B, N, V), labels (B, N), weights (B,).

    Returns the weighted mean over all counted tokens (the loss), and the unweighted per-row sums (B,) and
    per-row token counts (B,) (what training logs and evaluation reports as NLL).
    """
    losses = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
    counted = (labels != IGNORE_INDEX).float()
    row_sums = losses.detach().sum(-1)
    if example_weights is not None:
        losses = losses * example_weights.float().unsqueeze(-1)
    return losses.sum() / counted.sum().clamp(min=1.0), row_sums, counted.sum(-1)


class Mu2SlamForConditionalGeneration(Mu2SlamGenerationMixin, Mu2SlamPreTrainedModel):
    """Mu2SLAM with the decoder LM head, the encoder MLM head, the encoder CTC head and, when the config asks for it,
    a spoken-language-identification head.

    One forward serves every objective of the paper: decoder loss from `labels`, encoder MLM loss from
    `mlm_labels` and CTC from `ctc_labels`, summed with the config's loss weights; `language_labels` add the
    language-identification loss.
    """

    _tied_weights_keys = {
        "lm_head.weight": "model.shared.weight",
        "mlm_head.decoder.weight": "model.shared.weight",
    }
    accepts_loss_kwargs = False

    def __init__(self, config: Mu2SlamConfig):
        super().__init__(config)
        self.model = Mu2SlamModel(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.mlm_head = Mu2SlamMLMHead(config)
        self.ctc_head = Mu2SlamCTCHead(config)
        # Character n-gram LM fused into CTC beam search (`set_asr_language_model`); not weights: saved as its own file.
        self.asr_language_model: CharNgramLanguageModel | None = None
        self.language_id_head = Mu2SlamLanguageIdHead(config) if config.language_id_head else None
        self.post_init()
        # The ASR pipeline's own generation defaults (num_beams=5, max_new_tokens=256, Whisper's) apply to any model
        # whose generation config leaves them unset: greedy and the model's target length are the right defaults.
        self.generation_config.max_new_tokens = config.max_target_positions
        self.generation_config.num_beams = 1

    def get_encoder(self, modality: str | None = None) -> Mu2SlamEncoder:
        return self.model.encoder

    def get_decoder(self) -> Mu2SlamDecoder:
        return self.model.decoder

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear):
        self.lm_head = value

    @can_return_tuple
    def forward(
        self,
        input_features: torch.FloatTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        input_ids: torch.LongTensor | None = None,
        text_attention_mask: torch.LongTensor | None = None,
        src_lang_ids: torch.LongTensor | None = None,
        text_lang_ids: torch.LongTensor | None = None,
        speech_mlm_mask: torch.BoolTensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.LongTensor | None = None,
        tgt_lang_ids: torch.LongTensor | None = None,
        tgt_modality_ids: torch.LongTensor | None = None,
        encoder_outputs: Mu2SlamEncoderOutput | None = None,
        past_key_values: EncoderDecoderCache | None = None,
        labels: torch.LongTensor | None = None,
        mlm_labels: torch.LongTensor | None = None,
        ctc_labels: torch.LongTensor | None = None,
        example_weights: torch.FloatTensor | None = None,
        language_labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> Mu2SlamSeq2SeqLMOutput:
        r"""
        Args (besides the encoder's, see `Mu2SlamEncoder.forward`):
            labels (`(B, U)`): decoder targets (text ids or speech-code ids), -100 where not counted.
                `decoder_input_ids` default to the labels shifted right after the start token.
            mlm_labels (`(B, E)`): encoder MLM targets at masked positions of [speech; text], -100 elsewhere.
            ctc_labels (`(B, L_ctc)`): transcript text ids for CTC on the speech positions, -100 padded;
                a row of only -100 does not count (mixed batches).
            example_weights (`(B,)`): per-example weight of the decoder and MLM losses (objective weights).
            language_labels (`(B,)`): language ids of the speech for the language-identification head (-100: not
                counted); the head reads a second encoder pass of `input_features` without a language embedding.
                With `language_labels` and no decoder inputs, the forward is language identification alone.
            tgt_lang_ids (`(B,)`) / tgt_modality_ids (`(B,)`): language and modality of the decoder output.
            kwargs: `output_hidden_states`, `output_attentions` (eager attention), `return_dict` and the other
                `TransformersKwargs` (`num_items_in_batch` is accepted and unused: `accepts_loss_kwargs = False`);
                any other key is a TypeError.

        Returns:
            `Mu2SlamSeq2SeqLMOutput`, or its `to_tuple()` (the fields that are not None, in order) with
            `return_dict=False` (default `config.return_dict`).
        """
        check_forward_kwargs(self, kwargs)
        self._check_labels(labels, mlm_labels, ctc_labels, language_labels)
        if language_labels is not None and labels is None and decoder_input_ids is None and encoder_outputs is None:
            return self._language_id_forward(input_features, attention_mask, language_labels, mlm_labels, ctc_labels)
        decoder_input_ids = self._decoder_inputs(labels, decoder_input_ids)
        use_cache = False if labels is not None else use_cache
        # InterCTC reads an intermediate encoder layer, recorded with the hidden states (returned only if asked).
        keep_states = kwargs.get("output_hidden_states", self.config.output_hidden_states)
        intermediate = self.config.intermediate_ctc_layer if ctc_labels is not None and encoder_outputs is None else 0
        if intermediate:
            kwargs["output_hidden_states"] = True
        outputs = self.model(
            input_features=input_features, attention_mask=attention_mask, input_ids=input_ids,
            text_attention_mask=text_attention_mask, src_lang_ids=src_lang_ids, text_lang_ids=text_lang_ids,
            speech_mlm_mask=speech_mlm_mask, decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask, tgt_lang_ids=tgt_lang_ids, tgt_modality_ids=tgt_modality_ids,
            encoder_outputs=encoder_outputs, past_key_values=past_key_values, use_cache=use_cache, return_dict=True,
            **kwargs,
        )  # fmt: skip
        logits = self.lm_head(outputs.last_hidden_state)
        decoder_loss, mlm_loss, row_losses = self._token_losses(logits, outputs, labels, mlm_labels, example_weights)
        ctc_loss = None if ctc_labels is None else self._speech_ctc_loss(outputs, ctc_labels, intermediate)
        if intermediate and not keep_states:
            outputs.encoder_hidden_states = outputs.decoder_hidden_states = None
        language_id_loss, language_logits = self._language_id_loss(input_features, attention_mask, language_labels)
        return Mu2SlamSeq2SeqLMOutput(
            loss=self._weighted_loss(decoder_loss, mlm_loss, ctc_loss, language_id_loss),
            logits=logits, decoder_loss=decoder_loss, mlm_loss=mlm_loss, ctc_loss=ctc_loss,
            row_losses=row_losses,
            past_key_values=outputs.past_key_values, decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions, cross_attentions=outputs.cross_attentions,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states, encoder_attentions=outputs.encoder_attentions,
            encoder_attention_mask=outputs.encoder_attention_mask, language_id_loss=language_id_loss,
            language_logits=language_logits,
        )  # fmt: skip

    def _token_losses(
        self,
        logits: torch.Tensor,
        outputs: Mu2SlamSeq2SeqOutput,
        labels: torch.Tensor | None,
        mlm_labels: torch.Tensor | None,
        example_weights: torch.Tensor | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """(decoder loss, encoder MLM loss, `(B, 4)` per-row [decoder NLL sum, decoder tokens, MLM NLL sum, MLM
        tokens]); each None without its labels (the rows: without both)."""
        if labels is None and mlm_labels is None:
            return None, None, None
        row_losses = torch.zeros(logits.shape[0], 4, device=logits.device)
        decoder_loss = mlm_loss = None
        if labels is not None:
            decoder_loss, row_losses[:, 0], row_losses[:, 1] = masked_cross_entropy(logits, labels, example_weights)
        if mlm_labels is not None:
            mlm_loss, row_losses[:, 2], row_losses[:, 3] = self._mlm_loss(
                outputs.encoder_last_hidden_state, mlm_labels, example_weights
            )
        return decoder_loss, mlm_loss, row_losses

    def _check_labels(
        self,
        labels: torch.Tensor | None,
        mlm_labels: torch.Tensor | None,
        ctc_labels: torch.Tensor | None,
        language_labels: torch.Tensor | None,
    ) -> None:
        """Every label id in its vocabulary (or -100), checked together (one host sync)."""
        check_ranges(
            RangeCheck("labels", labels, self.config.vocab_size, allow_ignore=True),
            RangeCheck("mlm_labels", mlm_labels, self.config.vocab_size, allow_ignore=True),
            RangeCheck("ctc_labels", ctc_labels, self.config.text_vocab_size, allow_ignore=True),
            RangeCheck("language_labels", language_labels, self.config.num_languages, allow_ignore=True),
        )

    def _decoder_inputs(self, labels: torch.Tensor | None, decoder_input_ids: torch.Tensor | None) -> torch.Tensor:
        """`decoder_input_ids`, by default the labels shifted right after the start token; in training with
        `config.decoder_noise_ratio`, some of their text tokens replaced by near neighbours."""
        if labels is not None and decoder_input_ids is None:
            decoder_input_ids = shift_tokens_right(
                labels, self.config.pad_token_id, self.config.decoder_start_token_id
            )
        if self.training and self.config.decoder_noise_ratio > 0 and decoder_input_ids is not None:
            decoder_input_ids = add_decoder_noise(
                decoder_input_ids,
                self.model.shared.weight,
                self.config.decoder_noise_ratio,
                self.config.text_vocab_size,
            )
        return decoder_input_ids

    def _speech_ctc_loss(
        self, outputs: Mu2SlamSeq2SeqOutput, ctc_labels: torch.Tensor, intermediate: int
    ) -> torch.Tensor:
        """CTC loss on the speech positions of the encoder output, mixed with the `intermediate` layer's (InterCTC)
        at `config.intermediate_ctc_weight` when that layer is given (0: none)."""
        encoder_states, encoder_mask = outputs.encoder_last_hidden_state, outputs.encoder_attention_mask
        speech_length = outputs.encoder_speech_length or 0
        if speech_length == 0:
            raise ValueError("`ctc_labels` were given without speech input: CTC runs on the speech positions.")
        speech_mask = encoder_mask[:, :speech_length]
        ctc_loss = self._ctc_loss(encoder_states[:, :speech_length], speech_mask, ctc_labels)
        if intermediate:
            middle = Mu2SlamTimeReduction.upsample(
                outputs.encoder_hidden_states[intermediate], speech_length, encoder_states.shape[1]
            )
            middle = self.model.encoder.layer_norm(middle[:, :speech_length])
            weight = self.config.intermediate_ctc_weight
            ctc_loss = (1 - weight) * ctc_loss + weight * self._ctc_loss(middle, speech_mask, ctc_labels)
        return ctc_loss

    def _weighted_loss(self, decoder_loss, mlm_loss, ctc_loss, language_id_loss) -> torch.Tensor | None:
        """The sum of the losses present, each times its weight in the config (None when none is present)."""
        weighted = [
            (decoder_loss, self.config.decoder_loss_weight),
            (mlm_loss, self.config.mlm_loss_weight),
            (ctc_loss, self.config.ctc_loss_weight),
            (language_id_loss, self.config.language_id_loss_weight),
        ]
        present = [part * weight for part, weight in weighted if part is not None]
        return torch.stack(present).sum() if present else None

    def _language_id_forward(
        self,
        input_features: torch.Tensor,
        attention_mask: torch.Tensor | None,
        language_labels: torch.Tensor,
        mlm_labels: torch.Tensor | None = None,
        ctc_labels: torch.Tensor | None = None,
    ) -> Mu2SlamSeq2SeqLMOutput:
        """Language identification alone (no decoder labels): one encoder pass without a language embedding."""
        if mlm_labels is not None or ctc_labels is not None:
            raise ValueError("`mlm_labels` and `ctc_labels` need decoder inputs (`labels`) beside `language_labels`.")
        language_id_loss, language_logits = self._language_id_loss(input_features, attention_mask, language_labels)
        return Mu2SlamSeq2SeqLMOutput(
            loss=language_id_loss * self.config.language_id_loss_weight,
            language_id_loss=language_id_loss,
            language_logits=language_logits,
        )

    def _language_id_loss(
        self, input_features: torch.Tensor, attention_mask: torch.Tensor | None, language_labels: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(unweighted cross-entropy, (B, num_languages) logits) of the language-identification head; (None, None)
        without `language_labels`."""
        if language_labels is None:
            return None, None
        logits = self.language_logits(input_features, attention_mask)
        return F.cross_entropy(logits.float(), language_labels, ignore_index=IGNORE_INDEX), logits

    def _mlm_loss(
        self, encoder_states: torch.Tensor, mlm_labels: torch.Tensor, example_weights: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encoder MLM cross-entropy, computing logits only at the counted positions: (weighted mean, unweighted
        per-row sums (B,), per-row counts (B,))."""
        if mlm_labels.shape != encoder_states.shape[:2]:
            raise ValueError(
                f"`mlm_labels` must cover the encoder positions {tuple(encoder_states.shape[:2])} "
                f"([speech; text]), got {tuple(mlm_labels.shape)}."
            )
        counted = mlm_labels != IGNORE_INDEX
        logits = self.mlm_head(encoder_states[counted]).float()
        losses = F.cross_entropy(logits, mlm_labels[counted], reduction="none")
        row_sums = torch.zeros(mlm_labels.shape[0], device=losses.device).index_add(
            0, counted.nonzero()[:, 0], losses.detach()
        )
        if example_weights is not None:
            losses = losses * example_weights.float().unsqueeze(-1).expand_as(mlm_labels)[counted]
        return losses.sum() / counted.sum().clamp(min=1), row_sums, counted.sum(-1).float()

    def _ctc_loss(
        self, speech_states: torch.Tensor, speech_mask: torch.Tensor, ctc_labels: torch.Tensor
    ) -> torch.Tensor:
        """CTC over text tokens (blank = pad id) on the speech positions, each row's loss divided by its target length
        and averaged over the rows that have targets (rows without any count for nothing).

        (B, S, D) states, (B, S) mask, (B, L) labels (IGNORE_INDEX where there is no token) -> scalar. Computed on
        every row with tensor masks, not by selecting rows: selecting needs the row count on the host, and each such
        read makes the host wait for the GPU.
        """
        present = ctc_labels != IGNORE_INDEX
        target_lengths = present.sum(-1)
        # The padded (B, L) target form reads each row's first target_lengths entries: tokens first, in order.
        order = (~present).long().argsort(dim=-1, stable=True)
        targets = ctc_labels.gather(-1, order).masked_fill(~present.gather(-1, order), self.config.pad_token_id)
        logits = self.ctc_head(speech_states, self.model.shared.weight)
        log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)
        with torch.backends.cudnn.flags(enabled=False):
            losses = F.ctc_loss(
                log_probs,
                targets,
                self.ctc_head.slot_lengths(speech_mask.sum(-1)),
                target_lengths,
                blank=self.config.pad_token_id,
                reduction="none",
                zero_infinity=True,
            )
        rows = (target_lengths > 0).to(losses.dtype)
        return (losses / target_lengths.clamp(min=1) * rows).sum() / rows.sum().clamp(min=1)

    def add_language_id_head(self) -> None:
        """Give the model a new (untrained) language-identification head over its languages (`config.language_id_head`);
        train it with the `language-id.yaml` recipe (or a recipe's `language_id_weight`)."""
        if self.language_id_head is not None:
            raise ValueError("add_language_id_head: the model already has a language-identification head.")
        self.config.language_id_head = True
        head = Mu2SlamLanguageIdHead(self.config)
        head.apply(self._init_weights)
        reference = self.lm_head.weight
        self.language_id_head = head.to(reference.device, reference.dtype).train(self.training)

    def language_logits(
        self, input_features: torch.FloatTensor, attention_mask: torch.LongTensor | None = None
    ) -> torch.FloatTensor:
        """(B, T, F) speech features (+ (B, T) mask) -> (B, num_languages) language scores of the head, which reads
        the encoder's states of the speech encoded without a language embedding."""
        if self.language_id_head is None:
            raise ValueError(
                "This model has no language-identification head. Train one from this model with the recipe "
                "configuration/recipes/language-id.yaml (or `model.add_language_id_head()` and `language_labels`), "
                "or pass the language of the speech (`src_lang=`)."
            )
        if input_features is None:
            raise ValueError("Language identification reads speech: pass `input_features`.")
        unknown = torch.full((input_features.shape[0],), UNKNOWN_LANGUAGE_ID, device=input_features.device)
        head = self.language_id_head
        all_layers = head.layer_weights is not None
        encoded = self.model.encoder(
            input_features=input_features, attention_mask=attention_mask, src_lang_ids=unknown,
            output_hidden_states=all_layers,
        )  # fmt: skip
        states = head.mix_layers(encoded.hidden_states) if all_layers else encoded.last_hidden_state
        return head(states, encoded.attention_mask)


class Mu2SlamEncoderOnlyModel(Mu2SlamPreTrainedModel):
    """The encoder with the shared embedding, laid out like `Mu2SlamModel` so seq2seq checkpoints load."""

    _tied_weights_keys = {"encoder.embed_tokens.weight": "shared.weight"}

    def __init__(self, config: Mu2SlamConfig):
        super().__init__(config)
        self.shared = Mu2SlamScaledEmbedding.for_config(config)
        self.encoder = Mu2SlamEncoder(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.shared

    def set_input_embeddings(self, value: nn.Embedding):
        self.shared = value
        self.encoder.embed_tokens = value

    def forward(self, **encoder_kwargs) -> Mu2SlamEncoderOutput:
        return self.encoder(**encoder_kwargs)


class Mu2SlamForSequenceClassification(Mu2SlamPreTrainedModel):
    """Masked mean of the encoder output -> dense + tanh -> classifier (XNLI-style premise/hypothesis tasks)."""

    main_input_name = "input_ids"

    def __init__(self, config: Mu2SlamConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = Mu2SlamEncoderOnlyModel(config)
        self.pooler = nn.Linear(config.d_model, config.d_model)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.d_model, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        src_lang_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> SequenceClassifierOutput:
        """input_ids (B, L) or input_features (B, T, F); labels (B,) -> logits (B, num_labels).

        kwargs as in `Mu2SlamEncoder.forward`: the encoder's hidden states and attentions come back when asked for.
        """
        check_forward_kwargs(self, kwargs)
        encoder_outputs = self.model(
            input_features=input_features,
            input_ids=input_ids,
            attention_mask=attention_mask,
            src_lang_ids=src_lang_ids,
            return_dict=True,
            **kwargs,
        )
        pooled = masked_mean(encoder_outputs.last_hidden_state, encoder_outputs.attention_mask)
        logits = self.classifier(self.dropout(torch.tanh(self.pooler(self.dropout(pooled)))))
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1).float(), labels.float())
            else:
                loss = F.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=encoder_outputs.hidden_states,
            attentions=encoder_outputs.attentions,
        )


GROUPING_MIN_SAVING = 0.7  # group speech rows by length only when that leaves at most 70% of the padded frames


def length_groups(lengths: torch.Tensor, max_padding: float = 0.25) -> list[torch.Tensor]:
    """Row indices of (B,) lengths cut into groups, longest first, each padded by at most ``max_padding`` of its real
    length (a new group starts when the next row is shorter than (1 - max_padding) x the group's longest)."""
    order = lengths.argsort(descending=True)
    values = lengths[order].tolist()
    groups, start = [], 0
    for index in range(1, len(values) + 1):
        if index == len(values) or values[index] < (1.0 - max_padding) * values[start]:
            groups.append(order[start:index])
            start = index
    return groups


if __package__ != "mu2slam_hf":
    # Loaded as a saved folder's remote code (`trust_remote_code=True`), where `import mu2slam_hf`, which registers
    # the ASR pipeline class, never runs: without it the pipeline would run the model as a CTC model.
    register_asr_pipeline()

Mu2SlamModel.register_for_auto_class("AutoModel")
Mu2SlamForConditionalGeneration.register_for_auto_class("AutoModelForSpeechSeq2Seq")
Mu2SlamForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")

__all__ = [
    "Mu2SlamPreTrainedModel",
    "Mu2SlamEncoder",
    "Mu2SlamDecoder",
    "Mu2SlamModel",
    "Mu2SlamForConditionalGeneration",
    "Mu2SlamForSequenceClassification",
    "Mu2SlamEncoderOutput",
    "Mu2SlamSeq2SeqLMOutput",
]
