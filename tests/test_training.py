"""The training loop: recipes, mixture -> instances -> forward wiring, loss going down, exact resumption,
interrupted saves, a 2-process CPU run, fine-tuning with LoRA and noise overrides, bf16 and checkpointing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CPU_ONLY, ON_CUDA, REPO_ROOT
from filelock import FileLock

from mu2slam_hf import Mu2SlamForConditionalGeneration, Mu2SlamProcessor
from mu2slam_hf.cli.train import finetune_main
from mu2slam_hf.data import TaskMixture, load_manifest
from mu2slam_hf.data.augmentation import AudioAugmentation
from mu2slam_hf.instances import Mu2SlamCollator, split_by_layout
from mu2slam_hf.training import (
    InstanceBuilder,
    InstanceStream,
    Mu2SlamTrainer,
    RecipeError,
    instance_loader,
    latest_checkpoint,
    load_recipe,
    recipe_from_dict,
    step_generator,
    transformer_lr,
)
from mu2slam_hf.training.assets import build_processor, load_preset
from mu2slam_hf.training.checkpointing import TRAINER_STATE_NAME
from mu2slam_hf.training.dev import (
    dev_chosen_asr_decoding,
    dev_chosen_ctc_weight,
    encoder_spread,
    warn_collapsed_encoder,
)
from mu2slam_hf.training.memory_allocator import find_allocator

TINY_RECIPE = REPO_ROOT / "configuration" / "recipes" / "pretrain-tiny.yaml"
# Two runs of the same recipe: on the CPU they agree to 1e-6. CUDA kernels are not bitwise deterministic (atomic adds
# in backward passes), so there the losses agree only to their last digits, and Adam turns a gradient that is pure
# rounding noise (the key projections' biases: softmax ignores a shift of every key) into full steps of lr.
SAME_RUN_LOSS = {"rel": 1e-4} if ON_CUDA else {"abs": 1e-6}
SAME_RUN_WEIGHT = {"rtol": 0, "atol": 1e-2 if ON_CUDA else 1e-6}
FAST = {
    "log_interval": 1,
    "eval_interval": 1000,
    "checkpoint_interval": 1000,
    "dev_examples_per_task": 2,
    "eval_max_new_tokens": 4,
    "speech_codebook": {"normalization_examples": 16},
    "examples_per_step": {"speech": 2, "text": 4, "asr": 1, "ast": 1, "mt": 1},
}


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A tiny espeak-ng corpus (number words in en/fr), built once and shared by the xdist workers."""
    from mu2slam_hf.data.synthetic import build_synthetic

    shared = tmp_path_factory.getbasetemp().parent
    out = shared / "training-corpus"
    with FileLock(str(shared / "training-corpus.lock")):
        if not (out / "summary.json").exists():
            build_synthetic(str(out), ("en", "fr"), num_numbers=24, use_fillets=False, num_workers=2)
    return str(out)


def tiny_recipe(**overrides):
    return load_recipe(TINY_RECIPE, {**FAST, **overrides})


def run(recipe, corpus, output_dir, resume=False, stop_after=None):
    trainer = Mu2SlamTrainer(recipe, corpus, str(output_dir), log_with=None, progress=False)
    return trainer.train(resume=resume, stop_after=stop_after)


@pytest.fixture(scope="session")
def pretrained(corpus, tmp_path_factory):
    """A 30-step pre-training run of the tiny preset: (result, output_dir)."""
    output_dir = tmp_path_factory.mktemp("pretrained")
    recipe = tiny_recipe(max_steps=30, optimizer={"name": "adam", "lr": 3e-3, "warmup_steps": 5})
    return run(recipe, corpus, output_dir), output_dir


# ---------------------------------------------------------------------------------------------- recipes


def test_recipe_rejects_unknown_keys_by_name():
    with pytest.raises(RecipeError, match=r"Unknown recipe key `optimizer.warmup`"):
        recipe_from_dict({"model": "configuration/models/tiny", "optimizer": {"warmup": 10}})
    with pytest.raises(RecipeError, match=r"Unknown recipe key `max_step`"):
        recipe_from_dict({"model": "configuration/models/tiny", "max_step": 10})


def test_recipe_old_ctc_weight_key_loads_as_the_ctc_loss_weight(tmp_path, caplog):
    """The CTC loss weight's old recipe key still loads, with a message naming the new one; both at once is an error."""
    path = tmp_path / "old.yaml"
    path.write_text(
        "stage: finetune\nmodel: configuration/models/tiny\nexamples_per_step: {asr: 2}\nctc_weight: 0.5\n"
    )
    with caplog.at_level("WARNING", logger="mu2slam_hf.training.recipe"):
        recipe = load_recipe(path)
    assert recipe.ctc_loss_weight == 0.5 and "is now `ctc_loss_weight`" in caplog.text
    assert load_recipe(path, {"ctc_weight": 0.2}).ctc_loss_weight == 0.2  # an override by the old name wins too
    with pytest.raises(RecipeError, match=r"`ctc_weight` is the old name of `ctc_loss_weight`"):
        recipe_from_dict({"model": "m", "ctc_weight": 0.5, "ctc_loss_weight": 0.5})


@pytest.mark.parametrize(
    "data, message",
    [
        ({"model": "m", "max_steps": "ten"}, r"max_steps: expected int, got 'ten'"),
        ({"model": "m", "mixed_precision": "fp8"}, r"mixed_precision: 'fp8' is not one of"),
        ({}, r"Set exactly one of `model`"),
        ({"model": "m", "examples_per_step": {"video": 1}}, r"unknown task\(s\) \['video'\]"),
        ({"model": "m", "stage": "finetune", "examples_per_step": {"speech": 4}}, r"labelled tasks only"),
        ({"model": "m", "optimizer": {"betas": [0.9]}}, r"optimizer.betas: expected 2 values"),
        ({"model": "m", "loss_weights": {"mt": "high"}}, r"loss_weights.mt: expected float"),
        ({"model": "m", "tokens_per_step": {"asr": 4000}}, r"tokens_per_step: \['asr'\] are not text tasks"),
        ({"model": "m", "seconds_per_step": {"mt": 40}}, r"seconds_per_step: \['mt'\] are not speech tasks"),
        ({"model": "m", "examples_per_step": {}}, r"every task has 0 examples per step"),
        ({"model": "m", "ema_decay": 1.0}, r"ema_decay must be in \(0, 1\)"),
        ({"model": "m", "bf16_weights": "yes"}, r"bf16_weights must be true, false or auto; got 'yes'"),
        (
            {"model": "m", "stage": "finetune", "examples_per_step": {"mt": 1}, "mt_source_mlm": 1.0},
            r"mt_source_mlm is the fraction of source words",
        ),
        ({"model": "m", "mt_source_mlm": 0.15}, r"mt_source_mlm is for fine-tuning"),
        ({"model": "m", "dataloader": {"num_workers": -1}}, r"num_workers must be >= 0"),
        ({"model": "m", "speed_perturbation": [0.9, 3.0]}, r"speed_perturbation: factors must be in \[0.5, 2.0\]"),
        ({"model": "m", "speed_perturbation": 1.1}, r"speed_perturbation: expected a list"),
        (
            {"model": "m", "stage": "finetune", "examples_per_step": {"mt": 1}, "speed_perturbation": [0.9, 1.1]},
            r"speed_perturbation: the recipe draws no speech task",
        ),
        ({"model": "m", "silence_padding_s": -1}, r"silence_padding_s is the longest silence"),
        ({"model": "m", "audio_augmentation": {"noise_probability": 0.5}}, r"audio_augmentation is a fine-tuning"),
        (
            {
                "model": "m",
                "stage": "finetune",
                "examples_per_step": {"asr": 1},
                "audio_augmentation": {"reverb_probability": 2},
            },
            r"reverb_probability is a probability in \[0, 1\]",
        ),
        (
            {
                "model": "m",
                "stage": "finetune",
                "examples_per_step": {"mt": 1},
                "audio_augmentation": {"gain_db": [-3, 3]},
            },
            r"audio_augmentation: the recipe draws no speech task",
        ),
        ({"model": "m", "silence_padding_s": 0.5}, r"silence_padding_s is a fine-tuning option"),
        ({"model": "m", "features": {"normalize_vars": True}}, r"set features.normalize_means: true as well"),
        ({"model": "m", "features": {"mel_floor": 0}}, r"features.mel_floor must be positive"),
        (
            {
                "model": "m",
                "stage": "finetune",
                "examples_per_step": {"asr": 1},
                "silence_padding_s": 0.5,
                "features": {"normalize_means": True},
            },
            r"silence_padding_s adds silence frames to features already normalised",
        ),
        (
            {"model": "m", "stage": "finetune", "examples_per_step": {"mt": 1}, "silence_padding_s": 0.5},
            r"silence_padding_s: the recipe draws no speech task",
        ),
    ],
)
def test_recipe_validation_errors_are_clear(data, message):
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict(data)


def test_feature_cache_with_workers_is_an_error_only_in_memory():
    recipe = recipe_from_dict({"model": "m", "dataloader": {"num_workers": 2}})
    with pytest.raises(RecipeError, match=r"Set dataloader.cache_features: false"):
        recipe.check_feature_cache(streaming=False)
    recipe.check_feature_cache(streaming=True)  # a streaming run caches nothing


def test_shipped_recipes_load():
    for path in (REPO_ROOT / "configuration" / "recipes").glob("*.yaml"):
        recipe = load_recipe(path)
        assert recipe.max_steps > 0, path


def test_transformer_schedule():
    assert transformer_lr(4000, 512, 4000, scale=1.0) == pytest.approx(512**-0.5 * 4000**-0.5)
    assert transformer_lr(100, 1024, 40_000, scale=3.0) == pytest.approx(3 * 1024**-0.5 * 100 * 40_000**-1.5)
    assert transformer_lr(160_000, 1024, 40_000, scale=3.0) == pytest.approx(3 * 1024**-0.5 * 160_000**-0.5)


@pytest.mark.parametrize("decay", ["linear", "cosine"])
def test_decays_to_zero_anneal_by_the_last_step_and_keep_the_warmup(decay):
    from mu2slam_hf.training.schedule import decay_factor, transformer_schedule

    factors = [decay_factor(step, 10, 100, decay) for step in range(1, 101)]
    assert factors[:10] == pytest.approx([step / 10 for step in range(1, 11)])  # the warmup is unchanged
    assert factors[10] == pytest.approx(1.0) and all(a >= b for a, b in zip(factors[10:-1], factors[11:], strict=True))
    assert 0.0 <= factors[-1] < 0.02 and factors[54] == pytest.approx(0.5, abs=0.02)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    scheduler = transformer_schedule(optimizer, 10, 100, decay)
    for _ in range(99):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(2.0 * factors[-1])
    with pytest.raises(ValueError, match="needs total_steps"):
        transformer_schedule(optimizer, 10, None, decay)
    with pytest.raises(RecipeError, match="optimizer.decay must be one of"):
        tiny_recipe(**{"optimizer.decay": "exponential"})


def test_constant_decay_holds_the_peak_after_the_warmup_without_a_run_length():
    from mu2slam_hf.training.schedule import decay_factor, transformer_schedule

    assert [decay_factor(step, 4, 10, "constant") for step in (1, 2, 4, 5, 10_000)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    transformer_schedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 4, None, "constant")


# --------------------------------------------------------------------------------------------- wiring


def test_mixture_step_to_instances_to_model_losses(corpus):
    recipe = tiny_recipe()
    sources = {task: load_manifest(corpus, "train", task) for task in recipe.examples_per_step}
    processor, config = build_processor(recipe, load_preset(recipe), [row for s in sources.values() for row in s])
    assert config.text_vocab_size == len(processor.tokenizer)
    assert processor.feature_extractor.do_normalize and processor.speech_codebook.codebook_size == config.codebook_size
    mixture = TaskMixture(sources, recipe.examples_per_step, recipe.language_temperature, seed=0)
    builder = InstanceBuilder(processor, config)
    instances = builder.build(mixture.next_batch(), step_generator(0, 0, 1))
    objectives = [i.objective for i in instances]
    assert objectives.count("speech_only") == 2 and objectives.count("text_only") == 4
    for task in ("asr", "ast", "mt"):  # forward, backward and two alignment rows per labelled example
        assert sum(i.task == task for i in instances) == 4
    assert sum(i.ctc_labels is not None for i in instances) == 1  # ASR forward only
    model = Mu2SlamForConditionalGeneration(config)
    groups = split_by_layout(instances)
    assert {g[0].layout for g in groups} == {(True, False), (False, True), (True, True)}
    for group in groups:
        loss = model(**Mu2SlamCollator(config)(group)).loss
        assert torch.isfinite(loss) and loss > 0
    again = builder.build({"speech": [sources["speech"][0]]}, step_generator(0, 0, 1))
    assert torch.equal(
        again[0].speech_mlm_mask,
        builder.build({"speech": [sources["speech"][0]]}, step_generator(0, 0, 1))[0].speech_mlm_mask,
    )


def test_batches_padded_to_a_multiple_give_the_same_losses(corpus):
    """The loop pads batches to `dataloader.pad_to_multiple_of` (fewer shapes for oneDNN to compile kernels for):
    every objective's loss stays what padding to the longest row gives."""
    recipe = tiny_recipe()
    assert recipe.dataloader.pad_to_multiple_of == 32
    sources = {task: load_manifest(corpus, "train", task) for task in recipe.examples_per_step}
    processor, config = build_processor(recipe, load_preset(recipe), [row for s in sources.values() for row in s])
    mixture = TaskMixture(sources, recipe.examples_per_step, recipe.language_temperature, seed=0)
    instances = InstanceBuilder(processor, config).build(mixture.next_batch(), step_generator(0, 0, 1))
    model = Mu2SlamForConditionalGeneration(config).eval()
    for group in split_by_layout(instances):
        longest, padded = Mu2SlamCollator(config)(group), Mu2SlamCollator(config, 32)(group)
        assert all(padded[k].shape[1] % 32 == 0 for k in ("input_features", "input_ids") if k in padded)
        with torch.no_grad():
            torch.testing.assert_close(model(**padded).loss, model(**longest).loss, rtol=1e-5, atol=1e-6)
    with pytest.raises(RecipeError, match=r"dataloader.pad_to_multiple_of must be a positive number"):
        recipe_from_dict({"model": "m", "dataloader": {"pad_to_multiple_of": 0}})


def test_finetuning_instances_have_no_mask_and_ctc_on_transcripts(corpus):
    recipe = tiny_recipe()
    sources = {task: load_manifest(corpus, "train", task) for task in ("asr", "ast", "mt")}
    processor, config = build_processor(recipe, load_preset(recipe), [row for s in sources.values() for row in s])
    step = {task: [sources[task][0], sources[task][1]] for task in sources}
    for ctc_ast_source in (False, True):
        builder = InstanceBuilder(processor, config, stage="finetune", ctc_ast_source=ctc_ast_source)
        instances = builder.build(step, step_generator(0, 0, 0))
        assert len(instances) == 6 and {i.objective for i in instances} == {"finetune"}
        for instance, example in zip(instances, [e for rows in step.values() for e in rows], strict=True):
            assert instance.speech_mlm_mask is None and instance.text_mlm_labels is None
            assert instance.input_ids is None or not bool((instance.input_ids == config.mask_token_id).any())
            transcript = {"asr": example["target_text"], "ast": example["source_text"] if ctc_ast_source else None}
            expected = transcript.get(example["task"])
            if expected is None:
                assert instance.ctc_labels is None
            else:  # the transcript's text tokens, no eos or other specials
                assert processor.tokenizer.decode(instance.ctc_labels.tolist()) == expected
    no_ctc = InstanceBuilder(processor, config, stage="finetune", ctc=False).build(step, step_generator(0, 0, 0))
    assert all(instance.ctc_labels is None for instance in no_ctc)


def test_mt_source_mlm_masks_a_span_of_source_words_in_training_only(corpus):
    """``mt_source_mlm``: the MT source loses one whole-word span to [MASK]/random/kept tokens, the encoder gets MLM
    targets there (and the model an MLM loss); the evaluation builder and a ratio of 0 leave the source whole."""
    recipe = tiny_recipe()
    rows = load_manifest(corpus, "train", "mt")
    processor, config = build_processor(recipe, load_preset(recipe), list(rows))
    example = max(rows, key=lambda row: len(row["source_text"].split()))
    builder = InstanceBuilder(processor, config, stage="finetune", mt_source_mlm=0.5)
    (masked,) = builder.build({"mt": [example]}, step_generator(0, 0, 3))
    (whole,) = builder.for_evaluation().build({"mt": [example]}, step_generator(0, 0, 3))
    source = processor.tokenizer(example["source_text"])["input_ids"]
    assert whole.input_ids.tolist() == source and whole.text_mlm_labels is None
    targets = masked.text_mlm_labels
    positions = (targets != -100).nonzero().flatten()
    assert len(positions) > 0 and targets[positions].tolist() == [source[i] for i in positions]
    assert positions.tolist() == list(range(positions[0], positions[-1] + 1))  # one contiguous span
    assert int(positions[-1]) < len(source) - 1  # eos is never masked
    assert masked.input_ids[targets == -100].tolist() == [t for i, t in enumerate(source) if targets[i] == -100]
    assert torch.equal(masked.labels, whole.labels)
    (plain,) = InstanceBuilder(processor, config, stage="finetune").build({"mt": [example]}, step_generator(0, 0, 3))
    assert plain.text_mlm_labels is None and plain.input_ids.tolist() == source
    outputs = Mu2SlamForConditionalGeneration(config)(**Mu2SlamCollator(config)([masked]))
    assert outputs.mlm_loss is not None and torch.isfinite(outputs.mlm_loss)
    assert torch.allclose(outputs.loss, outputs.decoder_loss + config.mlm_loss_weight * outputs.mlm_loss)


def test_speed_perturb_plays_a_tone_faster_and_shorter():
    """Kaldi's speed perturbation: a 440 Hz tone at speed f lasts 1/f as long and sounds at 440 f Hz."""
    from mu2slam_hf.data.audio import speed_perturb

    rate = 16000
    tone = np.sin(2 * np.pi * 440 * np.arange(rate) / rate).astype(np.float32)
    assert speed_perturb(tone, 1.0) is tone
    for factor in (0.9, 1.1):
        fast = speed_perturb(tone, factor)
        assert fast.dtype == np.float32 and abs(len(fast) - rate / factor) <= 2
        spectrum = np.abs(np.fft.rfft(fast[2000:-2000] * np.hanning(len(fast) - 4000)))
        peak = np.argmax(spectrum) * rate / (len(fast) - 4000)
        assert peak == pytest.approx(440 * factor, abs=3)


def test_speed_perturbation_draws_a_factor_per_clip_in_training_only(corpus):
    """Each clip is played at a factor drawn from the step's generator (the same generator, the same features), its
    frames shrink or grow by that factor, the cache keeps each (clip, factor), and evaluation hears the audio as is."""
    recipe = tiny_recipe()
    rows = load_manifest(corpus, "train", "asr")
    processor, config = build_processor(recipe, load_preset(recipe), list(rows))
    examples = [rows[i] for i in range(8)]
    plain = InstanceBuilder(processor, config, stage="finetune", cache_features=False)
    perturbed = InstanceBuilder(processor, config, stage="finetune", speed_perturbation=(0.8, 1.25))
    factors = perturbed.speed_factors(len(examples), step_generator(0, 0, 5))
    assert set(factors) == {0.8, 1.25}  # 8 draws of 2 factors, this seed
    first = perturbed.speech(examples, step_generator(0, 0, 5))
    again = InstanceBuilder(processor, config, stage="finetune", speed_perturbation=(0.8, 1.25), cache_features=False)
    for (features, _), (same, _) in zip(first, again.speech(examples, step_generator(0, 0, 5)), strict=True):
        assert torch.equal(features, same)
    for (features, _), (reference, _), factor in zip(first, plain.speech(examples), factors, strict=True):
        assert abs(features.shape[0] - reference.shape[0] / factor) <= 2
    assert set(perturbed.cache) == {(e["audio"]["path"], f) for e, f in zip(examples, factors, strict=True)}
    evaluation = perturbed.for_evaluation()
    assert evaluation.speed_perturbation == () and perturbed.speed_perturbation == (0.8, 1.25)
    for (features, _), (reference, _) in zip(evaluation.speech(examples), plain.speech(examples), strict=True):
        assert torch.equal(features, reference)
    precomputed = [{**examples[0], "input_features": first[0][0].numpy()}]
    with pytest.raises(ValueError, match="precomputed `input_features`"):
        InstanceBuilder(processor, config, stage="finetune", speed_perturbation=(0.9, 1.1)).speech(precomputed)


def test_audio_augmentation_corrupts_drawn_training_clips_and_keeps_the_cache_clean(corpus):
    """The step's generator decides which clips are corrupted (the same generator, the same features); corrupted clips
    keep their length and are featurised afresh, clean ones match the plain features and come from the cache, and
    evaluation hears the audio as it is. Without augmentation nothing is drawn from the generator."""
    recipe = tiny_recipe()
    rows = load_manifest(corpus, "train", "asr")
    processor, config = build_processor(recipe, load_preset(recipe), list(rows))
    examples = [rows[i] for i in range(8)]
    plain = InstanceBuilder(processor, config, stage="finetune", cache_features=False).speech(examples)
    augmentation = AudioAugmentation(noise_probability=0.5, reverb_probability=0.3)
    builder = InstanceBuilder(processor, config, stage="finetune", audio_augmentation=augmentation)
    first = builder.speech(examples, step_generator(0, 0, 3))
    again = InstanceBuilder(processor, config, stage="finetune", audio_augmentation=augmentation, cache_features=False)
    for (features, _), (same, _) in zip(first, again.speech(examples, step_generator(0, 0, 3)), strict=True):
        assert torch.equal(features, same)
    changed = [not torch.equal(f, p) for (f, _), (p, _) in zip(first, plain, strict=True)]
    assert 0 < sum(changed) < len(examples)
    assert all(f.shape == p.shape for (f, _), (p, _) in zip(first, plain, strict=True))
    assert set(builder.cache) == {(e["audio"]["path"], 1.0) for e, c in zip(examples, changed, strict=True) if not c}
    for (features, _), (reference, _) in zip(builder.for_evaluation().speech(examples), plain, strict=True):
        assert torch.equal(features, reference)
    generator = step_generator(0, 0, 3)
    InstanceBuilder(processor, config, stage="finetune", audio_augmentation=AudioAugmentation()).speech(
        examples, generator
    )
    assert torch.equal(generator.get_state(), step_generator(0, 0, 3).get_state())


def test_silence_padding_surrounds_each_training_clip_with_silence_frames(corpus):
    """Each training clip gets 0..s seconds of the extractor's silence frame before and after its own frames (drawn
    from the step's generator: the same generator, the same lengths), which stay as they are; the cache keeps the
    clips unpadded, and evaluation hears them as they are. Pre-training refuses it."""
    recipe = tiny_recipe()
    rows = load_manifest(corpus, "train", "asr")
    processor, config = build_processor(recipe, load_preset(recipe), list(rows))
    examples = [rows[i] for i in range(8)]
    plain = InstanceBuilder(processor, config, stage="finetune", cache_features=False).speech(examples)
    padded = InstanceBuilder(processor, config, stage="finetune", silence_padding_s=0.3)
    first = padded.speech(examples, step_generator(0, 0, 5))
    extractor = processor.feature_extractor
    silence = extractor(np.zeros(16000, np.float32), sampling_rate=16000, return_tensors="pt")["input_features"][0, 50]
    most = round(0.3 * 16000 / extractor.hop_length)
    added = []
    for (features, _), (reference, _) in zip(first, plain, strict=True):
        extra = features.shape[0] - reference.shape[0]
        before = next(i for i in range(features.shape[0]) if not torch.equal(features[i], silence))
        assert 0 <= before <= most and 0 <= extra - before <= most
        assert torch.equal(features[before : before + reference.shape[0]], reference)
        assert torch.equal(features[:before], silence.expand(before, -1))
        assert torch.equal(features[before + reference.shape[0] :], silence.expand(extra - before, -1))
        added.append(extra)
    assert len(set(added)) > 1  # lengths drawn per clip
    again = padded.speech(examples, step_generator(0, 0, 5))
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(first, again, strict=True))
    assert all(
        torch.equal(padded.cache[(e["audio"]["path"], 1.0)][0], r) for e, (r, _) in zip(examples, plain, strict=True)
    )
    evaluation = padded.for_evaluation()
    assert evaluation.silence_padding_s == 0.0 and padded.silence_padding_s == 0.3
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(evaluation.speech(examples), plain, strict=True))
    with pytest.raises(ValueError, match="silence_padding_s is for fine-tuning"):
        InstanceBuilder(processor, config, stage="pretrain", silence_padding_s=0.3)


def assert_same_instances(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        for name, value in vars(a).items():
            other = getattr(b, name)
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, other), name
            else:
                assert value == other, name


@pytest.mark.parametrize("speed_perturbation", [(), (0.9, 1.0, 1.1)])
def test_worker_processes_build_the_draws_of_the_training_process(corpus, speed_perturbation):
    """Draws built in 2 DataLoader workers (each stepping its own copy of the mixture) are the in-process draws:
    same examples, same masks, same speed factors, same mixture states; also when the stream starts from a
    resumed state."""
    recipe = tiny_recipe()
    sources = {task: load_manifest(corpus, "train", task) for task in recipe.examples_per_step}
    processor, config = build_processor(recipe, load_preset(recipe), [row for s in sources.values() for row in s])
    builder = InstanceBuilder(processor, config, cache_features=False, speed_perturbation=speed_perturbation)

    def draws(workers, state=None, count=5):
        mixture = TaskMixture(sources, recipe.examples_per_step, recipe.language_temperature, seed=3)
        if state is not None:
            mixture.load_state_dict(state)
        loader = instance_loader(InstanceStream(mixture, builder, seed=3, process_index=1), workers)
        return [next(loader) for _ in range(count)]

    in_process, in_workers = draws(0), draws(2)
    assert [d.index for d in in_workers] == [0, 1, 2, 3, 4]
    for ours, theirs in zip(in_process, in_workers, strict=True):
        assert_same_instances(ours.instances, theirs.instances)
        assert ours.mixture_state == theirs.mixture_state
    resumed = draws(2, state=in_process[1].mixture_state, count=3)
    assert [d.index for d in resumed] == [2, 3, 4]
    for ours, theirs in zip(in_process[2:], resumed, strict=True):
        assert_same_instances(ours.instances, theirs.instances)


# ------------------------------------------------------------------------------------------------ runs


def test_short_run_lowers_every_task_loss_and_saves_loadable_folders(pretrained):
    result, output_dir = pretrained
    assert result.step == 30
    for task in ("speech", "text", "asr", "ast", "mt"):
        losses = [entry[f"loss/{task}"] for entry in result.log]
        first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
        assert last < first - 0.5, (task, first, last)
    model = Mu2SlamForConditionalGeneration.from_pretrained(output_dir)
    processor = Mu2SlamProcessor.from_pretrained(output_dir)
    processor.check_model_config(model.config)
    dev = json.loads((output_dir / "dev_results.json").read_text())
    assert dev[-1]["step"] == 30 and {"dev/asr_cer", "dev/ast_bleu", "dev/loss/speech"} <= set(dev[-1])
    # The ASR decoder dev scored best is the saved model's default for ASR.
    assert model.generation_config.asr_ctc_weight == dev_chosen_ctc_weight(dev[-1])
    assert latest_checkpoint(output_dir).name == "checkpoint-30"


def test_the_dev_chosen_asr_decoder_becomes_evaluation_options():
    """The saved choice (`asr_ctc_weight`, with or without the CTC LM) maps to the `evaluate_model` options that
    decode the same way; joint decoding when a model has no choice."""
    assert dev_chosen_asr_decoding({"asr_ctc_weight": 0.0}) == {"decoder": "attention", "ctc_weight": 0.0}
    assert dev_chosen_asr_decoding({"asr_ctc_weight": 0.3}) == {"decoder": "attention", "ctc_weight": 0.3}
    assert dev_chosen_asr_decoding({"asr_ctc_weight": 1.0, "asr_lm_weight": 0.5}) == {"decoder": "ctc"}
    assert dev_chosen_asr_decoding({"asr_ctc_weight": 1.0}) == {"decoder": "ctc", "lm_weight": 0.0}
    assert dev_chosen_asr_decoding({}) == {"decoder": "attention", "ctc_weight": 0.3}


def test_resume_gives_the_same_next_losses(corpus, tmp_path):
    recipe = tiny_recipe(
        max_steps=8, checkpoint_interval=4, model_overrides={"decoder_dropout": 0.1}, speed_perturbation=[0.9, 1.1]
    )
    straight = run(recipe, corpus, tmp_path / "straight")
    interrupted = tmp_path / "interrupted"
    run(recipe, corpus, interrupted, stop_after=6)  # "killed" after step 6: the last checkpoint is step 4
    saved = json.loads((interrupted / "checkpoint-4" / TRAINER_STATE_NAME).read_text())["train_seconds"]
    resumed = run(recipe, corpus, interrupted, resume=True)
    expected = {e["step"]: e for e in straight.log}
    assert [e["step"] for e in resumed.log] == [5, 6, 7, 8]
    for entry in resumed.log:
        for key in ("loss", "loss/speech", "loss/text", "loss/asr", "loss/ast", "loss/mt", "grad_norm", "lr"):
            assert entry[key] == pytest.approx(expected[entry["step"]][key], **SAME_RUN_LOSS), (entry["step"], key)
    log = [json.loads(line) for line in (interrupted / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == list(range(1, 9))
    # The training time (what max_train_minutes limits) goes on from the checkpoint's, not from 0.
    assert 0 < saved == log[3]["train_seconds"] < log[4]["train_seconds"]


def test_a_run_with_worker_processes_trains_and_resumes_as_one_without(corpus, tmp_path):
    """dataloader.num_workers only moves where the draws are built: the losses of every step are those of an
    in-process run, and a run interrupted and resumed with workers continues them exactly."""
    recipe = tiny_recipe(max_steps=6, checkpoint_interval=3, dataloader={"cache_features": False})
    in_process = run(recipe, corpus, tmp_path / "in-process")
    workers = tiny_recipe(max_steps=6, checkpoint_interval=3, dataloader={"cache_features": False, "num_workers": 2})
    interrupted = tmp_path / "workers"
    run(workers, corpus, interrupted, stop_after=4)  # the last checkpoint is step 3
    resumed = run(workers, corpus, interrupted, resume=True)
    assert [e["step"] for e in resumed.log] == [4, 5, 6]
    log = [json.loads(line) for line in (interrupted / "train_log.jsonl").read_text().splitlines()]
    for ours, theirs in zip(in_process.log, log, strict=True):
        for key in ("loss", "loss/speech", "loss/text", "loss/asr", "loss/ast", "loss/mt", "grad_norm"):
            assert theirs[key] == pytest.approx(ours[key], **SAME_RUN_LOSS), (ours["step"], key)


def test_weight_average_follows_the_warmed_up_ema_by_hand():
    from mu2slam_hf.training.averaging import WeightAverage

    model = torch.nn.Linear(3, 2)
    average = WeightAverage(model, decay=0.9)
    expected = model.weight.detach().clone()
    for updates_before in range(40):
        with torch.no_grad():
            model.weight.add_(torch.randn_like(model.weight))
        average.update_parameters(model)
        # The first update copies; after n updates the decay is min(0.9, (1 + n) / (10 + n)).
        decay = min(0.9, (1 + updates_before) / (10 + updates_before)) if updates_before else 0.0
        expected = decay * expected + (1 - decay) * model.weight.detach()
    torch.testing.assert_close(average.module.weight, expected)
    assert not average.module.weight.requires_grad and not average.module.training


def test_weight_average_is_what_a_run_evaluates_saves_and_resumes(corpus, tmp_path):
    from safetensors.torch import load_file

    recipe = tiny_recipe(max_steps=8, checkpoint_interval=4, ema_decay=0.8)
    run(recipe, corpus, tmp_path / "straight")
    interrupted = tmp_path / "interrupted"
    run(recipe, corpus, interrupted, stop_after=6)
    run(recipe, corpus, interrupted, resume=True)
    straight, resumed = (load_file(folder / "model.safetensors") for folder in (tmp_path / "straight", interrupted))
    assert straight.keys() == resumed.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], **SAME_RUN_WEIGHT, msg=name)
    # The saved model is the average, not the last iterate (which the training state keeps for resuming).
    raw = load_file(tmp_path / "straight" / "checkpoint-8" / "training_state" / "model.safetensors")
    assert any(not torch.equal(raw[name], straight[name]) for name in straight if name in raw)
    dev = json.loads((tmp_path / "straight" / "dev_results.json").read_text())
    assert dev[-1]["step"] == 8
    # A run saved without an average cannot resume one: it says how to go on.
    plain = tmp_path / "plain"
    run(tiny_recipe(max_steps=4, checkpoint_interval=2), corpus, plain, stop_after=2)
    with pytest.raises(RecipeError, match="saved without a weight average"):
        run(tiny_recipe(max_steps=4, checkpoint_interval=2, ema_decay=0.8), corpus, plain, resume=True)


def test_a_save_killed_midway_leaves_the_previous_checkpoint(corpus, tmp_path):
    recipe = tiny_recipe(max_steps=4, checkpoint_interval=2, keep_checkpoints=1)

    class Crashing(Mu2SlamTrainer):
        def save_model_and_processor(self, folder):
            super().save_model_and_processor(folder)
            if "checkpoint-4" in str(folder):
                raise KeyboardInterrupt("killed while saving")

    with pytest.raises(KeyboardInterrupt):
        Crashing(recipe, corpus, str(tmp_path), log_with=None, progress=False).train()
    assert latest_checkpoint(tmp_path).name == "checkpoint-2"
    assert not (tmp_path / "checkpoint-4").exists()
    Mu2SlamForConditionalGeneration.from_pretrained(tmp_path / "checkpoint-2")
    Mu2SlamProcessor.from_pretrained(tmp_path / "checkpoint-2")
    resumed = run(recipe, corpus, tmp_path, resume=True)
    assert [e["step"] for e in resumed.log] == [3, 4]
    assert sorted(p.name for p in tmp_path.iterdir() if "checkpoint" in p.name) == ["checkpoint-4"]


@pytest.mark.slow
def test_two_process_cpu_run_completes_and_its_checkpoint_loads(corpus, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), **CPU_ONLY}
    command = [
        str(Path(sys.executable).with_name("accelerate")), "launch",
        "--config_file", str(REPO_ROOT / "configuration" / "accelerate" / "cpu_ddp.yaml"),
        "--main_process_port", "29533",
        str(REPO_ROOT / "training_scripts" / "pretrain.py"),
        "--recipe", str(TINY_RECIPE), "--data", corpus, "--output_dir", str(tmp_path),
        "--max_steps", "3", "--no_progress", "--no_tensorboard",
        "--set", "checkpoint_interval=2", "--set", "dev_examples_per_task=2", "--set", "eval_max_new_tokens=4",
        "--set", "speech_codebook.normalization_examples=16",
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    if find_allocator() is not None:  # the launched workers re-executed themselves onto it
        assert "memory allocator: " in done.stderr and "(preloaded)" in done.stderr, done.stderr[-3000:]
    state = tmp_path / "checkpoint-3" / "training_state"
    assert {"process_state_0.json", "process_state_1.json"} <= {p.name for p in state.iterdir()}
    assert json.loads((tmp_path / "checkpoint-3" / "trainer_state.json").read_text())["num_processes"] == 2
    Mu2SlamForConditionalGeneration.from_pretrained(tmp_path / "checkpoint-3")
    Mu2SlamForConditionalGeneration.from_pretrained(tmp_path)


def test_features_recipe_builds_the_extractor_and_a_checkpoint_keeps_its_own(pretrained, corpus, tmp_path):
    """A preset run builds its feature extractor with the recipe's ``features``; a fine-tuning run that asks for
    other features than its checkpoint's is refused before anything is written, and per-clip normalisation cannot
    take silence padding (its frames would need the clip's statistics)."""
    recipe = tiny_recipe(features={"normalize_means": True, "mel_floor": 1e-6})
    rows = load_manifest(corpus, "train", "asr")
    processor, config = build_processor(recipe, load_preset(recipe), list(rows))
    extractor = processor.feature_extractor
    assert (extractor.normalize_means, extractor.normalize_vars, extractor.mel_floor) == (True, False, 1e-6)
    with pytest.raises(ValueError, match="silence_padding_s adds silence frames"):
        InstanceBuilder(processor, config, stage="finetune", silence_padding_s=0.3)
    _, init = pretrained
    with pytest.raises(SystemExit, match=r"RecipeError: features.normalize_means: True, but .* was trained with "):
        finetune_main([
            "--recipe", str(REPO_ROOT / "configuration" / "recipes" / "gradual-stage1.yaml"), "--init", str(init),
            "--data", corpus, "--output_dir", str(tmp_path / "run"), "--max_steps", "2", "--no_progress",
            "--no_tensorboard", "--set", "features.normalize_means=true",
        ])  # fmt: skip
    assert not any((tmp_path / "run").glob("*.safetensors"))


def test_stage2_mt_recipe_moves_to_subwords_trains_mt_alone_and_chooses_its_decoding(pretrained, corpus, tmp_path):
    """The shipped MT stage 2 recipe from a character model: a Unigram tokenizer replaces the characters (the
    output rows follow), only MT rows are drawn, and the decoding is chosen on the dev MT rows."""
    _, init = pretrained
    finetune_main([
        "--recipe", str(REPO_ROOT / "configuration" / "recipes" / "gradual-stage2-mt.yaml"), "--init", str(init),
        "--data", corpus, "--output_dir", str(tmp_path), "--max_steps", "3", "--no_progress", "--no_tensorboard",
        "--set", "tokenizer.vocab_size=60", "--set", "tokens_per_step.mt=64", "--set", "dev_examples_per_task=2",
        "--set", "eval_max_new_tokens=4", "--set", "mixed_precision='no'",
    ])  # fmt: skip
    processor = Mu2SlamProcessor.from_pretrained(tmp_path)
    model = Mu2SlamForConditionalGeneration.from_pretrained(tmp_path)
    old = Mu2SlamProcessor.from_pretrained(init).tokenizer
    assert model.config.text_vocab_size == len(processor.tokenizer) != len(old)
    assert any(len(piece.lstrip("\u2581")) > 1 for piece in processor.tokenizer.tokenize("twenty three"))
    logged = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert {key for row in logged for key in row if key.startswith("loss/")} == {"loss/mt"}
    fit = json.loads((tmp_path / "translation_decoding_fit.json").read_text())
    assert model.generation_config.translation_decoding == fit["chosen"]


def test_finetune_with_lora_and_noise_overrides_saves_a_merged_model(pretrained, corpus, tmp_path):
    _, init = pretrained
    finetune_main([
        "--recipe", str(REPO_ROOT / "configuration" / "recipes" / "gradual-stage1.yaml"), "--init", str(init),
        "--data", corpus, "--output_dir", str(tmp_path), "--max_steps", "2", "--lora", "--lora_r", "4",
        "--decoder_noise_ratio", "0.06", "--spec_augment", "--no_progress", "--no_tensorboard",
        "--set", "dev_examples_per_task=2", "--set", "eval_max_new_tokens=4", "--set", "ema_decay=0.9",
    ])  # fmt: skip
    model = Mu2SlamForConditionalGeneration.from_pretrained(tmp_path)  # the merged weight average
    assert model.config.decoder_noise_ratio == 0.06 and model.config.apply_spec_augment is True
    dev = json.loads((tmp_path / "dev_results.json").read_text())
    assert model.generation_config.asr_ctc_weight == dev_chosen_ctc_weight(dev[-1])
    assert not any("lora" in name for name in model.state_dict())
    base = Mu2SlamForConditionalGeneration.from_pretrained(init)
    changed = [n for n, p in model.state_dict().items() if not torch.equal(p, base.state_dict()[n])]
    assert changed and all(n.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "out_proj.weight",
                                       "fc1.weight", "fc2.weight")) for n in changed)  # fmt: skip


def test_bf16_autocast_and_gradient_checkpointing(corpus, tmp_path):
    reference = run(tiny_recipe(max_steps=2), corpus, tmp_path / "fp32").log
    checkpointed = run(tiny_recipe(max_steps=2, gradient_checkpointing=True), corpus, tmp_path / "gc").log
    bf16 = run(tiny_recipe(max_steps=2, mixed_precision="bf16"), corpus, tmp_path / "bf16").log
    for step in range(2):
        assert checkpointed[step]["loss"] == pytest.approx(reference[step]["loss"], abs=1e-5)
        assert bf16[step]["loss"] == pytest.approx(reference[step]["loss"], rel=0.02)


def test_bf16_weights_keep_updates_below_bf16_resolution_in_the_fp32_masters():
    from mu2slam_hf.training.bf16_weights import Bf16Weights

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))  # the second gets no gradient
    weights = Bf16Weights(model, None, torch.device("cpu"))
    assert all(p.dtype == torch.bfloat16 for p in weights.module.parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    start = model[0].weight.detach().clone()
    for _ in range(10):
        weights.module[0](torch.ones(2, 4, dtype=torch.bfloat16)).sum().backward()
        weights.gradients_to_master()
        assert weights.module[0].weight.grad is None and model[1].weight.grad is None
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        weights.weights_from_master()
    # Each step moves every weight by 2e-4, under half of bf16's spacing at these weights: weights kept in bf16 alone
    # would not move. The masters took all ten steps; the copy is their rounding.
    assert model[0].weight.dtype == torch.float32
    torch.testing.assert_close(model[0].weight.detach(), start - 10 * 2e-4, rtol=0, atol=1e-6)
    assert torch.equal(weights.module[0].weight, model[0].weight.detach().to(torch.bfloat16))


def test_bf16_weights_train_as_autocast_saves_fp32_and_resume_exactly(corpus, tmp_path):
    """A run with ``bf16_weights`` (forward and backward in a bf16 copy, the optimizer on the fp32 model) gives the
    losses of bf16 autocast alone up to bf16 rounding, saves fp32 weights, and resumes to the same losses."""
    from safetensors.torch import load_file

    def recipe(**overrides):
        return tiny_recipe(max_steps=4, checkpoint_interval=2, mixed_precision="bf16", **overrides)

    autocast = run(recipe(bf16_weights=False), corpus, tmp_path / "autocast").log
    straight = run(recipe(bf16_weights=True), corpus, tmp_path / "straight").log
    for ours, theirs in zip(straight, autocast, strict=True):
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=2e-3), ours["step"]
    saved = load_file(tmp_path / "straight" / "model.safetensors")
    assert {tensor.dtype for tensor in saved.values()} == {torch.float32}
    interrupted = tmp_path / "interrupted"
    run(recipe(bf16_weights=True), corpus, interrupted, stop_after=3)  # the last checkpoint is step 2
    resumed = run(recipe(bf16_weights=True), corpus, interrupted, resume=True).log
    assert [e["step"] for e in resumed] == [3, 4]
    for entry in resumed:
        for key in ("loss", "grad_norm"):
            assert entry[key] == pytest.approx(straight[entry["step"] - 1][key], **SAME_RUN_LOSS), (entry["step"], key)
    with pytest.raises(RecipeError, match="bf16_weights: true needs bf16 autocast"):
        run(tiny_recipe(max_steps=1, mixed_precision="no", bf16_weights=True), corpus, tmp_path / "fp32")


@pytest.mark.parametrize(
    ("flags", "speedup", "expected"),
    [
        (set(), None, "no"),  # AVX2 only: emulated bf16, not even measured
        ({"avx512_bf16"}, 4.7, "bf16"),  # an AMD EPYC with AVX512-BF16
        ({"avx512_bf16"}, 0.52, "no"),  # an Intel Xeon whose bf16 products run at half the fp32 speed
        ({"amx_bf16", "avx512_bf16"}, 1.2, "no"),
    ],
)
def test_auto_mixed_precision_measures_bf16_on_cpus_with_the_flags(monkeypatch, flags, speedup, expected):
    from mu2slam_hf.training import loop

    measured = []
    monkeypatch.setattr(loop.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(loop, "cpu_flags", lambda: flags | {"avx2"})
    monkeypatch.setattr(loop, "cpu_bf16_speedup", lambda: measured.append(1) or speedup)
    loop.auto_mixed_precision.cache_clear()
    try:
        precision, reason = loop.auto_mixed_precision()
    finally:
        loop.auto_mixed_precision.cache_clear()
    assert precision == expected
    assert len(measured) == (1 if flags else 0)
    assert (f"{speedup:.2f}x" in reason) if flags else ("emulated" in reason)


def test_cpu_bf16_speedup_is_a_ratio_of_timings():
    from mu2slam_hf.training.loop import cpu_bf16_speedup

    assert 0 < cpu_bf16_speedup(size=64, repeats=1) < 1000


def test_language_id_recipe_trains_only_the_head_of_a_frozen_model(pretrained, corpus, tmp_path):
    _, init = pretrained
    finetune_main([
        "--recipe", str(REPO_ROOT / "configuration" / "recipes" / "language-id.yaml"), "--init", str(init),
        "--data", corpus, "--output_dir", str(tmp_path), "--max_steps", "30", "--no_progress", "--no_tensorboard",
        "--set", "examples_per_step.asr=4", "--set", "optimizer.lr=3e-3", "--set", "log_interval=1",
        "--set", "eval_interval=30", "--set", "dev_examples_per_task=8", "--set", "checkpoint_interval=30",
    ])  # fmt: skip
    model = Mu2SlamForConditionalGeneration.from_pretrained(tmp_path)
    base = Mu2SlamForConditionalGeneration.from_pretrained(init)
    assert model.config.language_id_head and base.language_id_head is None
    assert model.config.language_id_all_layers and model.language_id_head.layer_weights.abs().sum() > 0  # mixed
    assert all(torch.equal(p, model.state_dict()[n]) for n, p in base.state_dict().items())  # ASR/AST unchanged
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    first, last = sum(e["language_id_loss"] for e in log[:5]) / 5, sum(e["language_id_loss"] for e in log[-5:]) / 5
    assert last < first and "loss/asr" not in log[-1]  # no decoder pass
    dev = json.loads((tmp_path / "dev_results.json").read_text())[-1]
    assert "dev/language_id_accuracy" in dev and "dev/asr_cer" not in dev


def test_retrieval_recipe_trains_a_dual_encoder_that_evaluates(pretrained, corpus, tmp_path):
    """The shipped retrieval recipe on a pre-trained folder, with translation pairs beside the speech: the
    contrastive loss falls, dev reports Recall@k (no decoding), the folder loads as the dual encoder, and
    evaluate.py --tasks retrieval scores it."""
    from mu2slam_hf import Mu2SlamForRetrieval

    _, init = pretrained
    output_dir = tmp_path / "retrieval"
    finetune_main([
        "--recipe", str(REPO_ROOT / "configuration" / "recipes" / "retrieval.yaml"), "--init", str(init),
        "--data", corpus, "--output_dir", str(output_dir), "--max_steps", "30", "--no_progress", "--no_tensorboard",
        "--set", "seconds_per_step.asr=16", "--set", "examples_per_step.mt=4", "--set", "optimizer.lr=2e-3",
        "--set", "log_interval=1",
        "--set", "eval_interval=30", "--set", "dev_examples_per_task=8",
    ])  # fmt: skip
    log = [json.loads(line) for line in (output_dir / "train_log.jsonl").read_text().splitlines()]
    first, last = sum(e["retrieval_loss"] for e in log[:5]) / 5, sum(e["retrieval_loss"] for e in log[-5:]) / 5
    assert last < 0.85 * first and "loss/asr" not in log[-1]
    assert all(e["text_tokens_per_second"] > 0 and e["speech_seconds_per_second"] > 0 for e in log)
    dev = json.loads((output_dir / "dev_results.json").read_text())[-1]
    assert 0 <= dev["dev/retrieval_s2t_r1"] <= dev["dev/retrieval_s2t_r5"] <= 100 and "dev/asr_cer" not in dev
    model = Mu2SlamForRetrieval.from_pretrained(output_dir)
    base = Mu2SlamForConditionalGeneration.from_pretrained(init)
    assert not torch.equal(model.model.encoder.layers[0].ffn1.fc1.weight, base.model.encoder.layers[0].ffn1.fc1.weight)

    from mu2slam_hf.cli import evaluate

    output = tmp_path / "eval.json"
    argv = ["--model", str(output_dir), "--data", corpus, "--split", "dev", "--tasks", "retrieval"]
    assert evaluate.main([*argv, "--retrieval_candidates", "20", "--output", str(output)]) == 0
    results = json.loads(output.read_text())
    assert results["retrieval_candidates"] == 20
    names = {m["name"] for m in results["metrics"] if m["task"] == "retrieval"}
    assert names == {"s2t_r1", "s2t_r5", "s2t_r10", "t2s_r1", "t2s_r5", "t2s_r10"}
    assert "## RETRIEVAL S2T_R1" in output.with_suffix(".md").read_text()
    with pytest.raises(SystemExit, match="retrieval goes alone"):
        evaluate.main([*argv[:-1], "retrieval,asr"])
    with pytest.raises(SystemExit, match="below the .* texts the split already has"):
        evaluate.main([*argv, "--retrieval_candidates", "1"])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"language_id_only": True}, "set `language_id_weight`"),
        ({"language_id_only": True, "language_id_weight": 1.0, "examples_per_step": {"mt": 2}}, "speech only"),
        ({"language_id_weight": -1.0}, "language_id_weight must be >= 0"),
        ({"retrieval": True, "examples_per_step": {"mt": 2}}, "retrieval: draw asr or ast rows too"),
        ({"retrieval": True, "examples_per_step": {"asr": 2, "mt": 2}, "mt_source_mlm": 0.15}, "mt_source_mlm"),
        ({"retrieval": True, "ctc_loss_weight": 0.3}, r"\['ctc_loss_weight'\] belong to the seq2seq model"),
        ({"retrieval": True, "stage": "pretrain"}, "retrieval: the dual encoder is trained in `stage: finetune`"),
    ],
)
def test_language_id_recipe_errors(data, message):
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict({"stage": "finetune", "model": "m", "examples_per_step": {"asr": 2}, **data})


def test_trainable_modules_that_name_nothing_are_refused(corpus, tmp_path):
    recipe = tiny_recipe(max_steps=1, trainable_modules=["language_head"])
    with pytest.raises(RecipeError, match=r"\['language_head'\] name no parameter.*'language_id_head'|ctc_head"):
        run(recipe, corpus, tmp_path)


def test_a_time_limit_stops_every_process_after_the_same_step():
    """Each process measures its own training time; with a time limit they must agree (the slowest's time), or one
    stops while the others wait in the next step's gradient all-reduce forever."""
    from types import SimpleNamespace

    from mu2slam_hf.training.loop import Mu2SlamTrainer

    class TwoProcesses:
        num_processes, device = 2, torch.device("cpu")

        def gather(self, tensor):  # the other process has trained 2 s longer
            return torch.cat([tensor, tensor + 2.0])

    limited = SimpleNamespace(recipe=SimpleNamespace(max_train_minutes=1.0), accelerator=TwoProcesses())
    assert Mu2SlamTrainer._agreed_seconds(limited, 59.0) == 61.0
    assert Mu2SlamTrainer._out_of_time(SimpleNamespace(recipe=limited.recipe, train_seconds=61.0))
    unlimited = SimpleNamespace(recipe=SimpleNamespace(max_train_minutes=None), accelerator=TwoProcesses())
    assert Mu2SlamTrainer._agreed_seconds(unlimited, 59.0) == 59.0  # no collective per step without a limit


def test_encoder_spread_tells_a_collapsed_encoder(caplog):
    """0 when every real position holds one vector (padding ignored), about 1 for unrelated states; the loop warns
    on a dev spread under `COLLAPSED_ENCODER_SPREAD` and names the task and the fix."""
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    constant = torch.ones(2, 4, 8) * torch.randn(8)
    constant[0, 3] = 5.0  # a padded position does not count
    total, count = encoder_spread(constant, mask)
    assert count == 1 and total == pytest.approx(0.0, abs=1e-6)
    total, _ = encoder_spread(torch.randn(2, 4, 256), mask)
    assert 0.9 < total < 1.1
    with caplog.at_level("WARNING"):
        collapsed = warn_collapsed_encoder({"dev/encoder_spread/mt": 0.004, "dev/encoder_spread/asr": 0.7}, 300)
    assert collapsed == ["mt"] and "mt_source_mlm" in caplog.text and "step 300" in caplog.text
