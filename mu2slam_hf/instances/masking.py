"""The masks of the pre-training objectives (paper 2.3 and 3.1) and the decoder sequences built from them.

A mask ``m`` is a bool tensor over one segment: True at the positions the encoder does not see (replaced
by [MASK]) and the objectives predict. Every function takes a ``torch.Generator`` and draws from it only,
so the same seed always gives the same masks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..vocabulary import BOS_ID, IGNORE_INDEX, MASK_ID, NUM_SPECIAL_TOKENS, UNK_ID, VocabularyLayout

SPEECH_MASK_RATIO = 0.5
SPEECH_MAX_SPAN = 10
TEXT_MASK_RATIO = 0.5
MT_MASK_RATIO = 0.25
MASK_TOKEN_PROB = 0.8
RANDOM_TOKEN_PROB = 0.1


def _round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


def _random_composition(total: int, minimum: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Split ``total`` into ``len(minimum)`` parts with ``part[j] >= minimum[j]``, uniformly over such splits.

    Stars and bars: the ``total - minimum.sum()`` free units and ``parts - 1`` bars take random slots.
    """
    parts, free = len(minimum), total - int(minimum.sum())
    slots = free + parts - 1
    bars = torch.randperm(slots, generator=generator)[: parts - 1].sort().values
    edges = torch.cat([torch.tensor([-1]), bars, torch.tensor([slots])])
    return minimum + edges.diff() - 1


def speech_span_mask(
    length: int,
    generator: torch.Generator,
    ratio: float = SPEECH_MASK_RATIO,
    max_span: int = SPEECH_MAX_SPAN,
) -> torch.BoolTensor:
    """(S,) mask of ``round(ratio * S)`` frames (at least one) in spans of at most ``max_span`` frames.

    The paper masks about 50% of the frames in spans of up to 10 (w2v-BERT). Here exactly:
    n = max(1, round_half_up(ratio * S)) masked frames (fewer only if ``max_span``-long runs separated by one
    visible frame cannot hold them), split into the fewest spans that can hold them, k = ceil(n / max_span),
    with lengths as equal as possible (they differ by at most one, in random order). The S - n visible
    frames are distributed uniformly at random over the k + 1 gaps, inner gaps holding at least one frame,
    so that spans never merge into a masked run longer than ``max_span``.
    """
    if length <= 0:
        return torch.zeros(0, dtype=torch.bool)
    num_masked = min(length, max(1, _round_half_up(ratio * length)))
    while length - num_masked < math.ceil(num_masked / max_span) - 1:
        num_masked -= 1
    num_spans = math.ceil(num_masked / max_span)
    base, longer = divmod(num_masked, num_spans)
    span_lengths = torch.tensor([base + 1] * longer + [base] * (num_spans - longer))
    span_lengths = span_lengths[torch.randperm(num_spans, generator=generator)]
    minimum_gaps = torch.tensor([0] + [1] * (num_spans - 1) + [0])
    gaps = _random_composition(length - num_masked, minimum_gaps, generator)

    mask = torch.zeros(length, dtype=torch.bool)
    position = 0
    for gap, span in zip(gaps[:-1].tolist(), span_lengths.tolist(), strict=True):
        position += gap
        mask[position : position + span] = True
        position += span
    return mask


def maskable_text_positions(input_ids: torch.Tensor) -> torch.BoolTensor:
    """(L,) True at the tokens that belong to words: text tokens and <unk>, not pad/bos/eos/[MASK]."""
    return (input_ids >= NUM_SPECIAL_TOKENS) | (input_ids == UNK_ID)


def word_span_mask(
    input_ids: torch.Tensor, word_starts: torch.Tensor, generator: torch.Generator, ratio: float = TEXT_MASK_RATIO
) -> torch.BoolTensor:
    """(L,) mask of one contiguous span of whole words: k = round_half_up(ratio * W) of the W words (1 <= k <= W).

    A word is a token flagged in ``word_starts`` plus the tokens up to the next flagged one; special tokens
    (eos) belong to no word and are never masked. The span's first word is uniform over the W - k + 1 choices.
    """
    maskable = maskable_text_positions(input_ids)
    starts = word_starts.bool() & maskable
    if bool(maskable.any()):
        starts[int(maskable.nonzero()[0])] = True  # a sequence always starts a word
    word_index = starts.long().cumsum(0) - 1
    num_words = int(starts.sum())
    if num_words == 0:
        return torch.zeros_like(maskable)
    num_masked = min(num_words, max(1, _round_half_up(ratio * num_words)))
    first = int(torch.randint(0, num_words - num_masked + 1, (1,), generator=generator))
    return maskable & (word_index >= first) & (word_index < first + num_masked)


def corrupt_text(
    input_ids: torch.Tensor, mask: torch.Tensor, vocabulary: VocabularyLayout, generator: torch.Generator
) -> torch.LongTensor:
    """(L,) encoder input x^m (BERT): each masked token becomes [MASK] with probability 0.8, a random text
    token (uniform over the text tokens proper, never a special or a speech code) with 0.1, itself with 0.1."""
    draw = torch.rand(input_ids.shape, generator=generator)
    text_ids = vocabulary.text_token_ids()
    random_tokens = torch.randint(text_ids.start, text_ids.stop, input_ids.shape, generator=generator)
    corrupted = input_ids.clone()
    to_random = mask & (draw >= MASK_TOKEN_PROB) & (draw < MASK_TOKEN_PROB + RANDOM_TOKEN_PROB)
    corrupted[to_random] = random_tokens[to_random]
    corrupted[mask & (draw < MASK_TOKEN_PROB)] = MASK_ID
    return corrupted


def masked_targets(target_ids: torch.Tensor, mask: torch.Tensor) -> torch.LongTensor:
    """(N,) ``target_ids`` where ``mask``, -100 elsewhere: the MLM labels and the denoising decoder labels."""
    return torch.where(mask, target_ids, torch.full_like(target_ids, IGNORE_INDEX))


def denoising_decoder_sequences(
    target_ids: torch.Tensor, mask: torch.Tensor, decoder_start_token_id: int = BOS_ID
) -> tuple[torch.LongTensor, torch.LongTensor]:
    """Teacher forcing on x^{not m} (paper eq. 2): (decoder_input_ids (N,), labels (N,)).

    x^{not m} is ``target_ids`` with the positions NOT in ``mask`` replaced by [MASK]. The decoder reads it
    shifted right behind the start token, so position i sees x^{not m}_{<i}, and predicts x_i only where
    ``mask`` is set (labels -100 elsewhere).
    """
    complement = torch.where(mask, target_ids, torch.full_like(target_ids, MASK_ID))
    decoder_input_ids = torch.cat([complement.new_tensor([decoder_start_token_id]), complement[:-1]])
    return decoder_input_ids, masked_targets(target_ids, mask)


def full_decoder_sequences(
    target_ids: torch.Tensor, decoder_start_token_id: int = BOS_ID
) -> tuple[torch.LongTensor, torch.LongTensor]:
    """Plain teacher forcing on all of ``target_ids`` (N,): (start + target[:-1], target)."""
    decoder_input_ids = torch.cat([target_ids.new_tensor([decoder_start_token_id]), target_ids[:-1]])
    return decoder_input_ids, target_ids.clone()


def word_starts_from_offsets(text: str, offsets: Sequence[tuple[int, int]]) -> torch.BoolTensor:
    """(L,) True at the tokens that start a word, from a fast tokenizer's ``offset_mapping`` of ``text``.

    A token starts a word if it is the first token with a non-empty span, or the character before its
    start is whitespace not covered by the previous token, or its own span starts with whitespace (a
    ``▁``-token that absorbed the space). Tokens with empty spans (specials like eos) start nothing.
    The two refinements of "the character before is whitespace" keep a word's ``▁`` piece in the word:
    the Unigram tokenizer maps a prepended ``▁`` and the first letter to the same character, and the char
    tokenizer's ``▁`` token covers the space itself.
    """
    starts = torch.zeros(len(offsets), dtype=torch.bool)
    previous_end = None
    for index, (start, end) in enumerate(offsets):
        if end <= start:
            continue
        gap = text[previous_end:start] if previous_end is not None and previous_end < start else ""
        starts[index] = (
            previous_end is None or any(char.isspace() for char in gap) or text[start : start + 1].isspace()
        )
        previous_end = max(end, previous_end or 0)
    return starts
