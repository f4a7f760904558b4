"""Pre-training objectives: masks, instances of eq. 2-5, the collator's layout, the losses the model counts."""

import math

import pytest
import torch
from conftest import make_model
from torch.nn import functional as F

from mu2slam_hf.instances import (
    Mu2SlamCollator,
    Mu2SlamInstance,
    build_mt_alignment,
    build_mt_pretraining,
    build_speech_only,
    build_speech_text_alignment,
    build_speech_text_pretraining,
    build_speech_to_text,
    build_speech_to_text_finetuning,
    build_text_only,
    build_text_to_speech,
    build_text_to_text_finetuning,
    corrupt_text,
    speech_span_mask,
    split_by_layout,
    word_span_mask,
    word_starts_from_offsets,
)
from mu2slam_hf.vocabulary import BOS_ID, EOS_ID, MASK_ID, NUM_SPECIAL_TOKENS, SPEECH_MODALITY, TEXT_MODALITY

IGNORE = -100
EN, DE, FR = 0, 1, 2


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def speech(config, frames: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, 80) features and (S,) codes of one synthetic utterance."""
    g = generator(1000 + seed)
    codes = torch.randint(0, config.codebook_size, (config.speech_output_lengths(frames),), generator=g)
    return torch.randn(frames, config.num_mel_bins, generator=g), codes


def text(config, num_words: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(L,) text ids of ``num_words`` words of 1-3 tokens each, ending with eos, and their word starts."""
    g = generator(2000 + seed)
    ids, starts = [], []
    for _ in range(num_words):
        size = int(torch.randint(1, 4, (1,), generator=g))
        ids += torch.randint(NUM_SPECIAL_TOKENS, config.text_vocab_size, (size,), generator=g).tolist()
        starts += [True] + [False] * (size - 1)
    return torch.tensor(ids + [EOS_ID]), torch.tensor(starts + [False])


def runs(mask: torch.Tensor) -> list[int]:
    """Lengths of the maximal runs of True."""
    lengths, current = [], 0
    for value in mask.tolist() + [False]:
        if value:
            current += 1
        elif current:
            lengths.append(current)
            current = 0
    return lengths


def every_objective(config, seed: int = 0) -> list[Mu2SlamInstance]:
    """Two examples of each data task, of different lengths, through every pre-training builder."""
    g = generator(seed)
    instances = []
    for index, frames in enumerate((90, 61)):
        features, codes = speech(config, frames, seed=index)
        ids, starts = text(config, 6 + 3 * index, seed=index)
        other_ids, other_starts = text(config, 5 + index, seed=10 + index)
        instances.append(build_speech_only(config, features, codes, FR, g))
        instances.append(build_text_only(config, ids, starts, DE, g))
        instances += build_speech_text_pretraining(config, features, codes, ids, starts, FR, FR, g, task="asr")
        instances += build_speech_text_pretraining(config, features, codes, other_ids, other_starts, FR, EN, g, "ast")
        instances += build_mt_pretraining(config, ids, starts, other_ids, other_starts, DE, EN, g)
    return instances


# ---------------------------------------------------------------------------------------------- masks


def test_speech_span_mask_ratio_and_span_lengths():
    g = generator()
    for draw in range(300):
        length = 20 + draw % 181
        mask = speech_span_mask(length, g)
        assert int(mask.sum()) == math.floor(0.5 * length + 0.5)
        assert max(runs(mask)) <= 10
        assert len(runs(mask)) == math.ceil(int(mask.sum()) / 10)  # spans never merge
    masks = torch.stack([speech_span_mask(200, g) for _ in range(400)]).float()
    assert masks.mean().item() == pytest.approx(0.5)
    per_position = masks.mean(0)
    # placement is uniform away from the edges; a frame at an edge is masked only if a span starts/ends there
    assert per_position[10:-10].min() > 0.3 and per_position[10:-10].max() < 0.7
    assert per_position.min() > 0.05
    assert speech_span_mask(1, g).tolist() == [True]


@pytest.mark.parametrize("ratio", [0.5, 0.25])
def test_word_span_mask_is_one_contiguous_span_of_whole_words(tiny_config, ratio):
    g = generator()
    fractions = []
    for seed in range(200):
        ids, starts = text(tiny_config, 4 + seed % 17, seed)
        mask = word_span_mask(ids, starts, g, ratio)
        word_of = starts.long().cumsum(0) - 1
        masked_words = word_of[mask].unique()
        num_words = int(starts.sum())
        assert not mask[-1]  # eos is never masked
        assert len(runs(mask)) == 1
        assert len(masked_words) == min(num_words, max(1, math.floor(ratio * num_words + 0.5)))
        assert torch.equal(mask[:-1], torch.isin(word_of[:-1], masked_words))  # whole words only
        fractions.append(len(masked_words) / num_words)
    assert sum(fractions) / len(fractions) == pytest.approx(ratio, abs=0.04)


def test_corrupt_text_80_10_10(tiny_config):
    g = generator()
    ids = torch.randint(NUM_SPECIAL_TOKENS, tiny_config.text_vocab_size, (40_000,), generator=g)
    mask = torch.rand(ids.shape, generator=g) < 0.5
    corrupted = corrupt_text(ids, mask, tiny_config.vocabulary, g)
    assert torch.equal(corrupted[~mask], ids[~mask])
    masked, original = corrupted[mask], ids[mask]
    is_mask = masked == MASK_ID
    is_kept = masked == original
    is_random = ~is_mask & ~is_kept
    chance_same = 0.1 / len(tiny_config.vocabulary.text_token_ids())  # a random token may equal the original
    assert is_mask.float().mean().item() == pytest.approx(0.8, abs=0.01)
    assert is_kept.float().mean().item() == pytest.approx(0.1 + chance_same, abs=0.01)
    assert is_random.float().mean().item() == pytest.approx(0.1 - chance_same, abs=0.01)
    random_tokens = masked[is_random]
    assert bool(((random_tokens >= NUM_SPECIAL_TOKENS) & (random_tokens < tiny_config.text_vocab_size)).all())


def test_word_starts_from_offsets():
    text_ = "The  quick fox"
    # char tokenizer: "▁" covers the (second) space itself, eos has an empty span
    char_offsets = [(0, 1), (1, 2), (2, 3), (4, 5), (5, 6), (6, 7), (7, 8), (8, 9), (9, 10), (10, 11), (11, 12)]
    char_offsets += [(12, 13), (13, 14), (0, 0)]
    expected = [1, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]
    assert word_starts_from_offsets(text_, char_offsets).long().tolist() == expected
    # Unigram: a prepended "▁" and the first letter share character 0; "▁f" absorbs its space
    unigram_offsets = [(0, 1), (0, 1), (1, 2), (2, 3), (4, 5), (5, 6), (6, 7), (7, 8), (8, 9), (9, 10)]
    unigram_offsets += [(10, 12), (12, 13), (13, 14), (0, 0)]
    expected = [1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0]
    assert word_starts_from_offsets(text_, unigram_offsets).long().tolist() == expected
    # BPE-like: spans exclude the spaces, the character before a word start is whitespace
    assert word_starts_from_offsets(text_, [(0, 3), (5, 8), (8, 10), (11, 14), (0, 0)]).tolist() == [
        True,
        True,
        False,
        True,
        False,
    ]


# ------------------------------------------------------------------------------------------ instances


def test_speech_only_follows_eq_2(tiny_config):
    features, codes = speech(tiny_config, 120)
    instance = build_speech_only(tiny_config, features, codes, FR, generator())
    code_ids = tiny_config.vocabulary.code_to_id(codes)
    mask = instance.speech_mlm_mask
    assert mask.shape == codes.shape == instance.labels.shape  # one target per encoder frame, no eos
    # the encoder sees the frames outside m; MLM and decoder predict exactly the frames in m
    assert torch.equal(instance.speech_mlm_labels != IGNORE, mask)
    assert torch.equal(instance.labels != IGNORE, mask)
    assert torch.equal(instance.labels[mask], code_ids[mask])
    assert torch.equal(instance.speech_mlm_labels[mask], code_ids[mask])
    # the decoder reads z^{not m} shifted right: position i sees z_j (j < i) where m_j, [MASK] where not m_j
    complement = torch.where(mask, code_ids, torch.full_like(code_ids, MASK_ID))
    assert instance.decoder_input_ids[0] == BOS_ID
    assert torch.equal(instance.decoder_input_ids[1:], complement[:-1])
    assert (instance.tgt_modality_id, instance.tgt_lang_id, instance.src_lang_id) == (SPEECH_MODALITY, FR, FR)
    assert instance.example_weight == tiny_config.objective_loss_weights["speech_only"]


def test_text_only_follows_eq_3(tiny_config):
    ids, starts = text(tiny_config, 12)
    instance = build_text_only(tiny_config, ids, starts, DE, generator())
    mask = instance.text_mlm_labels != IGNORE
    assert torch.equal(instance.labels != IGNORE, mask)
    assert torch.equal(instance.labels[mask], ids[mask])
    assert torch.equal(instance.input_ids[~mask], ids[~mask])  # the encoder sees the unmasked tokens as they are
    assert bool((instance.input_ids[mask] == MASK_ID).any())
    complement = torch.where(mask, ids, torch.full_like(ids, MASK_ID))
    assert torch.equal(instance.decoder_input_ids, torch.cat([torch.tensor([BOS_ID]), complement[:-1]]))
    assert instance.labels[-1] == IGNORE  # eos is never masked, so never predicted
    assert (instance.tgt_modality_id, instance.tgt_lang_id) == (TEXT_MODALITY, DE)


def test_speech_text_forward_and_backward_follow_eq_4(tiny_config):
    features, codes = speech(tiny_config, 100)
    ids, starts = text(tiny_config, 8)
    g = generator()
    asr = build_speech_to_text(tiny_config, features, codes, ids, FR, FR, g, task="asr")
    assert torch.equal(asr.labels, ids)  # all of y, eos included
    assert torch.equal(asr.decoder_input_ids, torch.cat([torch.tensor([BOS_ID]), ids[:-1]]))
    assert torch.equal(asr.speech_mlm_labels != IGNORE, asr.speech_mlm_mask)
    assert asr.speech_mlm_mask.float().mean().item() == pytest.approx(0.5, abs=0.05)
    assert torch.equal(asr.ctc_labels, ids[:-1])  # no eos, no specials
    assert build_speech_to_text(tiny_config, features, codes, ids, FR, EN, g, task="ast").ctc_labels is None

    backward = build_text_to_speech(tiny_config, ids, starts, codes, EN, FR, g, task="ast")
    code_ids = tiny_config.vocabulary.code_to_id(codes)
    assert torch.equal(backward.labels, torch.cat([code_ids, torch.tensor([EOS_ID])]))  # all of z, then eos
    assert (backward.tgt_modality_id, backward.tgt_lang_id, backward.src_lang_id) == (SPEECH_MODALITY, FR, EN)
    assert backward.example_weight == tiny_config.objective_loss_weights["text_to_speech"]
    assert asr.example_weight == tiny_config.objective_loss_weights["speech_to_text"]


def test_speech_codes_must_align_with_the_front_end(tiny_config):
    features, codes = speech(tiny_config, 100)
    with pytest.raises(ValueError, match="one code per front-end frame"):
        build_speech_only(tiny_config, features, codes[:-1], FR, generator())
    with pytest.raises(ValueError, match="codes"):
        build_speech_only(tiny_config, features, codes + tiny_config.codebook_size, FR, generator())
    ids, starts = text(tiny_config, 3)
    with pytest.raises(ValueError, match=r"\[MASK\]"):
        build_text_only(
            tiny_config, torch.cat([torch.tensor([MASK_ID]), ids]), torch.cat([starts, starts[:1]]), 0, None
        )


def test_finetuning_instances_have_no_mask(tiny_config):
    features, _ = speech(tiny_config, 80)
    ids, _ = text(tiny_config, 6)
    other, _ = text(tiny_config, 4, seed=3)
    speech_rows = [build_speech_to_text_finetuning(tiny_config, features, ids, FR, EN, task="ast")] * 2
    text_rows = [build_text_to_text_finetuning(tiny_config, ids, other, DE, EN)] * 2
    for rows in (speech_rows, text_rows):
        batch = Mu2SlamCollator(tiny_config)(rows)
        assert not {"speech_mlm_mask", "mlm_labels", "ctc_labels"} & set(batch)
        assert all(not bool((tensor == MASK_ID).any()) for key, tensor in batch.items() if "ids" in key)
        assert bool((batch["labels"] != IGNORE).all())  # every target token counts


def test_instances_are_deterministic_given_a_seed(tiny_config):
    def flat(instances):
        return [value for i in instances for value in vars(i).values()]

    def same(a, b):
        return all(
            torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y for x, y in zip(flat(a), flat(b), strict=True)
        )

    assert same(every_objective(tiny_config, seed=5), every_objective(tiny_config, seed=5))
    assert not same(every_objective(tiny_config, seed=5), every_objective(tiny_config, seed=6))


# ------------------------------------------------------------------------------------------- collator


def test_collator_rejects_rows_that_cannot_share_a_batch(tiny_config):
    instances = every_objective(tiny_config)
    with pytest.raises(ValueError, match="cannot share a batch"):
        Mu2SlamCollator(tiny_config)(instances)
    groups = split_by_layout(instances)
    assert sorted(g[0].layout for g in groups) == [(False, True), (True, False), (True, True)]
    assert sum(len(g) for g in groups) == len(instances)


def test_alignment_mlm_labels_follow_the_encoder_layout(tiny_config):
    """[speech; text] rows of different lengths: mlm_labels line up with the encoder's padded layout."""
    g = generator()
    rows = []
    for index, (frames, words) in enumerate(((70, 9), (113, 4))):
        features, codes = speech(tiny_config, frames, seed=index)
        ids, starts = text(tiny_config, words, seed=index)
        rows += build_speech_text_alignment(tiny_config, features, codes, ids, starts, FR, EN, g, task="ast")
    batch = Mu2SlamCollator(tiny_config)(rows)
    model = make_model(tiny_config)
    encoder_keys = ("input_features", "attention_mask", "input_ids", "text_attention_mask", "src_lang_ids")
    encoder_keys += ("text_lang_ids", "speech_mlm_mask")
    with torch.no_grad():
        encoded = model.get_encoder()(**{key: batch[key] for key in encoder_keys})
    speech_length = encoded.speech_length
    assert batch["mlm_labels"].shape == encoded.attention_mask.shape
    counted = batch["mlm_labels"] != IGNORE
    assert bool(encoded.attention_mask[counted].all())  # never on padding
    for row, instance in enumerate(rows):
        speech_part, text_part = counted[row, :speech_length], counted[row, speech_length:]
        if instance.speech_mlm_labels is None:  # the text-target row: MLM counted once, on the other row
            assert not bool(counted[row].any())
            assert instance.tgt_modality_id == TEXT_MODALITY
            continue
        assert torch.equal(speech_part, batch["speech_mlm_mask"][row])
        labels = batch["mlm_labels"][row]
        assert bool((labels[:speech_length][speech_part] >= tiny_config.text_vocab_size).all())  # speech codes
        assert bool((labels[speech_length:][text_part] < tiny_config.text_vocab_size).all())  # text ids
        text_mlm = instance.text_mlm_labels != IGNORE
        assert torch.equal(text_part[: len(text_mlm)], text_mlm) and not bool(text_part[len(text_mlm) :].any())
        changed = batch["input_ids"][row, : len(text_mlm)] == MASK_ID
        assert bool(text_mlm[changed].all())
    # the two rows of one pair share the encoder input and predict the masked x, then the masked y
    assert torch.equal(batch["input_ids"][0], batch["input_ids"][1])
    assert batch["tgt_modality_ids"].tolist() == [SPEECH_MODALITY, TEXT_MODALITY] * 2
    assert batch["tgt_lang_ids"].tolist() == [FR, EN] * 2
    frames = len(rows[0].speech_mlm_mask)
    assert torch.equal(batch["labels"][0, :frames] != IGNORE, batch["speech_mlm_mask"][0, :frames])
    assert not bool((batch["labels"][0, frames:] != IGNORE).any())


def test_mt_alignment_concatenates_both_texts(tiny_config):
    source, source_starts = text(tiny_config, 6)
    target, target_starts = text(tiny_config, 9, seed=1)
    with_mlm, without = build_mt_alignment(
        tiny_config, source, source_starts, target, target_starts, DE, EN, generator()
    )
    assert with_mlm.input_ids.shape[0] == len(source) + len(target)
    assert torch.equal(with_mlm.input_ids, without.input_ids)
    mlm = with_mlm.text_mlm_labels
    assert bool((mlm[: len(source)] != IGNORE).any()) and bool((mlm[len(source) :] != IGNORE).any())
    assert torch.equal(with_mlm.labels != IGNORE, mlm[: len(source)] != IGNORE)
    assert torch.equal(without.labels != IGNORE, mlm[len(source) :] != IGNORE)
    assert (with_mlm.tgt_lang_id, without.tgt_lang_id) == (DE, EN)
    assert with_mlm.src_lang_id == without.src_lang_id == DE  # one language per text segment


def test_pad_to_multiple_of_changes_no_loss(tiny_config):
    model = make_model(tiny_config)
    for group in split_by_layout(every_objective(tiny_config)):
        plain = Mu2SlamCollator(tiny_config)(group)
        padded = Mu2SlamCollator(tiny_config, pad_to_multiple_of=8)(group)
        for key in ("input_features", "input_ids", "labels"):
            if key in padded:
                assert padded[key].shape[1] % 8 == 0
        with torch.no_grad():
            a, b = model(**plain), model(**padded)
        for part in ("decoder_loss", "mlm_loss", "ctc_loss"):
            if getattr(a, part) is not None:
                torch.testing.assert_close(getattr(a, part), getattr(b, part), atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------- losses


def _expected_targets(instance: Mu2SlamInstance) -> torch.Tensor:
    """The decoder targets the paper counts: for speech denoising rebuilt from the encoder's frame mask m."""
    if instance.tgt_modality_id == SPEECH_MODALITY and instance.speech_mlm_mask is not None:
        return torch.where(instance.speech_mlm_mask, instance.speech_mlm_labels, IGNORE)
    return instance.labels


def test_losses_count_exactly_the_expected_positions(tiny_config):
    model = make_model(tiny_config)
    vocab = tiny_config.vocabulary
    for group in split_by_layout(every_objective(tiny_config)):
        batch = Mu2SlamCollator(tiny_config)(group)
        with torch.no_grad():
            out = model(**batch)
        weights = batch["example_weights"]
        # decoder: per-row weighted token cross-entropy over the positions the objective predicts
        numerator, count = 0.0, 0
        for row, instance in enumerate(group):
            targets = _expected_targets(instance)
            positions = (targets != IGNORE).nonzero().squeeze(-1)
            if instance.objective == "speech_only":
                assert torch.equal(positions, instance.speech_mlm_mask.nonzero().squeeze(-1))
                assert bool((targets[positions] >= vocab.speech_code_offset).all())
            logits = out.logits[row, positions]
            numerator += weights[row] * F.cross_entropy(logits, targets[positions], reduction="sum")
            count += len(positions)
        torch.testing.assert_close(out.decoder_loss, numerator / count, atol=1e-5, rtol=1e-5)
        # encoder MLM: only the masked positions of the encoder input
        mlm_numerator, mlm_count = 0.0, 0
        states = out.encoder_last_hidden_state
        for row in range(len(group)):
            counted = batch["mlm_labels"][row] != IGNORE
            logits = model.mlm_head(states[row, counted])
            mlm_numerator += weights[row] * F.cross_entropy(logits, batch["mlm_labels"][row, counted], reduction="sum")
            mlm_count += int(counted.sum())
        torch.testing.assert_close(out.mlm_loss, mlm_numerator / mlm_count, atol=1e-5, rtol=1e-5)
        has_asr_forward = any(i.objective == "speech_to_text" and i.task == "asr" for i in group)
        assert (out.ctc_loss is not None) == has_asr_forward


def test_objective_weights_follow_the_config(tiny_config):
    tiny_config.objective_loss_weights = {**tiny_config.objective_loss_weights, "speech_to_text": 0.7, "mt": 0.5}
    instances = every_objective(tiny_config)
    keys = {"mt_forward": "mt", "mt_backward": "mt", "mt_alignment": "mt"}
    for instance in instances:
        key = keys.get(instance.objective, instance.objective)
        assert instance.example_weight == tiny_config.objective_loss_weights[key]
    assert {i.example_weight for i in instances if i.objective == "speech_to_text"} == {0.7}
    # the model scales each row's decoder loss by its weight
    model = make_model(tiny_config)
    rows = [i for i in instances if i.objective == "text_to_speech"]
    batch = Mu2SlamCollator(tiny_config)(rows)
    with torch.no_grad():
        weighted = model(**batch).decoder_loss
        unweighted = model(**{**batch, "example_weights": torch.ones(len(rows))}).decoder_loss
    torch.testing.assert_close(weighted, 0.1 * unweighted)


def test_a_few_steps_lower_the_loss_of_every_objective(tiny_config):
    instances = every_objective(tiny_config)
    objectives = dict.fromkeys(i.objective for i in instances)
    groups = [g for o in objectives for g in split_by_layout([i for i in instances if i.objective == o])]
    assert len(groups) == len(objectives) == 8
    for group in groups:
        model = make_model(tiny_config).train()
        batch = Mu2SlamCollator(tiny_config)(group)
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        losses = []
        for _ in range(8):
            loss = model(**batch).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        assert losses[-1] < 0.8 * losses[0], (group[0].objective, losses)
