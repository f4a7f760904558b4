"""Noisy fine-tuning and SpecAugment inside the model; Seq2SeqTrainer, LoRA and classification fine-tuning."""

import numpy as np
import pytest
import torch
from conftest import PRESETS, random_batch
from test_evaluation import tiny_model, tiny_processor

import mu2slam_hf  # noqa: F401
from mu2slam_hf import Mu2SlamConfig, Mu2SlamForConditionalGeneration
from mu2slam_hf.modeling_mu2slam import add_decoder_noise, shift_tokens_right, spec_augment
from mu2slam_hf.vocabulary import NUM_SPECIAL_TOKENS

TEXT_VOCAB, CODEBOOK = 40, 24


def noise_config(**overrides) -> Mu2SlamConfig:
    return Mu2SlamConfig.from_pretrained(
        PRESETS / "tiny", text_vocab_size=TEXT_VOCAB, codebook_size=CODEBOOK, **overrides
    )


def mixed_ids(batch: int = 64, length: int = 40, seed: int = 0) -> torch.Tensor:
    """Text tokens, speech codes and every special token, shuffled."""
    generator = torch.Generator().manual_seed(seed)
    text = torch.randint(NUM_SPECIAL_TOKENS, TEXT_VOCAB, (batch, length), generator=generator)
    speech = torch.randint(TEXT_VOCAB, TEXT_VOCAB + CODEBOOK, (batch, length), generator=generator)
    special = torch.randint(0, NUM_SPECIAL_TOKENS, (batch, length), generator=generator)
    which = torch.randint(0, 3, (batch, length), generator=generator)
    return torch.where(which == 0, text, torch.where(which == 1, speech, special))


# ---------------------------------------------------------------------------------------- decoder noise


def test_noise_ratio_is_honoured_and_specials_untouched():
    embedding = torch.randn(TEXT_VOCAB + CODEBOOK, 16, generator=torch.Generator().manual_seed(1))
    ids = mixed_ids()
    eligible = ids >= NUM_SPECIAL_TOKENS
    for ratio in (0.06, 0.3):
        noisy = add_decoder_noise(ids, embedding, ratio, TEXT_VOCAB, torch.Generator().manual_seed(2))
        changed = noisy != ids
        fraction = changed[eligible].float().mean().item()
        n = int(eligible.sum())
        assert abs(fraction - ratio) < 4 * (ratio * (1 - ratio) / n) ** 0.5, (ratio, fraction)
        assert torch.equal(noisy[~eligible], ids[~eligible])  # specials stay
        assert bool((noisy[eligible] >= NUM_SPECIAL_TOKENS).all())  # and are never produced
    assert torch.equal(add_decoder_noise(ids, embedding, 0.0, TEXT_VOCAB), ids)


def test_replacements_are_true_nearest_neighbours_of_the_same_modality():
    embedding = torch.randn(TEXT_VOCAB + CODEBOOK, 16, generator=torch.Generator().manual_seed(3))
    ids = mixed_ids(seed=4)
    noisy = add_decoder_noise(ids, embedding, 0.5, TEXT_VOCAB, torch.Generator().manual_seed(5))
    normed = torch.nn.functional.normalize(embedding, dim=-1)
    changed = (noisy != ids).nonzero().tolist()
    assert len(changed) > 100
    for row, col in changed:
        original, replacement = ids[row, col].item(), noisy[row, col].item()
        is_text = original < TEXT_VOCAB
        assert (replacement < TEXT_VOCAB) == is_text  # text -> text, speech -> speech
        candidates = range(NUM_SPECIAL_TOKENS, TEXT_VOCAB) if is_text else range(TEXT_VOCAB, TEXT_VOCAB + CODEBOOK)
        best = max((c for c in candidates if c != original), key=lambda c: float(normed[original] @ normed[c]))
        assert replacement == best


def decoder_inputs_seen(model, **inputs) -> torch.Tensor:
    seen = []
    hook = model.model.decoder.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"].clone()), with_kwargs=True
    )
    output = model(**inputs)
    hook.remove()
    return seen[0], output


def test_model_applies_noise_to_decoder_inputs_in_training_only():
    torch.manual_seed(0)
    model = Mu2SlamForConditionalGeneration(noise_config(decoder_noise_ratio=0.5))
    features, mask = random_batch(model.config)
    labels = torch.randint(NUM_SPECIAL_TOKENS, TEXT_VOCAB, (2, 30))
    labels[1, 20:] = -100
    inputs = dict(input_features=features, attention_mask=mask, src_lang_ids=torch.tensor([0, 1]), labels=labels)
    clean = shift_tokens_right(labels, 0, model.config.decoder_start_token_id)

    model.train()
    seen, output = decoder_inputs_seen(model, **inputs)
    changed = seen != clean
    assert 5 < int(changed.sum()) < 55  # about half of the 49 text tokens
    assert bool((seen[clean < NUM_SPECIAL_TOKENS] == clean[clean < NUM_SPECIAL_TOKENS]).all())
    assert torch.equal(inputs["labels"], labels)  # labels are not noised
    assert output.loss is not None

    model.eval()
    seen, _ = decoder_inputs_seen(model, **inputs)
    assert torch.equal(seen, clean)


# ---------------------------------------------------------------------------------------- SpecAugment


def test_spec_augment_masks_real_frames_only():
    config = noise_config(mask_time_prob=0.5, mask_time_length=5, mask_feature_prob=0.3, mask_feature_length=8)
    np.random.seed(0)
    features, mask = random_batch(config, lengths=(120, 50))
    augmented = spec_augment(features, mask, config)
    changed = augmented != features
    assert bool(changed[0].any()) and bool(changed[1, :50].any())
    assert not bool(changed[1, 50:].any())  # padding stays padding
    time_masked = changed.all(-1)  # whole frames
    bins_masked = changed[0, :120].all(0)  # whole bins over the real frames
    assert int(time_masked[0].sum()) > 10 and int(bins_masked.sum()) >= 8
    real_mean = features[0].mean()
    assert torch.allclose(augmented[0][changed[0]], real_mean.expand(int(changed[0].sum())))


def test_spec_augment_acts_only_in_training_and_only_when_enabled():
    seen = []

    def capture(module, args):
        seen.append(args[0].clone())

    features, mask = random_batch(noise_config())
    for enabled, training, expect_change in [(True, True, True), (True, False, False), (False, True, False)]:
        config = noise_config(apply_spec_augment=enabled, mask_time_prob=0.4, mask_time_length=4)
        model = Mu2SlamForConditionalGeneration(config).train(training)
        hook = model.model.encoder.speech_frontend.register_forward_pre_hook(capture)
        np.random.seed(0)
        model(input_features=features.clone(), attention_mask=mask, src_lang_ids=torch.tensor([0, 1]),
              labels=torch.tensor([[7, 8, 2], [9, 2, -100]]))  # fmt: skip
        hook.remove()
        changed = seen[-1] != features
        assert bool(changed.any()) == expect_change
        assert not bool(changed[mask == 0].any())


def test_defaults_keep_training_and_eval_forward_identical(tiny_config):
    """Tiny preset has no dropout: without noise / SpecAugment a training forward equals an eval forward."""
    assert tiny_config.decoder_noise_ratio == 0.0 and tiny_config.apply_spec_augment is False
    torch.manual_seed(0)
    model = Mu2SlamForConditionalGeneration(tiny_config)
    features, mask = random_batch(tiny_config)
    inputs = dict(input_features=features, attention_mask=mask, src_lang_ids=torch.tensor([0, 1]),
                  labels=torch.randint(NUM_SPECIAL_TOKENS, 100, (2, 8)))  # fmt: skip
    with torch.no_grad():
        train_logits = model.train()(**inputs).logits
        eval_logits = model.eval()(**inputs).logits
    torch.testing.assert_close(train_logits, eval_logits)


def test_noise_and_spec_augment_survive_save_and_load(tmp_path):
    processor = tiny_processor()
    model = tiny_model(processor, decoder_noise_ratio=0.06, apply_spec_augment=True)
    model.save_pretrained(tmp_path)
    loaded = Mu2SlamConfig.from_pretrained(tmp_path)
    assert (loaded.decoder_noise_ratio, loaded.apply_spec_augment, loaded.mask_time_prob) == (0.06, True, 0.05)
    with pytest.raises(ValueError, match="decoder_noise_ratio"):
        Mu2SlamConfig(decoder_noise_ratio=1.5)
