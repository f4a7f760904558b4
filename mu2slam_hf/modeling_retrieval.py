"""Mu2SLAM as a speech-text dual encoder (`Mu2SlamForRetrieval`): the shared encoder's pooled, projected states of
speech and of text, trained with an in-batch contrastive loss. Shapes as in `modeling_mu2slam.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Unpack

import torch
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init
from transformers.modeling_outputs import ModelOutput
from transformers.utils.generic import TransformersKwargs, can_return_tuple

from .configuration_mu2slam import Mu2SlamConfig, Mu2SlamRetrievalConfig
from .input_checks import check_forward_kwargs
from .modeling_mu2slam import (
    Mu2SlamEncoderOnlyModel,
    Mu2SlamEncoderOutput,
    Mu2SlamPreTrainedModel,
    masked_mean,
)
from .vocabulary import UNKNOWN_LANGUAGE_ID

# A retrieval folder (its own config type) answers AutoConfig and AutoModel only, as CLIP's folders do.
RETRIEVAL_AUTO_MAP = {
    "AutoConfig": "configuration_mu2slam.Mu2SlamRetrievalConfig",
    "AutoModel": "modeling_retrieval.Mu2SlamForRetrieval",
}


@dataclass
class Mu2SlamRetrievalOutput(ModelOutput):
    """
    Args:
        loss: `retrieval_loss` plus `config.retrieval_spread_out_weight` times `spread_out_loss` (with `return_loss`).
        retrieval_loss: the bidirectional in-batch contrastive loss (mean of speech->text and text->speech).
        spread_out_loss: the spread-out regulariser of the speech and the text embeddings (0 when its weight is 0).
        logits_per_speech (`(B, B)`): scaled cosine similarities, row i: query i (speech, or the source text of a
            translation pair) against every text of the batch.
        logits_per_text (`(B, B)`): its transpose.
        speech_embeds / text_embeds (`(B, retrieval_embedding_dim)`): L2-normalised embeddings of the queries and of
            the texts.
    """

    loss: torch.FloatTensor | None = None
    retrieval_loss: torch.FloatTensor | None = None
    spread_out_loss: torch.FloatTensor | None = None
    logits_per_speech: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    speech_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None


def multi_positive_contrastive_loss(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """In-batch softmax cross-entropy where a row may have several right answers (the same sentence twice in a
    batch, e.g. Czech and Dutch speech of one English line): -log of the probability mass on the positives.

    logits (B, C), positives (B, C) bool with at least one True per row -> mean over rows.
    """
    log_probs = logits.float().log_softmax(-1)
    return -torch.logsumexp(log_probs.masked_fill(~positives, float("-inf")), dim=-1).mean()


def spread_out_loss(embeddings: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Global orthogonal regularisation (Zhang et al., 2017) of L2-normalised (B, E) embeddings over their
    non-matching pairs (not `positives`, (B, B) bool): mean similarity pushed to 0 and its second moment to at
    most 1/E, as for points spread uniformly on the sphere."""
    similarity = embeddings.float() @ embeddings.float().T
    negatives = ~positives
    if not negatives.any():
        return similarity.new_zeros(())
    values = similarity[negatives]
    return values.mean() ** 2 + F.relu(values.pow(2).mean() - 1.0 / embeddings.shape[-1])


class Mu2SlamForRetrieval(Mu2SlamPreTrainedModel):
    """Speech-text dual encoder on the shared encoder (papers: Gomez et al. 2024; mSLAM): speech and text go through
    the same Conformer encoder separately; the mean of each one's states over its real positions, projected and
    L2-normalised, is its embedding. Trained with the bidirectional in-batch contrastive loss on (speech, text)
    pairs: a transcript (speech -> text retrieval) or a translation (cross-lingual).

    Loads from any Mu2SLAM checkpoint (pre-trained or fine-tuned seq2seq folders: the encoder and shared embedding are
    taken, the projection starts new). `encode_speech` / `encode_text` give the embeddings; their dot product is the
    cosine similarity.
    """

    config_class = Mu2SlamRetrievalConfig
    remote_code_auto_map = RETRIEVAL_AUTO_MAP

    def __init__(self, config: Mu2SlamConfig):
        if not isinstance(config, Mu2SlamRetrievalConfig):
            config = Mu2SlamRetrievalConfig.from_mu2slam_config(config)
        super().__init__(config)
        self.model = Mu2SlamEncoderOnlyModel(config)
        self.projection = nn.Linear(config.d_model, config.retrieval_embedding_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.retrieval_temperature)))
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        super()._init_weights(module)
        if module is self:
            init.constant_(self.logit_scale, math.log(1.0 / self.config.retrieval_temperature))

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.shared

    def _language_ids(self, lang: str | list[str] | torch.Tensor | None, batch: int, device) -> torch.Tensor:
        """(B,) language ids from codes or ids; without a language (or without `retrieval_language_prefix`),
        UNKNOWN_LANGUAGE_ID: the encoder then adds no language embedding."""
        if lang is None or not self.config.retrieval_language_prefix:
            return torch.full((batch,), UNKNOWN_LANGUAGE_ID, dtype=torch.long, device=device)
        if isinstance(lang, torch.Tensor):
            return lang.to(device).long().reshape(-1).expand(batch)
        codes = [lang] * batch if isinstance(lang, str) else list(lang)
        if len(codes) != batch:
            raise ValueError(f"{len(codes)} language codes for a batch of {batch}: pass one code or one per row.")
        return torch.tensor([self.config.language_id(code) for code in codes], dtype=torch.long, device=device)

    def _embed(self, encoder_outputs: Mu2SlamEncoderOutput) -> torch.Tensor:
        pooled = masked_mean(encoder_outputs.last_hidden_state, encoder_outputs.attention_mask)
        return F.normalize(self.projection(pooled), dim=-1)

    def encode_speech(
        self,
        input_features: torch.FloatTensor,
        attention_mask: torch.LongTensor | None = None,
        src_lang: str | list[str] | torch.Tensor | None = None,
    ) -> torch.FloatTensor:
        """(B, T, F) log-mel features (+ (B, T) mask; the processor's) -> (B, E) L2-normalised speech embeddings.
        `src_lang`: the spoken language (a code, one per row, or ids); None when it is not known.

        The encoder takes rows of similar length together when that drops at least 30% of the padding, so a batch
        that mixes short and long clips (a contrastive batch drawn from several tasks) costs about its real frames.
        """
        lang_ids = self._language_ids(src_lang, input_features.shape[0], input_features.device)
        encoded = self.model(
            input_features=input_features, attention_mask=attention_mask, src_lang_ids=lang_ids, return_dict=True
        )
        return self._embed(encoded)

    def encode_text(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.LongTensor | None = None,
        text_lang: str | list[str] | torch.Tensor | None = None,
    ) -> torch.FloatTensor:
        """(B, L) token ids (+ (B, L) mask; the processor's tokenizer) -> (B, E) L2-normalised text embeddings."""
        lang_ids = self._language_ids(text_lang, input_ids.shape[0], input_ids.device)
        encoded = self.model(
            input_ids=input_ids, attention_mask=attention_mask, src_lang_ids=lang_ids, return_dict=True
        )
        return self._embed(encoded)

    @can_return_tuple
    def forward(
        self,
        input_features: torch.FloatTensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.LongTensor | None = None,
        text_attention_mask: torch.LongTensor | None = None,
        src_lang_ids: torch.LongTensor | None = None,
        text_lang_ids: torch.LongTensor | None = None,
        return_loss: bool = True,
        source_input_ids: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> Mu2SlamRetrievalOutput:
        """B (query, text) pairs -> similarities of every query to every text, and the contrastive loss.

        The queries are speech, input_features (B, T, F) + attention_mask (B, T), or the source texts of translation
        pairs, source_input_ids (B, L') + attention_mask (B, L'): paper 001 adds translation pairs to the
        speech-text pairs, which carries cross-lingual matching over to speech. input_ids (B, L) +
        text_attention_mask (B, L): the texts; src_lang_ids / text_lang_ids (B,): languages of the queries and of
        the texts (or none, see `retrieval_language_prefix`). Rows whose texts are identical count as right answers
        for each other. `speech_embeds` and `logits_per_speech` hold the queries' whatever their modality.
        """
        check_forward_kwargs(self, kwargs)
        if (input_features is None) == (source_input_ids is None):
            raise ValueError(
                "Mu2SlamForRetrieval.forward takes one kind of query: speech (input_features) or source texts "
                "(source_input_ids), each with its attention_mask."
            )
        if input_ids is None:
            raise ValueError("Mu2SlamForRetrieval.forward needs the texts to match (input_ids).")
        if input_features is not None:
            queries = self.encode_speech(input_features, attention_mask, src_lang_ids)
        else:
            queries = self.encode_text(source_input_ids, attention_mask, src_lang_ids)
        text = self.encode_text(input_ids, text_attention_mask, text_lang_ids)
        scale = self.logit_scale.clamp(max=math.log(100.0)).exp()
        logits_per_speech = scale * queries @ text.T
        loss = contrastive = spread = None
        if return_loss:
            positives = same_rows(input_ids, text_attention_mask)
            query_logits, text_logits, answers = logits_per_speech, logits_per_speech.T, positives
            if self.training and _distributed_world_size() > 1:
                # Every process's rows are negatives too (CLIP's gathered loss): the loss sees the global batch.
                all_queries, all_text, answers = gathered_pairs(queries, text, input_ids, text_attention_mask)
                query_logits, text_logits = scale * queries @ all_text.T, scale * text @ all_queries.T
            contrastive = 0.5 * (
                multi_positive_contrastive_loss(query_logits, answers)
                + multi_positive_contrastive_loss(text_logits, answers)
            )
            spread = queries.new_zeros((), dtype=torch.float32)
            if self.config.retrieval_spread_out_weight:
                spread = spread_out_loss(queries, positives) + spread_out_loss(text, positives)
            loss = contrastive + self.config.retrieval_spread_out_weight * spread
        return Mu2SlamRetrievalOutput(
            loss=loss,
            retrieval_loss=contrastive,
            spread_out_loss=spread,
            logits_per_speech=logits_per_speech,
            logits_per_text=logits_per_speech.T,
            speech_embeds=queries,
            text_embeds=text,
        )


def same_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """(B, B) bool: whether rows i and j hold the same token sequence (padding ignored)."""
    ids = input_ids if attention_mask is None else input_ids.masked_fill(attention_mask == 0, -1)
    return (ids.unsqueeze(1) == ids.unsqueeze(0)).all(-1)


def _distributed_world_size() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def gathered_pairs(
    speech: torch.Tensor, text: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This process's (B, E) speech and text embeddings and (B, L) text rows -> every process's embeddings, (N, E)
    each in process order, and the (B, N) bool matrix of which of them hold this process's rows' texts.

    Processes may hold different B and L. The embeddings are gathered with autograd (`torch.distributed.nn`), so
    the gradient of each process's loss reaches the process whose rows it used.
    """
    import torch.distributed.nn.functional as distributed_autograd

    world = torch.distributed.get_world_size()
    shape = torch.tensor(input_ids.shape, device=input_ids.device)
    shapes = [torch.empty_like(shape) for _ in range(world)]
    torch.distributed.all_gather(shapes, shape)
    rows = [int(s[0]) for s in shapes]
    most_rows, longest = max(rows), max(int(s[1]) for s in shapes)

    def gather_rows(values: torch.Tensor) -> torch.Tensor:
        padded = F.pad(values, (0, 0, 0, most_rows - values.shape[0]))
        return torch.cat(
            [part[:count] for part, count in zip(distributed_autograd.all_gather(padded), rows, strict=True)]
        )

    ids = input_ids if attention_mask is None else input_ids.masked_fill(attention_mask == 0, -1)
    ids = F.pad(ids, (0, longest - ids.shape[1], 0, most_rows - ids.shape[0]), value=-1)
    all_ids = [torch.empty_like(ids) for _ in range(world)]
    torch.distributed.all_gather(all_ids, ids)
    all_ids = torch.cat([part[:count] for part, count in zip(all_ids, rows, strict=True)])
    positives = (ids[: input_ids.shape[0]].unsqueeze(1) == all_ids.unsqueeze(0)).all(-1)
    return gather_rows(speech), gather_rows(text), positives


Mu2SlamForRetrieval.register_for_auto_class("AutoModel")

__all__ = ["Mu2SlamForRetrieval", "Mu2SlamRetrievalOutput"]
