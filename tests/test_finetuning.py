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

    features, mask = random_batch(noise_config(), lengths=(120, 100))  # one length group: one front-end call
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


# ------------------------------------------------------------------------------- Seq2SeqTrainer + LoRA

RATE = 16000
WORDS = {"fr": ["le chat", "est assis"], "de": ["die katze", "sitzt"]}


def asr_examples(count: int = 8, seed: int = 0) -> list[dict]:
    """Random-noise audio of 0.3-0.7 s, labelled with a few words (the data schema)."""
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(count):
        lang = "fr" if index % 2 == 0 else "de"
        array = (0.1 * rng.standard_normal(int(rng.uniform(0.3, 0.7) * RATE))).astype(np.float32)
        text = WORDS[lang][index // 2 % 2]
        rows.append({"id": f"x{index}", "task": "asr", "audio": {"array": array, "sampling_rate": RATE, "path": None},
                     "source_text": text, "target_text": text, "source_lang": lang, "target_lang": lang})  # fmt: skip
    return rows


def trainer_args(tmp_path, **overrides):
    from transformers import Seq2SeqTrainingArguments

    defaults = dict(
        output_dir=str(tmp_path), per_device_train_batch_size=4, per_device_eval_batch_size=4, learning_rate=3e-3,
        max_steps=4, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, seed=0,
        remove_unused_columns=False, predict_with_generate=True, disable_tqdm=True,
    )  # fmt: skip
    return Seq2SeqTrainingArguments(**{**defaults, **overrides})


def test_collator_builds_speech_and_text_batches():
    from mu2slam_hf.training.hf_trainer import Mu2SlamSeq2SeqCollator

    processor = tiny_processor()
    config = tiny_model(processor).config
    examples = asr_examples(3)
    batch = Mu2SlamSeq2SeqCollator(processor, config, task="asr")(examples)
    assert set(batch) == {
        "input_features", "attention_mask", "src_lang_ids", "tgt_lang_ids", "tgt_modality_ids", "decoder_input_ids",
        "labels", "example_weights", "ctc_labels",
    }  # fmt: skip
    single = processor(audio=examples[1]["audio"]["array"], sampling_rate=RATE)
    frames = single["input_features"].shape[1]
    torch.testing.assert_close(batch["input_features"][1, :frames], single["input_features"][0])
    assert int(batch["attention_mask"][1].sum()) == frames
    assert batch["src_lang_ids"].tolist() == batch["tgt_lang_ids"].tolist() == [2, 1, 2]  # fr, de, fr
    assert processor.batch_decode(batch["labels"].clamp(min=0), skip_special_tokens=True)[1] == "die katze"
    assert int(batch["labels"][0, -1]) in (2, -100)  # eos, then -100 padding
    # CTC targets: the transcript without specials (eos), -100 padded
    ctc = batch["ctc_labels"][1]
    assert processor.tokenizer.decode(ctc[ctc >= 0].tolist()) == "die katze"
    assert "ctc_labels" not in Mu2SlamSeq2SeqCollator(processor, config, task="asr", ctc=False)(examples)
    # speed perturbation: each clip played at a drawn factor (torch's global generator), here always 2x faster
    fast = Mu2SlamSeq2SeqCollator(processor, config, task="asr", speed_perturbation=(2.0,))(examples)
    assert abs(int(fast["attention_mask"][1].sum()) - frames / 2) <= 2
    assert torch.equal(fast["labels"], batch["labels"])
    # silence padding: at most 0.2 s (20 frames) of silence before and after each clip
    padded = Mu2SlamSeq2SeqCollator(processor, config, task="asr", silence_padding_s=0.2)(examples)
    assert 0 <= int(padded["attention_mask"][1].sum()) - frames <= 40
    assert torch.equal(padded["labels"], batch["labels"])

    mt = [{"id": "m", "task": "mt", "source_text": "hello world", "target_text": "le chat", "source_lang": "en",
           "target_lang": "fr", "audio": None}]  # fmt: skip
    text_batch = Mu2SlamSeq2SeqCollator(processor, config)(mt)
    assert {"input_ids", "attention_mask", "src_lang_ids", "tgt_lang_ids", "labels"} <= set(text_batch)
    assert (text_batch["src_lang_ids"].item(), text_batch["tgt_lang_ids"].item()) == (0, 2)
    with pytest.raises(ValueError, match="ASR/AST examples only or MT"):
        Mu2SlamSeq2SeqCollator(processor, config)([*examples, *mt])


def test_trainer_collator_and_training_loop_build_the_same_batch_and_loss():
    """One fine-tuning path: the Seq2SeqTrainer collator and the Accelerate loop's instances + collator."""
    from mu2slam_hf.instances import InstanceBuilder, Mu2SlamCollator
    from mu2slam_hf.training.hf_trainer import Mu2SlamSeq2SeqCollator

    processor = tiny_processor()
    model = tiny_model(processor, ctc_loss_weight=0.3)
    examples = asr_examples(4)
    ast = [{**e, "task": "ast", "target_lang": "en", "target_text": "hello"} for e in asr_examples(2, seed=3)]
    for rows in (examples, ast):
        trainer_batch = Mu2SlamSeq2SeqCollator(processor, model.config)(rows)
        builder = InstanceBuilder(processor, model.config, stage="finetune", cache_features=False)
        step = {}
        for row in rows:
            step.setdefault(row["task"], []).append(row)
        loop_batch = Mu2SlamCollator(model.config)(builder.build(step, torch.Generator()))
        assert trainer_batch.keys() == loop_batch.keys()
        for key in trainer_batch:
            torch.testing.assert_close(trainer_batch[key], loop_batch[key], msg=key)
        with torch.no_grad():
            torch.testing.assert_close(model(**trainer_batch).loss, model(**loop_batch).loss)


def test_seq2seq_trainer_with_generate_returns_metrics(tmp_path):
    from transformers import Seq2SeqTrainer

    from mu2slam_hf.evaluation import char_error_rate, word_error_rate
    from mu2slam_hf.training.hf_trainer import Mu2SlamSeq2SeqCollator, decode_ids, make_compute_metrics

    processor = tiny_processor()
    model = tiny_model(processor, decoder_noise_ratio=0.06, apply_spec_augment=True)
    model.generation_config.max_new_tokens = 6
    train, dev = asr_examples(8), asr_examples(4, seed=1)
    collator = Mu2SlamSeq2SeqCollator(processor, model.config, task="asr")
    trainer = Seq2SeqTrainer(
        model=model, args=trainer_args(tmp_path), data_collator=collator, train_dataset=train, eval_dataset=dev,
        compute_metrics=make_compute_metrics(processor, "asr"),
    )  # fmt: skip
    result = trainer.train()
    assert np.isfinite(result.training_loss)
    metrics = trainer.evaluate()
    assert {"eval_loss", "eval_wer", "eval_cer"} <= set(metrics)
    # the metrics are those of the model's own generate with the batch's languages
    batch = collator(dev)
    ids = model.eval().generate(**batch, max_new_tokens=6)  # training-only keys are ignored by generate
    hypotheses, references = decode_ids(processor, ids), [e["target_text"] for e in dev]
    assert metrics["eval_wer"] == pytest.approx(word_error_rate(references, hypotheses))
    assert metrics["eval_cer"] == pytest.approx(char_error_rate(references, hypotheses))
    bleu = make_compute_metrics(processor, "mt", "fr")
    from transformers import EvalPrediction

    labels = processor.encode_targets(["le chat est assis sur la katze", "die katze sitzt"]).numpy()
    assert bleu(EvalPrediction(predictions=labels, label_ids=labels)) == pytest.approx({"bleu": 100.0, "chrf": 100.0})


def test_lora_train_merge_and_pipeline(tmp_path):
    from transformers import Seq2SeqTrainer, pipeline

    from mu2slam_hf.training.hf_trainer import Mu2SlamSeq2SeqCollator, add_lora, merge_lora

    processor = tiny_processor()
    base = tiny_model(processor)
    before = base.model.encoder.layers[0].self_attn.q_proj.weight.detach().clone()
    peft_model = add_lora(base, r=4, alpha=8, dropout=0.0)
    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    collator = Mu2SlamSeq2SeqCollator(processor, base.config, task="asr")
    args = trainer_args(tmp_path, max_steps=3, learning_rate=1e-2, predict_with_generate=False)
    Seq2SeqTrainer(model=peft_model, args=args, data_collator=collator, train_dataset=asr_examples(8)).train()

    audio = asr_examples(1, seed=3)[0]["audio"]["array"]
    inputs = processor(audio=audio, sampling_rate=RATE)
    generate_kwargs = {"src_lang": "fr", "tgt_lang": "fr", "max_new_tokens": 6, "num_beams": 1}
    peft_model.eval()
    peft_text = processor.batch_decode(peft_model.generate(**inputs, **generate_kwargs), skip_special_tokens=True)[0]

    merged = merge_lora(peft_model)
    assert type(merged).__name__ == "Mu2SlamForConditionalGeneration"
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    assert not torch.equal(merged.model.encoder.layers[0].self_attn.q_proj.weight, before)  # adapters were folded in
    asr = pipeline(
        "automatic-speech-recognition", model=merged.eval(), tokenizer=processor.tokenizer,
        feature_extractor=processor.feature_extractor,
    )  # fmt: skip
    assert asr(audio, generate_kwargs=generate_kwargs)["text"].strip() == peft_text.strip()
    merged.save_pretrained(tmp_path / "merged")
    reloaded = Mu2SlamForConditionalGeneration.from_pretrained(tmp_path / "merged").eval()
    again = processor.batch_decode(reloaded.generate(**inputs, **generate_kwargs), skip_special_tokens=True)[0]
    assert again == peft_text


# -------------------------------------------------------------------------------------- classification


def xnli_toy(count: int, seed: int) -> list[dict]:
    """Premise of random words; the label is which marker word opens the hypothesis (linearly separable)."""
    rng = np.random.default_rng(seed)
    vocabulary, markers = ["le", "chat", "est", "assis", "die", "katze"], ["ooo", "uuu", "www"]
    rows = []
    for index in range(count):
        label = int(rng.integers(3))
        premise = " ".join(rng.choice(vocabulary, size=int(rng.integers(2, 5))))
        hypothesis = f"{markers[label]} {' '.join(rng.choice(vocabulary, size=2))}"
        rows.append(
            {"premise": premise, "hypothesis": hypothesis, "label": label, "language": ["fr", "de"][index % 2]}
        )
    return rows


def test_sequence_classification_direct_finetuning(tmp_path):
    from transformers import Trainer, TrainingArguments

    from mu2slam_hf.training.hf_trainer import (
        Mu2SlamClassificationCollator,
        classification_model_from_pretrained,
        make_compute_metrics,
    )

    processor = tiny_processor(texts=["le chat est assis die katze ooo uuu www"])
    seq2seq = tiny_model(processor)
    seq2seq.save_pretrained(tmp_path / "seq2seq")
    torch.manual_seed(0)
    model = classification_model_from_pretrained(str(tmp_path / "seq2seq"), num_labels=3)
    torch.testing.assert_close(model.model.shared.weight, seq2seq.model.shared.weight)  # encoder carried over

    collator = Mu2SlamClassificationCollator(processor)
    train, dev = xnli_toy(96, seed=0), xnli_toy(48, seed=1)
    batch = collator(train[:2])
    assert set(batch) == {"input_ids", "attention_mask", "src_lang_ids", "labels"}
    assert int((batch["input_ids"][0] == processor.tokenizer.eos_token_id).sum()) == 2  # premise </s> hypothesis </s>
    args = TrainingArguments(
        output_dir=str(tmp_path / "cls"), per_device_train_batch_size=16, per_device_eval_batch_size=16,
        learning_rate=3e-3, num_train_epochs=6, logging_steps=1, save_strategy="no", report_to="none",
        use_cpu=True, seed=0, remove_unused_columns=False, disable_tqdm=True,
    )  # fmt: skip
    trainer = Trainer(
        model=model, args=args, data_collator=collator, train_dataset=train, eval_dataset=dev,
        compute_metrics=make_compute_metrics(processor, "classification"),
    )  # fmt: skip
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert after["eval_loss"] < before["eval_loss"]
    assert after["eval_accuracy"] > 60.0  # chance is 33.3


def test_the_old_module_path_imports_with_a_deprecation_warning():
    import importlib
    import sys

    from mu2slam_hf.training import hf_trainer

    sys.modules.pop("mu2slam_hf.finetuning", None)
    with pytest.warns(DeprecationWarning, match=r"mu2slam_hf\.training\.hf_trainer"):
        old = importlib.import_module("mu2slam_hf.finetuning")
    assert old.Mu2SlamSeq2SeqCollator is hf_trainer.Mu2SlamSeq2SeqCollator
    assert old.__all__ == hf_trainer.__all__
