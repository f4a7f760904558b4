"""CTC decoding: prefix scores against a brute-force sum over alignments, greedy CTC, joint CTC/attention search."""

import itertools
import math

import numpy as np
import pytest
import torch
from test_evaluation import tiny_model, tiny_processor

from mu2slam_hf.ctc_decoding import (
    NEG_INF,
    CTCPrefixLogitsProcessor,
    CTCPrefixScorer,
    ctc_greedy_decode,
    mask_padded_frames,
)
from mu2slam_hf.ngram_lm import END, CharNgramLanguageModel, CharNgramModel
from mu2slam_hf.training.dev import dev_chosen_ctc_weight

RATE = 16000


def collapse(path, blank=0):
    output, previous = [], blank
    for token in path:
        if token != previous and token != blank:
            output.append(token)
        previous = token
    return output


def brute_force(log_probs: torch.Tensor, prefix: list[int], whole: bool) -> float:
    """log of the summed probability of every alignment whose collapse starts with (or, `whole`, is) `prefix`."""
    frames, vocab = log_probs.shape
    total = 0.0
    for path in itertools.product(range(vocab), repeat=frames):
        labels = collapse(path)
        if (labels == prefix) if whole else (labels[: len(prefix)] == prefix):
            total += math.exp(sum(log_probs[t, token].item() for t, token in enumerate(path)))
    return math.log(total) if total > 0 else float("-inf")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prefix_scores_equal_the_sum_over_alignments(seed):
    torch.manual_seed(seed)
    frames, vocab = 5, 3
    log_probs = torch.log_softmax(torch.randn(1, frames, vocab, dtype=torch.float64), -1)
    scorer = CTCPrefixScorer(mask_padded_frames(log_probs, torch.tensor([frames])))
    one = torch.tensor([0])
    state = scorer.initial_state(0)[None]
    prefix: list[int] = []
    for token in (1, 1, 2):  # includes a repeated token, which needs a blank in between
        last = torch.tensor([prefix[-1] if prefix else -1])
        scores, states = scorer.extend(one, state, last, torch.tensor([not prefix]), torch.tensor([[1, 2]]))
        for column, candidate in enumerate((1, 2)):
            assert scores[0, column].item() == pytest.approx(brute_force(log_probs[0], [*prefix, candidate], False))
        prefix.append(token)
        state = states[:, token - 1]
        assert scorer.final_score(state).item() == pytest.approx(brute_force(log_probs[0], prefix, True))


def test_padded_frames_do_not_change_scores():
    torch.manual_seed(3)
    log_probs = torch.log_softmax(torch.randn(2, 6, 4), -1)
    log_probs[1, :4] = log_probs[0, :4]
    scorer = CTCPrefixScorer(mask_padded_frames(log_probs, torch.tensor([4, 6])))
    alone = CTCPrefixScorer(mask_padded_frames(log_probs[:1, :4], torch.tensor([4])))
    candidates = torch.tensor([[1, 2, 3]])
    padded, _ = scorer.extend(torch.tensor([0]), scorer.initial_state(0)[None], torch.tensor([-1]),
                              torch.tensor([True]), candidates)  # fmt: skip
    short, _ = alone.extend(torch.tensor([0]), alone.initial_state(0)[None], torch.tensor([-1]),
                            torch.tensor([True]), candidates)  # fmt: skip
    torch.testing.assert_close(padded, short)


def sequential_extend(log_probs, states, last, empty, candidates, blank=0):
    """The frame-by-frame recurrence of the CTC prefix score (ESPnet's), as reference for the closed form."""
    x_c = torch.gather(log_probs, 2, candidates.unsqueeze(1).expand(-1, log_probs.shape[1], -1))
    x_blank = log_probs[:, :, blank].unsqueeze(-1)
    total = torch.logaddexp(states[..., 0], states[..., 1]).unsqueeze(-1)
    phi = torch.where((candidates == last.unsqueeze(-1)).unsqueeze(1), states[..., 1].unsqueeze(-1), total)
    r_n, r_b = torch.empty_like(x_c), torch.empty_like(x_c)
    r_n[:, 0] = torch.where(empty.unsqueeze(-1), x_c[:, 0], torch.full_like(x_c[:, 0], NEG_INF))
    r_b[:, 0] = NEG_INF
    for t in range(1, log_probs.shape[1]):
        r_n[:, t] = torch.logaddexp(r_n[:, t - 1], phi[:, t - 1]) + x_c[:, t]
        r_b[:, t] = torch.logaddexp(r_n[:, t - 1], r_b[:, t - 1]) + x_blank[:, t]
    return torch.stack([r_n, r_b], dim=-1).permute(0, 2, 1, 3)


def test_prefix_states_equal_the_frame_by_frame_recurrence_on_long_padded_utterances():
    """The closed form (running sums and logcumsumexp) gives the states of the sequential recurrence, over 300
    frames of a peaked model (log-probabilities down to -60), with padding, repeats and impossible prefixes."""
    torch.manual_seed(4)
    frames, vocab = 300, 12
    log_probs = torch.log_softmax(8 * torch.randn(3, frames, vocab), -1)
    lengths = torch.tensor([300, 170, 2])
    masked = mask_padded_frames(log_probs, lengths)
    scorer = CTCPrefixScorer(masked)
    states = torch.stack([scorer.initial_state(u) for u in range(3)])
    last, empty = torch.tensor([-1, -1, -1]), torch.tensor([True, True, True])
    for _ in range(4):  # four tokens: the third utterance (2 frames) cannot hold them
        candidates = torch.tensor([[3, 5, 7], [5, 2, 9], [1, 3, 4]])
        _, new_states = scorer.extend(torch.arange(3), states, last, empty, candidates)
        expected = sequential_extend(masked.float(), states, last, empty, candidates)
        possible = expected > NEG_INF / 2
        assert torch.equal(possible, new_states > NEG_INF / 2)
        torch.testing.assert_close(new_states[possible], expected[possible], rtol=1e-5, atol=1e-3)
        states, last, empty = new_states[:, 0], candidates[:, 0], torch.tensor([False, False, False])


def test_greedy_ctc_merges_repeats_and_drops_blanks():
    path = torch.tensor([[0, 3, 3, 0, 3, 4, 4, 0, 5]])
    log_probs = torch.nn.functional.one_hot(path, 6).float()
    assert ctc_greedy_decode(log_probs, torch.tensor([9])) == [[3, 3, 4, 5]]
    assert ctc_greedy_decode(log_probs, torch.tensor([5])) == [[3, 3]]


def test_joint_decoding_follows_the_ctc_path_when_ctc_dominates():
    """With weight 1 the search can only write what CTC allows: the single alignment-consistent text."""
    frames, vocab = 8, 10
    path = torch.tensor([0, 6, 6, 0, 7, 0, 8, 0])
    ctc = torch.log_softmax(torch.nn.functional.one_hot(path, vocab).float() * 20, -1)[None]
    processor = CTCPrefixLogitsProcessor(ctc, torch.tensor([frames]), 1.0, num_beams=1, eos_token_id=2)
    ids = torch.tensor([[1]])
    attention = torch.zeros(1, 12)
    attention[0, 9] = 5.0  # the attention decoder prefers a token CTC rules out
    for expected in (6, 7, 8, 2):
        token = int(processor(ids, attention.clone()).argmax(-1))
        assert token == expected
        ids = torch.cat([ids, torch.tensor([[token]])], dim=-1)


def test_joint_decoding_adds_the_language_model_score_of_each_candidate():
    """Shallow fusion: each candidate token gains lm_weight * log p_lm(token | text so far) + the length bonus, end
    of sentence lm_weight * log p_lm(end | text); the CTC and attention terms are those of joint decoding alone."""
    torch.manual_seed(0)
    frames, ctc_vocab, eos = 6, 8, 2
    ctc = torch.log_softmax(torch.randn(1, frames, ctc_vocab), -1)
    texts = [None, None, None, "a", "b", " ", "c", "d", None, None]  # ids 8, 9: outside the CTC vocabulary
    lm = CharNgramModel.from_texts(["ab cd", "abc", "dc ba"], order=3)
    plain = CTCPrefixLogitsProcessor(ctc, torch.tensor([frames]), 0.5, num_beams=1, eos_token_id=eos, pre_beam=9)
    fused = CTCPrefixLogitsProcessor(ctc, torch.tensor([frames]), 0.5, num_beams=1, eos_token_id=eos, pre_beam=9,
                                     language_models=[lm], token_texts=texts, lm_weight=0.7, length_bonus=0.2)  # fmt: skip
    attention = torch.randn(1, 10)
    ids = torch.tensor([[1]])
    for next_token in (5, 3, 4, None):  # " ab": a leading word marker writes nothing
        without, with_lm = plain(ids, attention.clone()), fused(ids, attention.clone())
        written = "".join(texts[i] for i in ids[0, 1:].tolist()).lstrip(" ")
        for token in range(10):
            if torch.isinf(without[0, token]):
                assert torch.isinf(with_lm[0, token])
                continue
            if token == eos:
                gain = 0.7 * lm.log_prob(written, END)
            elif texts[token] is None:  # writes no text: never emitted, as in the CTC head's LM search
                assert torch.isinf(with_lm[0, token])
                continue
            else:
                piece = texts[token] if written else texts[token].lstrip(" ")
                gain = 0.7 * lm.text_log_prob(written, piece) + 0.2
            assert with_lm[0, token] - without[0, token] == pytest.approx(gain, abs=1e-4)
        if next_token is not None:
            ids = torch.cat([ids, torch.tensor([[next_token]])], dim=-1)


def speech_batch(processor, seconds=(0.6, 0.9, 0.45)):
    rng = np.random.default_rng(0)
    clips = [(0.1 * rng.standard_normal(int(s * RATE))).astype(np.float32) for s in seconds]
    return clips, processor(audio=clips, sampling_rate=RATE, src_lang=["fr", "de", "fr"])


@pytest.mark.parametrize("num_beams", [1, 3])
def test_joint_decoding_batch_equals_single(num_beams):
    processor = tiny_processor()
    model = tiny_model(processor, seed=1)
    clips, batch = speech_batch(processor)
    options = {"ctc_weight": 0.3, "num_beams": num_beams, "max_new_tokens": 8}
    together = processor.batch_decode(model.generate(**batch, **options), skip_special_tokens=True)
    for index, clip in enumerate(clips):
        single = processor(audio=clip, sampling_rate=RATE, src_lang=["fr", "de", "fr"][index])
        alone = processor.batch_decode(model.generate(**single, **options), skip_special_tokens=True)[0]
        assert alone == together[index]


@pytest.mark.parametrize("num_beams", [1, 3])
def test_joint_decoding_with_a_language_model_batch_equals_single(num_beams):
    processor = tiny_processor()
    model = tiny_model(processor, seed=1)
    lm = CharNgramLanguageModel.from_texts({"fr": ["le chat noir", "la nuit"], "de": ["die nacht"]},
                                           processor.tokenizer, order=3)  # fmt: skip
    model.set_asr_language_model(lm)
    clips, batch = speech_batch(processor)
    options = {"ctc_weight": 0.3, "lm_weight": 0.5, "lm_length_bonus": 0.5, "num_beams": num_beams}
    together = model.generate(**batch, **options, max_new_tokens=8)
    assert not torch.equal(together, model.generate(**batch, ctc_weight=0.3, num_beams=num_beams, max_new_tokens=8))
    together = processor.batch_decode(together, skip_special_tokens=True)
    for index, clip in enumerate(clips):
        single = processor(audio=clip, sampling_rate=RATE, src_lang=["fr", "de", "fr"][index])
        alone = processor.batch_decode(model.generate(**single, **options, max_new_tokens=8), skip_special_tokens=True)
        assert alone[0] == together[index]


def test_ctc_greedy_decode_matches_the_head_argmax_and_batches():
    processor = tiny_processor()
    model = tiny_model(processor, seed=2)
    clips, batch = speech_batch(processor)
    ids = model.ctc_greedy_decode(**batch)
    encoder = model.model.encoder(input_features=batch["input_features"], attention_mask=batch["attention_mask"],
                                  src_lang_ids=batch["src_lang_ids"])  # fmt: skip
    log_probs, lengths = model.ctc_log_probs(encoder)
    expected = ctc_greedy_decode(log_probs, lengths)
    assert [row[row != 0].tolist() for row in ids] == expected
    single = processor(audio=clips[1], sampling_rate=RATE, src_lang="de")
    alone = model.ctc_greedy_decode(**single)[0]
    assert alone[alone != 0].tolist() == expected[1]


@pytest.mark.parametrize("ctc_weight", [0.3, 1.0])
def test_joint_decoding_refuses_translation(ctc_weight):
    processor = tiny_processor()
    model = tiny_model(processor)
    _, batch = speech_batch(processor)
    with pytest.raises(ValueError, match="speech recognition"):
        model.generate(**batch, tgt_lang="en", ctc_weight=ctc_weight, max_new_tokens=4)


def test_greedy_generate_with_the_ctc_head_alone_is_its_best_path():
    processor = tiny_processor()
    model = tiny_model(processor, seed=2)
    _, batch = speech_batch(processor)
    ids = model.generate(**batch, ctc_weight=1.0)
    best = model.ctc_greedy_decode(**batch)
    assert (ids[:, 0] == model.generation_config.decoder_start_token_id).all()
    for row, path in zip(ids, best, strict=True):
        tokens = row[1:][row[1:] != 0].tolist()
        assert tokens == [*path[path != 0].tolist(), model.config.eos_token_id]
    assert processor.batch_decode(ids, skip_special_tokens=True) == processor.batch_decode(
        best, skip_special_tokens=True
    )


def test_dev_chosen_ctc_weight_is_the_decoder_with_the_lowest_dev_cer():
    assert dev_chosen_ctc_weight({"dev/asr_cer": 90.0, "dev/asr_cer_ctc": 35.0, "dev/asr_cer_joint": 56.0}) == 1.0
    assert dev_chosen_ctc_weight({"dev/asr_cer": 20.0, "dev/asr_cer_ctc": 35.0, "dev/asr_cer_joint": 18.0}) == 0.3
    assert dev_chosen_ctc_weight({"dev/asr_cer": 20.0}) == 0.0
    assert dev_chosen_ctc_weight({"dev/ast_bleu": 3.0}) is None


def test_the_asr_decoder_in_the_generation_config_is_the_default_for_asr_only(tmp_path):
    processor = tiny_processor()
    model = tiny_model(processor, seed=3)
    _, batch = speech_batch(processor)
    options = {"max_new_tokens": 8}
    model.set_asr_ctc_weight(1.0)
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path).eval()
    assert loaded.generation_config.asr_ctc_weight == 1.0
    default = loaded.generate(**batch, **options)
    assert torch.equal(default, loaded.generate(**batch, ctc_weight=1.0, **options))
    assert torch.equal(loaded.generate(**batch, ctc_weight=0.0, **options), model.generate(**batch, ctc_weight=0.0,
                                                                                            **options))  # fmt: skip
    # Translation (tgt_lang != src_lang) and text input keep the attention decoder: no CTC default, no error.
    translated = loaded.generate(**batch, tgt_lang="en", **options)
    assert torch.equal(translated, loaded.generate(**batch, tgt_lang="en", ctc_weight=0.0, **options))


# ------------------------------------------------------------------------------------- CTC upsampling


def test_a_ctc_head_grown_to_two_slots_a_frame_keeps_the_one_slot_heads_best_path(tmp_path):
    """Loading a 1-slot model with `ctc_upsampling=2` starts both slots of a frame as copies of it: twice the
    CTC frames, each frame's distribution repeated, the same best path. (Prefix scores are sums over alignments,
    which repeated frames change, so joint decoding may differ.)"""
    processor = tiny_processor()
    model = tiny_model(processor, seed=2)
    model.save_pretrained(tmp_path)
    grown = type(model).from_pretrained(tmp_path, ctc_upsampling=2).eval()
    _, batch = speech_batch(processor)
    encoder = model._encode_speech(batch["input_features"], batch["attention_mask"], None, batch["src_lang_ids"])
    log_probs, lengths = model.ctc_log_probs(encoder)
    grown_log_probs, grown_lengths = grown.ctc_log_probs(encoder)
    assert torch.equal(grown_lengths, 2 * lengths)
    torch.testing.assert_close(grown_log_probs, log_probs.repeat_interleave(2, dim=1))
    assert torch.equal(grown.ctc_greedy_decode(**batch), model.ctc_greedy_decode(**batch))
    assert torch.equal(grown.generate(**batch, ctc_weight=1.0), model.generate(**batch, ctc_weight=1.0))


def test_two_ctc_slots_a_frame_fit_a_transcript_longer_than_the_frames():
    """With one slot a frame CTC cannot emit more labels than the clip has encoder frames (the loss is infeasible,
    zeroed); with two it can, and training moves the slots apart."""
    processor = tiny_processor()
    clip = (0.1 * np.random.default_rng(0).standard_normal(int(0.45 * RATE))).astype(np.float32)
    batch = processor(audio=clip, sampling_rate=RATE, src_lang="fr")
    inputs = {k: batch[k] for k in ("input_features", "attention_mask", "src_lang_ids")}
    frames = int(tiny_model(processor).model.encoder(**inputs).attention_mask.sum())
    labels = torch.tensor([[5, 6, 7] * frames])[:, : frames + 2]  # more labels than frames
    losses = {}
    for slots in (1, 2):
        model = tiny_model(processor, seed=0, ctc_upsampling=slots).train()
        model.config.decoder_loss_weight = 0.0
        losses[slots] = model(**inputs, decoder_input_ids=torch.tensor([[1]]), ctc_labels=labels).loss
    assert losses[1].item() == 0.0
    assert losses[2].item() > 0.0 and torch.isfinite(losses[2])
    losses[2].backward()
    offsets = model.ctc_head.slot_offsets.weight.grad.view(2, -1, model.config.d_model)
    assert not torch.allclose(offsets[0], offsets[1])  # the slots of a frame learn different things
