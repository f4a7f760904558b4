"""Decoding with the encoder's CTC head: greedy CTC, CTC prefix scores for joint CTC/attention search, alignment.

Joint decoding (Watanabe et al., 2017, "Hybrid CTC/attention architecture for end-to-end speech recognition")
scores a hypothesis h by ``(1 - w) log p_att(h | x) + w log p_ctc(h... | x)``, where the CTC part is the prefix
probability: the total probability of all CTC alignments whose label sequence starts with h (for a finished
hypothesis, equals h). The decoder's own search (greedy or beam, transformers' `generate`) adds one token at a time,
so `CTCPrefixLogitsProcessor` gives each candidate token c the increment ``log p_ctc(h + c...) - log p_ctc(h...)``;
summed over the steps these telescope to the prefix score of the whole hypothesis. CTC keeps the attention decoder
aligned with the audio: a hypothesis that repeats or drops words has a tiny CTC probability.

Alignment: `ctc_forced_align` finds the best CTC path of one utterance that collapses to a given transcript (Viterbi
over the lattice of blank-separated tokens), `ctc_token_spans` reads each token's frames off a path, `word_spans`
groups tokens into words, and `FrameClock` turns encoder frames into seconds: word timestamps.

Shapes: N hypotheses (batch x beams), T encoder frames, V text vocabulary of the CTC head (blank = <pad> = 0),
K candidate tokens scored per hypothesis and step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers.generation import LogitsProcessor

from .asr_decoding import DEFAULT_CTC_BEAMS
from .ngram_lm import END

NEG_INF = -1e30  # finite, so that (NEG_INF) + (NEG_INF) stays representable and logaddexp never yields NaN


def ctc_greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor, blank: int = 0) -> list[list[int]]:
    """Best path: the most likely token of every frame, repeats merged, blanks removed.

    Args:
        log_probs: `(B, T, V)` CTC log-probabilities (or logits: only the argmax is used).
        lengths: `(B,)` real frames of each row.
    Returns:
        B lists of token ids.
    """
    best = log_probs.argmax(-1).tolist()
    output = []
    for row, length in zip(best, lengths.tolist(), strict=True):
        tokens, previous = [], blank
        for token in row[: int(length)]:
            if token != previous and token != blank:
                tokens.append(token)
            previous = token
        output.append(tokens)
    return output


def pause_segments(
    log_probs: torch.Tensor,
    min_pause_frames: int,
    blank: int = 0,
    blank_probability: float = 0.9,
    max_frames: int | None = None,
) -> list[tuple[int, int]]:
    """Frame ranges `[start, end)` of one recording cut at its pauses, tiling its T frames.

    A pause is a run of at least `min_pause_frames` frames that the CTC head gives to blank with at least
    `blank_probability`; the cut lies in its middle. A long recording of several sentences (a file of many
    utterances) is then decoded sentence by sentence, as the model was trained. A range still longer than
    `max_frames` is cut again in the middle of its longest blank run (of those in its middle half, where there are
    any): between two words rather than inside one.

    log_probs `(T, V)`; returns `[(0, T)]` when there is no pause and no limit.
    """
    frames = log_probs.shape[0]
    runs = _blank_runs((log_probs[:, blank] >= math.log(blank_probability)).tolist())
    cuts = [
        (start + end) // 2 for start, end in runs if end - start >= min_pause_frames and 0 < start and end < frames
    ]
    bounds = [0, *cuts, frames]
    segments = list(zip(bounds, bounds[1:], strict=False))
    if max_frames is None:
        return segments
    return [piece for start, end in segments for piece in _split_long(runs, start, end, max_frames)]


def _blank_runs(quiet: list[bool]) -> list[tuple[int, int]]:
    """`[start, end)` of every run of True."""
    runs, start = [], None
    for frame, is_quiet in enumerate([*quiet, False]):
        if is_quiet and start is None:
            start = frame
        elif not is_quiet and start is not None:
            runs.append((start, frame))
            start = None
    return runs


def _split_long(runs: list[tuple[int, int]], start: int, end: int, max_frames: int) -> list[tuple[int, int]]:
    if end - start <= max_frames:
        return [(start, end)]
    inside = [(a, b) for a, b in runs if start < (a + b) // 2 < end]
    quarter = (end - start) // 4
    middle = [(a, b) for a, b in inside if start + quarter <= (a + b) // 2 <= end - quarter]
    candidates = middle or inside
    if candidates:
        a, b = max(candidates, key=lambda run: (run[1] - run[0], -abs(run[0] + run[1] - start - end)))
        cut = (a + b) // 2
    else:
        cut = (start + end) // 2
    return _split_long(runs, start, cut, max_frames) + _split_long(runs, cut, end, max_frames)


def mask_padded_frames(log_probs: torch.Tensor, lengths: torch.Tensor, blank: int = 0) -> torch.Tensor:
    """`(B, T, V)` log-probs where every frame past a row's length emits blank with probability 1.

    Then the CTC forward variables simply carry their value through the padding, and the last frame holds the
    total of the real frames for every row.
    """
    padded = (
        torch.arange(log_probs.shape[1], device=log_probs.device)[None, :] >= lengths.to(log_probs.device)[:, None]
    )
    masked = log_probs.masked_fill(padded.unsqueeze(-1), NEG_INF)
    masked[..., blank] = masked[..., blank].masked_fill(padded, 0.0)
    return masked


class CTCPrefixScorer:
    """CTC prefix probabilities of hypotheses extended by candidate tokens, for a batch of utterances.

    A prefix's state is its forward variables ``r`` of shape `(T, 2)`: log-probability of the prefix having been
    emitted by frame t and ending in a non-blank (column 0) or a blank (column 1).

    Args:
        log_probs: `(B, T, V)` CTC log-probabilities of the utterances (padding already masked).
        blank: the blank id.
    """

    def __init__(self, log_probs: torch.Tensor, blank: int = 0):
        # Kept as (B, V, T): each step reads the whole time series of a few candidate tokens, contiguous this way.
        # Indexing (B, T, V) instead costs a strided read per frame and token (or a copy of the hypotheses' whole
        # rows), more than the rest of a step with a subword vocabulary.
        self.by_token = log_probs.float().transpose(1, 2).contiguous()
        self.blank = blank

    def initial_state(self, utterance: int) -> torch.Tensor:
        """`(T, 2)` state of the empty prefix: only blanks so far."""
        blanks = self.by_token[utterance, self.blank].cumsum(0)
        return torch.stack([torch.full_like(blanks, NEG_INF), blanks], dim=-1)

    def extend(
        self,
        utterances: torch.Tensor,
        states: torch.Tensor,
        last_tokens: torch.Tensor,
        empty: torch.Tensor,
        candidates: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefix scores and states of N hypotheses, each extended by each of its K candidate tokens.

        Args:
            utterances: `(N,)` utterance index of each hypothesis.
            states: `(N, T, 2)` the hypotheses' states.
            last_tokens: `(N,)` the hypotheses' last token (any value where `empty`).
            empty: `(N,)` bool, the hypothesis has no token yet.
            candidates: `(N, K)` token ids (not blank).
        Returns:
            `(N, K)` log prefix probabilities of h + c, and their states `(N, K, T, 2)`.
        """
        x_c = self.by_token[utterances[:, None], candidates].transpose(1, 2)  # (N, T, K)
        x_blank = self.by_token[utterances, self.blank].unsqueeze(-1)  # (N, T, 1)
        total = torch.logaddexp(states[..., 0], states[..., 1]).unsqueeze(-1)  # (N, T, 1)
        # A repeated token needs a blank in between: only the paths of h ending in blank may continue with it.
        repeat = (candidates == last_tokens.unsqueeze(-1)).unsqueeze(1)  # (N, 1, K)
        phi = torch.where(repeat, states[..., 1].unsqueeze(-1), total)  # (N, T, K)
        start = torch.where(empty.unsqueeze(-1), x_c[:, 0], torch.full_like(x_c[:, 0], NEG_INF))
        r_n, r_b = _forward_variables(start, phi, x_c, x_blank)
        # psi = P(h + c is a prefix): c first emitted at frame t, after h was complete at t - 1.
        emitted = torch.cat([start.unsqueeze(1), phi[:, :-1] + x_c[:, 1:]], dim=1)  # (N, T, K)
        scores = torch.logsumexp(emitted, dim=1)
        new_states = torch.stack([r_n, r_b], dim=-1).permute(0, 2, 1, 3)  # (N, K, T, 2)
        return scores, new_states

    @staticmethod
    def final_score(states: torch.Tensor) -> torch.Tensor:
        """`(N,)` log-probability that the hypotheses are the whole output (their end-of-sentence score)."""
        return torch.logaddexp(states[:, -1, 0], states[:, -1, 1])


# Per-frame log-probabilities are floored here (padded frames hold NEG_INF) so that their running sums stay exact in
# float64; a path through a floored frame still has a log-probability of at most FRAME_FLOOR, zero once exponentiated.
FRAME_FLOOR = -1e10


def _forward_variables(
    start: torch.Tensor, phi: torch.Tensor, x_c: torch.Tensor, x_blank: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward variables of h + c at every frame, `(N, T, K)` each, without a loop over frames.

    The recurrences ``r_n[t] = logaddexp(r_n[t-1], phi[t-1]) + x_c[t]`` (``r_n[0] = start``) and
    ``r_b[t] = logaddexp(r_n[t-1], r_b[t-1]) + x_blank[t]`` (``r_b[0] = -inf``) are linear in probability space,
    so with the running sums ``A[t] = x_c[1] + ... + x_c[t]`` they have the closed forms
    ``r_n[t] = A[t] + logaddexp(start, logcumsumexp_{s<t}(phi[s] - A[s]))`` and likewise for ``r_b``: one
    ``logcumsumexp`` over frames per variable instead of T sequential steps per decoding step.
    """
    dtype = x_c.dtype
    start, phi = start.double(), phi.double()
    x_c, x_blank = x_c.double().clamp(min=FRAME_FLOOR), x_blank.double().clamp(min=FRAME_FLOOR)
    a = torch.cat([torch.zeros_like(x_c[:, :1]), x_c[:, 1:]], dim=1).cumsum(1)  # (N, T, K)
    before = torch.logcumsumexp(phi[:, :-1] - a[:, :-1], dim=1)  # (N, T - 1, K): the paths entering c by frame t
    r_n = a + torch.cat([start.unsqueeze(1), torch.logaddexp(start.unsqueeze(1), before)], dim=1)
    b = torch.cat([torch.zeros_like(x_blank[:, :1]), x_blank[:, 1:]], dim=1).cumsum(1)  # (N, T, 1)
    r_b = b[:, 1:] + torch.logcumsumexp(r_n[:, :-1] - b[:, :-1], dim=1)
    r_b = torch.cat([torch.full_like(r_n[:, :1], NEG_INF), r_b], dim=1)
    return _impossible_as_neg_inf(r_n).to(dtype), _impossible_as_neg_inf(r_b).to(dtype)


def _impossible_as_neg_inf(values: torch.Tensor) -> torch.Tensor:
    """NEG_INF wherever a path had to pass a floored frame (no real path comes near FRAME_FLOOR / 2)."""
    return values.masked_fill(values <= FRAME_FLOOR / 2, NEG_INF)


class CTCPrefixLogitsProcessor(LogitsProcessor):
    """Joint CTC/attention decoding inside transformers' greedy or beam search.

    Each step, the ``pre_beam`` best tokens of the attention decoder (per hypothesis, ESPnet's pre-beam) get the score
    ``(1 - ctc_weight) * log p_att(c | h) + ctc_weight * (log p_ctc(h + c...) - log p_ctc(h...))``; every other
    token is excluded, as in ESPnet's pre-beam. End of sentence gets the CTC probability of h being the whole output.

    Hypotheses are identified by their tokens, so the processor follows beam reordering without help from the
    search: the states of step k are stored under (utterance, tokens) and looked up at step k + 1.

    Args:
        ctc_log_probs: `(B, T, V)` CTC log-probabilities over the text tokens (blank = <pad> = 0).
        lengths: `(B,)` real encoder frames.
        ctc_weight: w in [0, 1].
        num_beams: hypotheses per utterance (rows of `input_ids` are utterance-major, as in `generate`).
        eos_token_id: end of sentence (an id outside the CTC vocabulary, scored with the full probability).
        prompt_length: decoder tokens before the first hypothesis token (the decoder start token).
        pre_beam: candidate tokens scored per hypothesis and step; by default ``max(10, 1.5 * num_beams)``, and
            every token when ``ctc_weight`` is 1 (then the attention scores play no part, so they must not pick
            the candidates either: a pure CTC prefix search).
        language_models: shallow fusion (ESPnet's joint CTC/attention decoding with an LM): one character model per
            utterance (`ngram_lm.CharNgramModel`, its ``text_log_prob`` / ``log_prob``) adds
            ``lm_weight * log p_lm(c | h) + length_bonus`` to each candidate token c, and ``lm_weight *
            log p_lm(end | h)`` to end of sentence. Needs ``token_texts`` (the text each token writes).
    """

    def __init__(
        self,
        ctc_log_probs: torch.Tensor,
        lengths: torch.Tensor,
        ctc_weight: float,
        num_beams: int,
        eos_token_id: int,
        prompt_length: int = 1,
        pre_beam: int | None = None,
        blank: int = 0,
        language_models: Sequence[Any] | None = None,
        token_texts: Sequence[str | None] | None = None,
        lm_weight: float = 0.0,
        length_bonus: float = 0.0,
    ):
        if not 0.0 < ctc_weight <= 1.0:
            raise ValueError(f"ctc_weight must be in (0, 1] for joint decoding, got {ctc_weight}.")
        if language_models is not None and token_texts is None:
            raise ValueError("language_models need token_texts: the text each token id writes.")
        self.language_models = language_models if lm_weight or length_bonus else None
        self.token_texts, self.lm_weight, self.length_bonus = token_texts, lm_weight, length_bonus
        self.scorer = CTCPrefixScorer(mask_padded_frames(ctc_log_probs.float(), lengths, blank), blank)
        self.ctc_vocab = ctc_log_probs.shape[-1]
        self.weight = ctc_weight
        self.num_beams = num_beams
        self.eos = eos_token_id
        self.prompt_length = prompt_length
        if pre_beam is None:
            pre_beam = ctc_log_probs.shape[-1] if ctc_weight >= 1.0 else max(10, int(1.5 * num_beams))
        self.pre_beam = pre_beam
        self.states: dict[tuple[int, tuple[int, ...]], tuple[torch.Tensor, float]] = {}

    def _state(self, utterance: int, prefix: tuple[int, ...]) -> tuple[torch.Tensor, float]:
        if not prefix:
            return self.scorer.initial_state(utterance), 0.0
        return self.states[(utterance, prefix)]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        attention = torch.log_softmax(scores.float(), dim=-1)
        rows, device = input_ids.shape[0], scores.device
        prefixes = [tuple(row) for row in input_ids[:, self.prompt_length :].tolist()]
        # Greedy search keeps finished rows in the batch (padded after eos): nothing left to score there.
        finished = [self.eos in prefix for prefix in prefixes]
        utterances = [row // self.num_beams for row in range(rows)]
        looked_up = [
            self._state(u, () if done else p) for u, p, done in zip(utterances, prefixes, finished, strict=True)
        ]
        states = torch.stack([state for state, _ in looked_up])
        previous = torch.tensor([score for _, score in looked_up], device=device)

        # The pre-beam: the best attention tokens, and always end of sentence (so no row is left without a choice).
        without_eos = attention.clone()
        without_eos[:, self.eos] = float("-inf")
        k = min(self.pre_beam, attention.shape[-1] - 1)
        eos_column = torch.full((rows, 1), self.eos, device=device, dtype=torch.long)
        candidates = torch.cat([without_eos.topk(k, dim=-1).indices, eos_column], dim=-1)  # (N, K + 1)
        in_ctc = (candidates > self.scorer.blank) & (candidates < self.ctc_vocab)
        ctc_candidates = torch.where(in_ctc, candidates, torch.ones_like(candidates))  # placeholder id for others
        last = torch.tensor([p[-1] if p else -1 for p in prefixes], device=device)
        empty = torch.tensor([not p for p in prefixes], device=device)
        prefix_scores, new_states = self.scorer.extend(
            torch.tensor(utterances, device=device), states, last, empty, ctc_candidates
        )
        eos_scores = self.scorer.final_score(states).unsqueeze(-1).expand_as(prefix_scores)
        is_eos = candidates == self.eos
        prefix_scores = torch.where(is_eos, eos_scores, torch.where(in_ctc, prefix_scores, NEG_INF))

        joint = (1 - self.weight) * attention.gather(1, candidates) + self.weight * (prefix_scores - previous[:, None])
        if self.language_models is not None:
            joint = joint + self._language_model_scores(utterances, prefixes, candidates, in_ctc).to(device)
        impossible = (prefix_scores <= NEG_INF / 2) & ~is_eos
        output = torch.full_like(attention, float("-inf"))
        output.scatter_(1, candidates, joint.masked_fill(impossible, float("-inf")))
        done = torch.tensor(finished, device=device)
        output = torch.where(done.unsqueeze(-1), attention, output)

        self.states = {
            (utterance, prefix + (token,)): (new_states[row, j], float(prefix_scores[row, j]))
            for row, (utterance, prefix) in enumerate(zip(utterances, prefixes, strict=True))
            if not finished[row]
            for j, token in enumerate(candidates[row].tolist())
            if bool(in_ctc[row, j])
        }
        return output.to(scores.dtype)

    def _language_model_scores(
        self, utterances: list[int], prefixes: list[tuple[int, ...]], candidates: torch.Tensor, in_ctc: torch.Tensor
    ) -> torch.Tensor:
        """`(N, K + 1)` fused LM scores of the candidates: ``lm_weight * log p_lm + length_bonus`` for a token,
        ``lm_weight * log p_lm(end)`` for end of sentence, -inf for a token that writes no text (never emitted, as
        in `ctc_prefix_beam_search`), 0 for tokens outside the CTC vocabulary (CTC already rules them out)."""
        scores = torch.zeros(candidates.shape)
        for row, (utterance, prefix) in enumerate(zip(utterances, prefixes, strict=True)):
            model, text = self.language_models[utterance], self._text(prefix)
            for j, token in enumerate(candidates[row].tolist()):
                if token == self.eos:
                    scores[row, j] = self.lm_weight * model.log_prob(text, END)
                elif bool(in_ctc[row, j]) and self.token_texts[token] is None:
                    scores[row, j] = float("-inf")
                elif bool(in_ctc[row, j]):
                    piece = self.token_texts[token] if text else self.token_texts[token].lstrip(" ")
                    scores[row, j] = self.lm_weight * model.text_log_prob(text, piece) + self.length_bonus
        return scores

    def _text(self, prefix: tuple[int, ...]) -> str:
        """The text a hypothesis has written (a sentence starts with its first character, not a word marker)."""
        return "".join(self.token_texts[token] or "" for token in prefix).lstrip(" ")


# --------------------------------------------------------------------------- CTC prefix beam search (+ an LM)


def _logaddexp(a: float, b: float) -> float:
    if a < b:
        a, b = b, a
    return a if b == -math.inf else a + math.log1p(math.exp(b - a))


class _PrefixTree:
    """The hypotheses of one prefix beam search as nodes of a tree of tokens (node 0: the empty hypothesis), so
    that a hypothesis is an int: cheap to hash, whatever its length. Each node keeps its text and its fused
    language-model score (weight and length bonus applied), computed once when the node is first reached."""

    def __init__(
        self, token_texts: list[str | None] | None, language_model: Any, lm_weight: float, length_bonus: float
    ):
        self.token_texts, self.language_model = token_texts, language_model
        self.lm_weight, self.length_bonus = lm_weight, length_bonus
        self.parent, self.last_token, self.text, self.lm = [-1], [-1], [""], [0.0]
        self.children: dict[tuple[int, int], int] = {}

    def child(self, node: int, token: int) -> int | None:
        """The node of hypothesis `node` followed by `token`; None for a token that writes no text."""
        found = self.children.get((node, token))
        if found is not None:
            return found
        piece = self.token_texts[token] if self.token_texts is not None else ""
        if piece is None:
            return None
        history = self.text[node]
        if not history:  # a sentence starts with its first character, not with a word marker
            piece = piece.lstrip(" ")
        lm = self.lm[node] + self.length_bonus
        if self.language_model is not None:
            lm += self.lm_weight * self.language_model.text_log_prob(history, piece)
        found = self.children[(node, token)] = len(self.parent)
        self.parent.append(node)
        self.last_token.append(token)
        self.text.append(history + piece)
        self.lm.append(lm)
        return found

    def tokens(self, node: int) -> list[int]:
        """The token ids of hypothesis `node`, first to last."""
        tokens = []
        while node > 0:
            tokens.append(self.last_token[node])
            node = self.parent[node]
        return tokens[::-1]


def ctc_prefix_beam_search(
    log_probs: torch.Tensor,
    token_texts: list[str | None],
    beam_size: int = DEFAULT_CTC_BEAMS,
    language_model: Any = None,
    lm_weight: float = 0.0,
    length_bonus: float = 0.0,
    blank: int = 0,
    candidates_per_frame: int = 8,
    prune_below: float = -12.0,
) -> list[int]:
    """The best label sequence of one utterance by frame-synchronous CTC prefix beam search (Hannun et al., 2014),
    with optional shallow fusion of a character language model.

    A hypothesis h of |h| tokens scores ``log p_ctc(h | x) + lm_weight * log p_lm(h) + length_bonus * |h|``, the
    LM scoring the end of the sentence too (the bonus offsets the LM's cost per token, which would favour short
    hypotheses). Each frame extends the beam only with the `candidates_per_frame` most likely tokens above
    `prune_below` (log-probability): the rest cannot reach the beam.

    Args:
        log_probs: `(T, V)` CTC log-probabilities of the utterance's real frames.
        token_texts: `(V,)` the text each token writes (`None`: never emitted, e.g. special tokens); needed with a
            language model, else None.
        language_model: a model of this utterance's language with `text_log_prob(history, text)` and
            `log_prob(history, END)` (`ngram_lm.CharNgramModel`), or None.
    Returns:
        The token ids of the best hypothesis.
    """
    fused = language_model is not None and lm_weight != 0.0
    tree = _PrefixTree(token_texts, language_model if fused else None, lm_weight, length_bonus)
    # The beam: (node, log p_ctc of ending in blank, of ending in the node's last token) at the current frame.
    beam = [(0, 0.0, -math.inf)]
    frames = log_probs.float()
    top_values, top_ids = frames.topk(min(candidates_per_frame, frames.shape[-1]), dim=-1)
    for values, ids in zip(top_values.tolist(), top_ids.tolist(), strict=True):
        candidates = [(value, token) for value, token in zip(values, ids, strict=True) if value >= prune_below]
        grown: dict[int, list[float]] = {}  # node -> [blank, label]
        for node, ends_blank, ends_label in beam:
            total, last = _logaddexp(ends_blank, ends_label), tree.last_token[node]
            for value, token in candidates:
                if token == blank:
                    same = grown.setdefault(node, [-math.inf, -math.inf])
                    same[0] = _logaddexp(same[0], total + value)
                    continue
                extended = tree.child(node, token)
                if extended is None:
                    continue
                longer = grown.setdefault(extended, [-math.inf, -math.inf])
                if token == last:
                    # A repeat without a blank between collapses into the same prefix; after a blank it is a new label.
                    same = grown.setdefault(node, [-math.inf, -math.inf])
                    same[1] = _logaddexp(same[1], ends_label + value)
                    longer[1] = _logaddexp(longer[1], ends_blank + value)
                else:
                    longer[1] = _logaddexp(longer[1], total + value)
        ranked = sorted(grown.items(), key=lambda item: _logaddexp(*item[1]) + tree.lm[item[0]], reverse=True)
        beam = [(node, ends_blank, ends_label) for node, (ends_blank, ends_label) in ranked[:beam_size]]

    def final(entry: tuple[int, float, float]) -> float:
        node, ends_blank, ends_label = entry
        end = lm_weight * language_model.log_prob(tree.text[node], END) if fused else 0.0
        return _logaddexp(ends_blank, ends_label) + tree.lm[node] + end

    return tree.tokens(max(beam, key=final)[0])


# ------------------------------------------------------------------------------------- alignment and time


def ctc_forced_align(log_probs: torch.Tensor, tokens: list[int], blank: int = 0) -> torch.LongTensor:
    """The best CTC path (Viterbi) of one utterance that collapses to `tokens`.

    Args:
        log_probs: `(T, V)` CTC log-probabilities of the utterance's real frames.
        tokens: the L token ids to align (no blank).
    Returns:
        `(T,)` the path: the label of every frame (a token id, or `blank`).
    Raises:
        ValueError: when `tokens` holds the blank, or needs more frames than there are (a token per frame, plus a
            blank between two equal neighbours).
    """
    frames = log_probs.shape[0]
    if blank in tokens:
        raise ValueError(f"The tokens to align hold the blank id {blank}: pass text token ids only.")
    repeats = sum(a == b for a, b in zip(tokens, tokens[1:], strict=False))
    if len(tokens) + repeats > frames:
        raise ValueError(
            f"Cannot align {len(tokens)} tokens ({repeats} repeated) to {frames} frames: CTC emits at most one token "
            "per frame and needs a blank between two equal tokens."
        )
    if not tokens:
        return torch.full((frames,), blank, dtype=torch.long)
    # The extended label sequence: blank, t1, blank, t2, ..., tL, blank (states s = 0 .. 2L).
    labels = torch.tensor([blank] + [x for token in tokens for x in (token, blank)], device=log_probs.device)
    emissions = log_probs.float()[:, labels]  # (T, 2L + 1)
    # A path may skip the blank between two different tokens.
    can_skip = torch.zeros(len(labels), dtype=torch.bool, device=log_probs.device)
    can_skip[2:] = (labels[2:] != blank) & (labels[2:] != labels[:-2])
    score = torch.full_like(emissions[0], float("-inf"))
    score[:2] = emissions[0, :2]
    steps = torch.zeros(frames, len(labels), dtype=torch.long, device=log_probs.device)  # states back to the best
    for t in range(1, frames):
        one_back = _shift_right(score, 1)
        two_back = _shift_right(score, 2).masked_fill(~can_skip, float("-inf"))
        best, steps[t] = torch.stack([score, one_back, two_back]).max(dim=0)
        score = best + emissions[t]
    state = len(labels) - 1 if score[-1] >= score[-2] else len(labels) - 2
    path, back, label_ids = [], steps.tolist(), labels.tolist()
    for t in range(frames - 1, -1, -1):
        path.append(label_ids[state])
        state -= back[t][state]
    return torch.tensor(path[::-1], dtype=torch.long)


def _shift_right(values: torch.Tensor, count: int) -> torch.Tensor:
    """`values` shifted right by `count` places, -inf in front: each state's score `count` states back."""
    return torch.cat([values.new_full((count,), float("-inf")), values[:-count]])


def ctc_token_spans(path: list[int] | torch.Tensor, blank: int = 0) -> list[tuple[int, int, int]]:
    """The tokens of a CTC path with their frames: `(token, start, end)`, frames `[start, end)`.

    A token starts where the path leaves blank or changes label; equal neighbours are one token (a repeated token
    has a blank in between). Works on best paths (greedy CTC) and on forced alignments.
    """
    labels = path.tolist() if isinstance(path, torch.Tensor) else list(path)
    spans: list[tuple[int, int, int]] = []
    previous = blank
    for frame, label in enumerate(labels):
        if label != blank and label == previous:
            token, start, _ = spans[-1]
            spans[-1] = (token, start, frame + 1)
        elif label != blank:
            spans.append((label, frame, frame + 1))
        previous = label
    return spans


def word_spans(
    pieces: list[str], spans: list[tuple[int, int]], space: str = "\u2581"
) -> list[tuple[list[int], int, int]]:
    """Group aligned tokens into words: `(indices of the word's tokens, start frame, end frame)` per word.

    A token that starts with `space` (SentencePiece's word-start marker ▁) starts a word; a token that is only
    `space` (the character tokenizer's space) separates words and belongs to none.

    Args:
        pieces: the tokens' strings (`tokenizer.convert_ids_to_tokens`).
        spans: `(start, end)` frames of each token.
    """
    words: list[tuple[list[int], int, int]] = []
    starts_word = True
    for index, (piece, (start, end)) in enumerate(zip(pieces, spans, strict=True)):
        if piece == space:
            starts_word = True
            continue
        if starts_word or piece.startswith(space) or not words:
            words.append(([index], start, end))
        else:
            members, first, _ = words[-1]
            words[-1] = ([*members, index], first, end)
        starts_word = False
    return words


@dataclass(frozen=True)
class FrameClock:
    """Seconds of the encoder frames: frame t is the `seconds_per_frame` interval centred on its receptive field.

    Build it with `FrameClock.for_model(config, feature_extractor)`: a log-mel frame covers `n_fft` samples every
    `hop_length`, and the speech front end's two convolutions make one encoder frame of `frontend_stride ** 2`
    log-mel frames, seeing `config.min_input_frames` of them. The CTC head's frames are its label slots,
    `config.ctc_upsampling` to an encoder frame, each a share of the frame's interval.
    """

    seconds_per_frame: float
    offset_s: float = 0.0

    @classmethod
    def for_model(cls, config, feature_extractor) -> FrameClock:
        stride = config.frontend_stride**2 * feature_extractor.hop_length
        seen = (config.min_input_frames - 1) * feature_extractor.hop_length + feature_extractor.n_fft
        rate = feature_extractor.sampling_rate
        return cls(seconds_per_frame=stride / rate / config.ctc_upsampling, offset_s=(seen - stride) / 2 / rate)

    def seconds(self, start: int, end: int, duration_s: float | None = None) -> tuple[float, float]:
        """`(start_s, end_s)` of frames `[start, end)`, inside `[0, duration_s]` when given."""
        start_s = max(0.0, self.offset_s + start * self.seconds_per_frame)
        end_s = self.offset_s + end * self.seconds_per_frame
        if duration_s is not None:
            start_s, end_s = min(start_s, duration_s), min(end_s, duration_s)
        return round(start_s, 3), round(end_s, 3)
