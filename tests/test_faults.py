"""Fault injection: bad inputs and faults a new user meets, each giving a clear error (or a correct result), raised
from this package rather than deep inside torch/tokenizers, and never losing or changing what was written before.

One tiny corpus of tones (en/fr, train + dev) and one 3-step run of the tiny preset serve every case.
"""

import hashlib
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import PRESETS, REPO_ROOT, make_model, random_batch

from mu2slam_hf import (
    Mu2SlamConfig,
    Mu2SlamFeatureExtractor,
    Mu2SlamForConditionalGeneration,
    Mu2SlamForSequenceClassification,
    Mu2SlamProcessor,
    Mu2SlamTokenizer,
)
from mu2slam_hf.cli import evaluate as evaluate_cli
from mu2slam_hf.cli.train import finetune_main, pretrain_main
from mu2slam_hf.data import load_manifest, make_example, write_flac, write_manifest
from mu2slam_hf.data.manifest import ManifestError
from mu2slam_hf.data.training_data import DataSourceError
from mu2slam_hf.data.validation import CorpusError, check_corpus
from mu2slam_hf.training import Mu2SlamTrainer, RecipeError, latest_checkpoint, load_recipe, recipe_from_dict
from mu2slam_hf.training.run_folder import LOCK_NAME, RunFolder, RunFolderError, claim_run_folder

TINY_RECIPE = REPO_ROOT / "configuration" / "recipes" / "pretrain-tiny.yaml"
STAGE1_RECIPE = REPO_ROOT / "configuration" / "recipes" / "gradual-stage1.yaml"
FAST = {
    "max_steps": 3, "log_interval": 1, "eval_interval": 1000, "checkpoint_interval": 2, "keep_checkpoints": 1,
    "dev_examples_per_task": 1, "eval_max_new_tokens": 4, "speech_codebook": {"normalization_examples": 4},
    "examples_per_step": {"speech": 1, "text": 1, "asr": 1, "ast": 1, "mt": 1},
}  # fmt: skip
WORDS = {"en": "one two three", "fr": "un deux trois"}
SR = 16_000


# ------------------------------------------------------------------------------------------------ helpers


def build_corpus(root: Path, per_language: int = 3) -> Path:
    """Tones with number-word texts in en/fr: every task, train and dev (dev has text the tokenizer never saw)."""
    rng = np.random.default_rng(0)
    for split in ("train", "dev"):
        rows = []
        for i in range(per_language):
            for lang, other in (("en", "fr"), ("fr", "en")):
                path = f"audio/{split}-{lang}-{i}.flac"
                t = np.arange(int(SR * (0.3 + 0.05 * i))) / SR
                wave = 0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t) + 0.01 * rng.standard_normal(t.size)
                seconds = write_flac(root / path, wave)
                words = WORDS[lang] + ("" if split == "train" else " Zürich")
                rows += [
                    make_example(f"{split}-sp-{lang}-{i}", "speech", lang, audio=path, duration=seconds),
                    make_example(f"{split}-tx-{lang}-{i}", "text", lang, source_text=f"{words} {i}"),
                    make_example(f"{split}-asr-{lang}-{i}", "asr", lang, audio=path, target_text=f"{words} {i}",
                                 duration=seconds),
                    make_example(f"{split}-ast-{lang}-{i}", "ast", lang, audio=path, source_text=words,
                                 target_text=f"{WORDS[other]} {i}", target_lang=other, duration=seconds),
                    make_example(f"{split}-mt-{lang}-{i}", "mt", lang, source_text=words,
                                 target_text=f"{WORDS[other]} {i}", target_lang=other),
                ]  # fmt: skip
        write_manifest(root / f"{split}.jsonl", rows)
    return root


def tiny_recipe(**overrides):
    return load_recipe(TINY_RECIPE, {**FAST, **overrides})


def run(output_dir, corpus, resume=False, overwrite=False, **overrides):
    trainer = Mu2SlamTrainer(tiny_recipe(**overrides), str(corpus), str(output_dir), log_with=None, progress=False)
    return trainer.train(resume=resume, overwrite_output_dir=overwrite)


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> content hash of every file under ``folder``."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != LOCK_NAME
    }


def assert_clear(excinfo, *needles: str) -> None:
    """The error names the problem (every needle in its message) and was raised by this package or the stdlib,
    not from deep inside torch, tokenizers or transformers."""
    message = str(excinfo.value)
    for needle in needles:
        assert needle in message, (needle, message)
    origin = str(excinfo.traceback[-1].path)
    assert "site-packages" not in origin, origin


def copy_corpus(corpus: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(corpus, tmp_path / "corpus"))


def edit_lines(manifest: Path, edit) -> None:
    """Replace the manifest's lines by ``edit(lines)`` (a list of strings without newlines)."""
    lines = manifest.read_text(encoding="utf-8").splitlines()
    manifest.write_text("\n".join(edit(lines)) + "\n", encoding="utf-8")


def set_field(manifest: Path, line: int, **fields) -> None:
    """Update fields of the example on 1-based ``line``."""

    def edit(lines):
        row = json.loads(lines[line - 1])
        row.update(fields)
        lines[line - 1] = json.dumps(row)
        return lines

    edit_lines(manifest, edit)


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return build_corpus(tmp_path_factory.mktemp("faults-corpus"))


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """A 3-step run: (output_dir, warnings logged while it ran)."""
    output_dir = tmp_path_factory.mktemp("faults-run")
    records = Records()
    logging.getLogger().addHandler(records)
    try:
        run(output_dir, corpus)
    finally:
        logging.getLogger().removeHandler(records)
    return output_dir, records.messages


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    """A copy of the trained folder to break (files only, no checkpoints)."""
    folder = tmp_path / "model"
    folder.mkdir()
    for path in trained[0].iterdir():
        if path.is_file() and path.name != LOCK_NAME:
            shutil.copy(path, folder)
    return folder


# --------------------------------------------------------------------------- an output folder owns its run


def test_a_new_run_in_a_used_folder_is_refused_and_changes_nothing(trained, corpus):
    output_dir, _ = trained
    before = snapshot(output_dir)
    with pytest.raises(RunFolderError) as excinfo:
        run(output_dir, corpus)
    assert_clear(excinfo, "already holds a run", "--resume", "--overwrite_output_dir")
    assert snapshot(output_dir) == before


def test_overwrite_replaces_the_old_run_and_resume_continues_the_new_one(corpus, tmp_path):
    run(tmp_path, corpus, max_steps=4, checkpoint_interval=4, seed=0)  # the old run: checkpoint-4
    (tmp_path / "notes.txt").write_text("mine")
    run(tmp_path, corpus, overwrite=True, max_steps=2, checkpoint_interval=1, seed=7)
    assert latest_checkpoint(tmp_path).name == "checkpoint-2"  # not deleted for an old, "newer" checkpoint-4
    assert not (tmp_path / "checkpoint-4").exists() and (tmp_path / "notes.txt").read_text() == "mine"
    log = [json.loads(line)["step"] for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert log == [1, 2]
    result = run(tmp_path, corpus, resume=True, max_steps=3, checkpoint_interval=1, seed=7)
    assert [entry["step"] for entry in result.log] == [3]
    state = json.loads((latest_checkpoint(tmp_path) / "trainer_state.json").read_text())
    assert state["recipe"]["seed"] == 7


def test_resume_and_overwrite_together_are_refused(tmp_path):
    with pytest.raises(ValueError) as excinfo:
        claim_run_folder(tmp_path, resume=True, overwrite_output_dir=True)
    assert_clear(excinfo, "either resume", "overwrite_output_dir")


def test_overwrite_never_deletes_the_folder_a_run_starts_from(trained):
    output_dir, _ = trained
    before = snapshot(output_dir)
    with pytest.raises(RunFolderError) as excinfo:
        claim_run_folder(output_dir, False, True, reads_from=str(latest_checkpoint(output_dir)))
    assert_clear(excinfo, "would delete it", "another --output_dir")
    assert snapshot(output_dir) == before


def test_a_second_run_on_a_locked_folder_is_refused(trained, corpus):
    output_dir, _ = trained
    before = snapshot(output_dir)
    holder = RunFolder(output_dir)
    try:
        with pytest.raises(RunFolderError) as excinfo:
            run(output_dir, corpus, resume=True)
        assert_clear(excinfo, "Another run is writing", f"process {os.getpid()}")
    finally:
        holder.release()
    assert snapshot(output_dir) == before


def test_the_lock_of_a_killed_run_does_not_block(tmp_path):
    lock = tmp_path / LOCK_NAME
    code = (
        "import fcntl, sys, time; handle = open(sys.argv[1], 'a'); fcntl.flock(handle, fcntl.LOCK_EX); "
        "print('locked', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderError):
            claim_run_folder(tmp_path, resume=False, overwrite_output_dir=False)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    claim_run_folder(tmp_path, resume=False, overwrite_output_dir=False).release()


def test_cli_refuses_a_used_folder_without_a_traceback(trained, corpus):
    output_dir, _ = trained
    before = snapshot(output_dir)
    argv = ["--recipe", str(TINY_RECIPE), "--data", str(corpus), "--output_dir", str(output_dir), "--no_tensorboard"]
    with pytest.raises(SystemExit) as excinfo:
        pretrain_main(argv)
    assert_clear(excinfo, "RunFolderError", "already holds a run")
    with pytest.raises(SystemExit) as excinfo:
        pretrain_main([*argv, "--resume", "--overwrite_output_dir"])
    assert excinfo.value.code == 2  # argparse: not allowed together
    assert snapshot(output_dir) == before


@pytest.mark.parametrize(
    ("main", "recipe", "wrong"),
    [(finetune_main, TINY_RECIPE, "stage: pretrain"), (pretrain_main, STAGE1_RECIPE, "stage: finetune")],
)
def test_a_recipe_of_the_other_stage_is_refused(main, recipe, wrong, corpus, tmp_path):
    with pytest.raises(SystemExit) as excinfo:
        main(["--recipe", str(recipe), "--data", str(corpus), "--output_dir", str(tmp_path / "run")])
    assert_clear(excinfo, "RecipeError", wrong, "training_scripts/")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------- data is checked once, before step 1

BAD_DATA = {
    "missing audio file": (lambda c: set_field(c / "train.jsonl", 3, audio={"path": "audio/gone.flac"}),
                           ["train.jsonl:3", "train-asr-en-0", "audio file not found"]),
    "unreadable audio": (lambda c: (c / "audio/train-en-0.flac").write_bytes(b"not audio at all"),
                         ["train.jsonl:1", "unreadable audio"]),
    "too-short audio": (lambda c: write_flac(c / "audio/train-fr-0.flac", np.zeros(320)),
                        ["train.jsonl:6", "shorter than the model's 85 ms"]),
    "empty audio": (lambda c: write_flac(c / "audio/train-fr-1.flac", np.zeros(0)),
                    ["train.jsonl:16", "train-fr-1.flac"]),
    "unknown language": (lambda c: set_field(c / "train.jsonl", 2, source_lang="xx"),
                         ["train.jsonl:2", "train-tx-en-0", "unknown language source_lang='xx'", "en, de, fr"]),
    "unknown target language": (lambda c: set_field(c / "train.jsonl", 5, target_lang="klingon"),
                                ["train.jsonl:5", "target_lang='klingon'"]),
    "unknown task": (lambda c: set_field(c / "train.jsonl", 4, task="translate"),
                     ["train.jsonl:4", "unknown task 'translate'"]),
    "malformed JSON": (lambda c: edit_lines(c / "train.jsonl", lambda ls: ls[:10] + ['{"id": "x", "task": '] + ls[11:]),
                       ["train.jsonl:11", "invalid JSON"]),
    "not an object": (lambda c: edit_lines(c / "train.jsonl", lambda ls: ["[1, 2]"] + ls[1:]),
                      ["train.jsonl:1", "expected a JSON object"]),
    "empty transcript": (lambda c: set_field(c / "train.jsonl", 3, target_text="  "),
                         ["train.jsonl:3", "empty target text"]),
    "speech task without audio": (lambda c: set_field(c / "train.jsonl", 1, audio=None),
                                  ["train.jsonl:1", "no audio"]),
    "bad dev line": (lambda c: set_field(c / "dev.jsonl", 2, source_lang="zz"),
                     ["dev.jsonl:2", "source_lang='zz'"]),
    "NaN audio": (lambda c: point_to(c, 3, "nan.wav", tone_with_nan()),
                  ["train.jsonl:3", "train-asr-en-0", "nan.wav", "NaN or inf sample"]),
    "audio cut short": (lambda c: point_to(c, 3, "cut.wav", cut_in_half(wav_bytes(tone()))),
                        ["train.jsonl:3", "cut.wav", "is cut short", "chunk holds"]),
}  # fmt: skip


def tone(seconds: float = 1.0) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * 220 * np.arange(int(SR * seconds)) / SR)).astype(np.float32)


def tone_with_nan() -> bytes:
    wave = tone()
    wave[100:110] = np.nan
    return wav_bytes(wave, subtype="FLOAT")


def wav_bytes(wave: np.ndarray, subtype: str = "PCM_16", format: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wave, SR, format=format, subtype=subtype)
    return buffer.getvalue()


def cut_in_half(data: bytes) -> bytes:
    """The first half of an encoded file: its header intact, half its samples gone."""
    return data[: len(data) // 2]


def point_to(corpus: Path, line: int, name: str, data: bytes) -> None:
    """Write ``data`` as audio/<name> and point the row on ``line`` of train.jsonl at it."""
    (corpus / "audio" / name).write_bytes(data)
    set_field(corpus / "train.jsonl", line, audio={"path": f"audio/{name}"})


@pytest.mark.parametrize("fault", sorted(BAD_DATA))
def test_bad_data_is_reported_before_step_1(fault, corpus, tmp_path):
    data = copy_corpus(corpus, tmp_path)
    break_it, needles = BAD_DATA[fault]
    break_it(data)
    with pytest.raises(CorpusError) as excinfo:
        run(tmp_path / "run", data)
    assert_clear(excinfo, "nothing has been run yet", "Fix or remove these rows", *needles)
    assert not any((tmp_path / "run").glob("checkpoint-*")) and not (tmp_path / "run" / "train_log.jsonl").exists()


def test_every_data_problem_is_reported_at_once(corpus, tmp_path):
    data = copy_corpus(corpus, tmp_path)
    set_field(data / "train.jsonl", 2, source_lang="xx")
    set_field(data / "train.jsonl", 3, audio={"path": "audio/gone.flac"})
    set_field(data / "dev.jsonl", 4, task="nope")
    with pytest.raises(CorpusError) as excinfo:
        check_corpus(data, {"train": ["text", "asr"], "dev": ["asr"]}, ["en", "fr"])
    assert len(excinfo.value.problems) == 3
    assert_clear(excinfo, "3 problem(s)", "train.jsonl:2", "train.jsonl:3", "dev.jsonl:4")


def test_rows_of_unused_tasks_only_need_to_parse(corpus, tmp_path):
    data = copy_corpus(corpus, tmp_path)
    set_field(data / "train.jsonl", 2, source_lang="xx")  # a text row
    check_corpus(data, {"train": ["asr"]}, ["en", "fr"])  # no error: text rows are not used


def test_a_missing_manifest_names_the_builders(tmp_path):
    with pytest.raises(DataSourceError) as excinfo:
        run(tmp_path / "run", tmp_path)
    assert_clear(excinfo, "no train.jsonl", "mu2slam-build-synthetic")
    with pytest.raises(DataSourceError) as excinfo:
        run(tmp_path / "run", tmp_path / "not" / "there")
    assert_clear(excinfo, "no such folder")


def test_load_manifest_names_file_and_line(corpus, tmp_path):
    data = copy_corpus(corpus, tmp_path)
    edit_lines(data / "train.jsonl", lambda ls: ls[:10] + ["{broken"] + ls[11:])
    with pytest.raises(ManifestError) as excinfo:
        load_manifest(data, "train", "asr")
    assert_clear(excinfo, f"{data / 'train.jsonl'}:11", "invalid JSON")


def test_evaluate_checks_the_split_before_decoding(trained, corpus, tmp_path):
    output_dir, _ = trained
    data = copy_corpus(corpus, tmp_path)
    shutil.copy(data / "dev.jsonl", data / "test.jsonl")
    set_field(data / "test.jsonl", 8, source_lang="xx")  # an asr row, far into the file
    out = tmp_path / "eval.json"
    with pytest.raises(SystemExit) as excinfo:
        evaluate_cli.main(["--model", str(output_dir), "--data", str(data), "--output", str(out)])
    assert_clear(excinfo, "test.jsonl:8", "source_lang='xx'")
    assert not out.exists()


@pytest.mark.parametrize("flag", ["--batch_size", "--num_beams", "--max_new_tokens", "--max_examples"])
def test_evaluate_refuses_non_positive_sizes(flag, capsys):
    with pytest.raises(SystemExit) as excinfo:
        evaluate_cli.parse_args(["--model", "m", "--data", "d", flag, "0"])
    assert excinfo.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


# --------------------------------------------------------------------------------- recipes and configs

BAD_RECIPES = {
    "model_overrides typo": ({"model_overrides": {"decoder_droput": 0.3}}, ["decoder_droput", "decoder_dropout"]),
    "model_overrides wrong type": ({"model_overrides": {"encoder_layers": "2"}}, ["encoder_layers", "int"]),
    "model_overrides out of range": ({"model_overrides": {"decoder_dropout": 1.5}}, ["decoder_dropout", "[0, 1]"]),
    "loss_weights typo": ({"loss_weights": {"speach_only": 1.0}}, ["loss_weights", "speech_only"]),
    "negative loss weight": ({"loss_weights": {"mt": -1.0}}, ["loss_weights", ">= 0"]),
    "language_temperature typo": ({"language_temperature": {"txt": 2.0}}, ["language_temperature", "'txt'"]),
    "language_temperature zero": ({"language_temperature": {"text": 0.0}}, ["language_temperature.text"]),
}


@pytest.mark.parametrize("fault", sorted(BAD_RECIPES))
def test_free_form_recipe_maps_are_checked(fault):
    data, needles = BAD_RECIPES[fault]
    with pytest.raises(RecipeError) as excinfo:
        recipe_from_dict({"model": str(PRESETS / "tiny"), **data})
    assert_clear(excinfo, *needles)


BAD_CONFIGS = {
    "string for an int": ({"d_model": "64"}, "Mu2SlamConfig.d_model must be an int"),
    "string for a layer count": ({"encoder_layers": "2"}, "Mu2SlamConfig.encoder_layers must be an int"),
    "zero heads": ({"decoder_attention_heads": 0}, "decoder_attention_heads must be an int >= 1"),
    "unknown activation": ({"hidden_act": "swishy"}, "Mu2SlamConfig.hidden_act must be an activation name"),
    "dropout above 1": ({"attention_dropout": 2.0}, "attention_dropout must be a number in [0, 1]"),
    "string for a bool": ({"apply_spec_augment": "yes"}, "apply_spec_augment must be true or false"),
    "empty languages": ({"languages": []}, "languages must be a non-empty list"),
    "unknown objective": ({"objective_loss_weights": {"asr": 1.0}}, "unknown objective(s) ['asr']"),
}


@pytest.mark.parametrize("fault", sorted(BAD_CONFIGS))
def test_config_values_are_checked_at_construction(fault):
    fields, needle = BAD_CONFIGS[fault]
    with pytest.raises(ValueError) as excinfo:
        Mu2SlamConfig(**fields)
    assert_clear(excinfo, needle, "Fix it")


def test_a_bad_config_json_fails_when_loaded(run_copy):
    config = json.loads((run_copy / "config.json").read_text())
    before = snapshot(run_copy)
    (run_copy / "config.json").write_text(json.dumps({**config, "encoder_ffn_dim": "128"}))
    with pytest.raises(ValueError) as excinfo:
        Mu2SlamForConditionalGeneration.from_pretrained(run_copy)
    assert_clear(excinfo, "encoder_ffn_dim must be an int")
    assert set(snapshot(run_copy)) == set(before)


def test_classifier_dropout_is_a_config_field(tiny_config):
    assert tiny_config.classifier_dropout == 0.1
    model = Mu2SlamForSequenceClassification(Mu2SlamConfig(**{**tiny_config.to_dict(), "classifier_dropout": 0.3}))
    assert model.dropout.p == 0.3


# ------------------------------------------------------------------------------------------------ loading


@pytest.mark.parametrize(
    "load",
    [
        Mu2SlamForConditionalGeneration.from_pretrained,
        Mu2SlamProcessor.from_pretrained,
        Mu2SlamConfig.from_pretrained,
        Mu2SlamTokenizer.from_pretrained,
    ],
    ids=["model", "processor", "config", "tokenizer"],
)
@pytest.mark.parametrize("path", ["runs/no-such-run/ft1", "no-such-run/ft1", "no-such-run"])
def test_a_folder_that_does_not_exist_says_so(load, path):
    with pytest.raises(FileNotFoundError) as excinfo:
        load(path)  # the last two could be Hub ids: the Hub's reason follows the local one
    assert_clear(excinfo, f"No such folder: {path} (relative to {os.getcwd()})", "output_dir")


@pytest.mark.parametrize("layers", [1, 3], ids=["fewer layers than the weights", "more layers than the weights"])
def test_weights_that_do_not_fit_the_config_are_refused(run_copy, layers):
    config = json.loads((run_copy / "config.json").read_text())
    (run_copy / "config.json").write_text(json.dumps({**config, "encoder_layers": layers}))
    with pytest.raises(ValueError) as excinfo:
        Mu2SlamForConditionalGeneration.from_pretrained(run_copy)
    assert_clear(excinfo, "do not fit this config", "model.encoder.layers.", "allow_missing_weights=True")
    model = Mu2SlamForConditionalGeneration.from_pretrained(run_copy, allow_missing_weights=True)
    assert len(model.model.encoder.layers) == layers


def test_new_task_heads_still_load_from_a_seq2seq_folder(trained):
    model, info = Mu2SlamForSequenceClassification.from_pretrained(trained[0], num_labels=3, output_loading_info=True)
    assert {"classifier.weight", "pooler.weight"} <= set(info["missing_keys"])
    assert model.classifier.out_features == 3


def test_reordered_languages_are_refused_by_model_and_pipeline(run_copy):
    from transformers import pipeline

    config = json.loads((run_copy / "config.json").read_text())
    languages = config["languages"]
    (run_copy / "config.json").write_text(
        json.dumps({**config, "languages": [languages[1], languages[0], *languages[2:]]})
    )
    with pytest.raises(ValueError) as excinfo:
        Mu2SlamForConditionalGeneration.from_pretrained(run_copy)
    assert_clear(excinfo, "languages", "wrong embeddings")
    with pytest.raises(ValueError, match="wrong embeddings"):  # the pipeline re-raises it inside its own error
        pipeline("automatic-speech-recognition", model=str(run_copy))


def test_a_folder_without_its_processor_gives_a_clear_pipeline_error(trained, tmp_path):
    from transformers import pipeline

    Mu2SlamForConditionalGeneration.from_pretrained(trained[0]).save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError) as excinfo:
        pipeline("automatic-speech-recognition", model=str(tmp_path))
    assert_clear(excinfo, "no tokenizer.json", "processor.save_pretrained")


def test_truncated_weights_give_a_clear_error_and_leave_the_checkpoint(trained, run_copy):
    weights = run_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError) as excinfo:
        Mu2SlamForConditionalGeneration.from_pretrained(run_copy)
    assert_clear(excinfo, "corrupt or truncated")
    Mu2SlamForConditionalGeneration.from_pretrained(latest_checkpoint(trained[0]))


# -------------------------------------------------------------------------------------------------- audio


@pytest.fixture(scope="module")
def extractor():
    return Mu2SlamFeatureExtractor()


def test_soundfile_stereo_layout_is_a_clear_error(extractor):
    stereo = np.zeros((SR, 2), np.float32)
    with pytest.raises(ValueError) as excinfo:
        extractor(stereo, sampling_rate=SR)
    assert_clear(excinfo, "(16000, 2)", "(samples, channels)", "mono='mean'")
    with pytest.raises(ValueError) as excinfo:
        extractor([stereo], sampling_rate=SR)
    assert_clear(excinfo, "multichannel", "mono='mean'")


def test_stereo_with_mono_is_the_mean_of_its_channels(extractor):
    rng = np.random.default_rng(0)
    left, right = rng.uniform(-0.5, 0.5, SR).astype(np.float32), rng.uniform(-0.5, 0.5, SR).astype(np.float32)
    expected = extractor((left + right) / 2, sampling_rate=SR)["input_features"]
    for layout in (np.stack([left, right], axis=1), np.stack([left, right])):
        np.testing.assert_allclose(extractor(layout, sampling_rate=SR, mono="mean")["input_features"], expected,
                                   atol=1e-5)  # fmt: skip


def test_a_two_row_array_is_a_batch_of_two_clips(extractor):
    rng = np.random.default_rng(1)
    clips = rng.uniform(-0.5, 0.5, (2, SR)).astype(np.float32)
    batch = extractor(clips, sampling_rate=SR)["input_features"]
    assert batch.shape[0] == 2
    np.testing.assert_allclose(batch[1:], extractor(clips[1], sampling_rate=SR)["input_features"], atol=1e-5)


BAD_AUDIO = {
    "wrong rate": (np.zeros(SR, np.float32), 44_100, "resample=True"),
    "NaN": (np.full(SR, np.nan, np.float32), SR, "NaN/inf"),
    "empty": (np.zeros(0, np.float32), SR, "is empty"),
    "too short": (np.zeros(800, np.float32), SR, "at least 1360 samples"),
    "int8": (np.zeros(SR, np.int8), SR, "ambiguous"),
}


@pytest.mark.parametrize("fault", sorted(BAD_AUDIO))
def test_bad_audio_is_a_clear_error(extractor, fault):
    audio, rate, needle = BAD_AUDIO[fault]
    with pytest.raises(ValueError) as excinfo:
        extractor(audio, sampling_rate=rate)
    assert_clear(excinfo, needle)


# --------------------------------------------------------------------------------- text the tokenizer lacks


def test_unknown_characters_are_reported_per_language(trained, caplog):
    processor = Mu2SlamProcessor.from_pretrained(trained[0])
    with caplog.at_level(logging.WARNING):
        batch = processor(text=["un deux", "Zürich 😀 東京"], src_lang=["fr", "de"])
    warning = "\n".join(record.getMessage() for record in caplog.records)
    assert "de: 1 of 1 texts" in warning and "'Z'" in warning and "'ü'" in warning and "fr:" not in warning
    assert (batch["input_ids"][1] == processor.tokenizer.unk_token_id).any()  # the result itself is unchanged
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        processor(text=["un deux"], src_lang="fr", text_target=["one two"], tgt_lang="en")
    assert not caplog.records


def test_training_reports_dev_text_the_tokenizer_never_saw(trained):
    _, warnings = trained
    report = next(message for message in warnings if "cannot write" in message)
    assert "\n  en: " in report and "'ü'" in report and "Zürich" in report  # the dev subset holds en only


# -------------------------------------------------------------------------- tensors, files and text from outside


def test_non_finite_features_are_refused_by_generate_and_forward(tiny_config):
    model = make_model(tiny_config)
    features, mask = random_batch(tiny_config)
    lang = torch.zeros(2, dtype=torch.long)
    for bad in (float("nan"), float("inf")):
        broken = features.clone()
        broken[1, 5, 3] = bad
        with pytest.raises(ValueError) as excinfo:
            model.generate(input_features=broken, attention_mask=mask, src_lang_ids=lang, max_new_tokens=3)
        assert_clear(excinfo, "`input_features` holds 1 NaN or inf value(s)", "Check the audio")
        with pytest.raises(ValueError) as excinfo:
            model(input_features=broken, attention_mask=mask, src_lang_ids=lang, labels=torch.ones(2, 3).long())
        assert_clear(excinfo, "`input_features` holds 1 NaN or inf value(s)")


@pytest.mark.parametrize("format", ["WAV", "FLAC", "MP3"])
def test_audio_cut_short_is_refused(format, trained, tmp_path):
    from transformers import pipeline

    from mu2slam_hf.data import read_audio

    subtype = {"WAV": "PCM_16", "FLAC": "PCM_16", "MP3": "MPEG_LAYER_III"}[format]
    path = tmp_path / f"cut.{format.lower()}"
    path.write_bytes(cut_in_half(wav_bytes(tone(3.0), subtype, format)))
    with pytest.raises(ValueError) as excinfo:
        read_audio(path)
    assert_clear(excinfo, str(path), "is cut short", "Re-encode or re-download")
    asr = pipeline("automatic-speech-recognition", model=str(trained[0]))
    with pytest.raises(ValueError, match="is cut short"):
        asr(str(path), generate_kwargs={"src_lang": "en"})
    whole = tmp_path / f"whole.{format.lower()}"
    whole.write_bytes(wav_bytes(tone(3.0), subtype, format))
    assert abs(len(read_audio(whole)) - 3 * SR) < 0.01 * 3 * SR  # the whole file still reads


def overwrite_middle(path: Path, seed: int = 0) -> None:
    """Random bytes over the middle third of a file: same size, header intact."""
    data = bytearray(path.read_bytes())
    start, end = len(data) // 3, 2 * len(data) // 3
    data[start:end] = np.random.default_rng(seed).integers(0, 256, end - start, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def test_weights_with_random_bytes_inside_are_refused(run_copy, monkeypatch):
    overwrite_middle(run_copy / "model.safetensors")
    before = snapshot(run_copy)
    with pytest.raises(ValueError) as excinfo:
        Mu2SlamForConditionalGeneration.from_pretrained(run_copy)
    assert_clear(excinfo, "model.safetensors", "corrupt or truncated", "checksums.json", "check_integrity=False")
    assert snapshot(run_copy) == before
    (run_copy / "checksums.json").unlink()  # a folder saved without checksums: the NaN/inf weights are refused
    with pytest.raises(ValueError) as excinfo:
        Mu2SlamForConditionalGeneration.from_pretrained(run_copy)
    assert_clear(excinfo, str(run_copy / "model.safetensors"), "hold NaN or inf", "check_integrity=False")
    Mu2SlamForConditionalGeneration.from_pretrained(run_copy, check_integrity=False)  # skipped on request
    monkeypatch.setenv("MU2SLAM_SKIP_INTEGRITY_CHECKS", "1")
    Mu2SlamForConditionalGeneration.from_pretrained(run_copy)


def test_checksums_follow_each_save(trained, tmp_path):
    checksums = json.loads((trained[0] / "checksums.json").read_text())["sha256"]
    assert set(checksums) == {"model.safetensors", "tokenizer.json", "speech_codebook.safetensors"}
    model = Mu2SlamForConditionalGeneration.from_pretrained(trained[0])
    model.save_pretrained(tmp_path, max_shard_size="100KB")  # shards replace the single file's entry
    Mu2SlamProcessor.from_pretrained(trained[0]).save_pretrained(tmp_path)
    recorded = set(json.loads((tmp_path / "checksums.json").read_text())["sha256"])
    assert "model.safetensors" not in recorded and "model.safetensors.index.json" in recorded
    assert {"tokenizer.json", "speech_codebook.safetensors"} <= recorded
    Mu2SlamForConditionalGeneration.from_pretrained(tmp_path)


def test_an_edited_tokenizer_json_is_refused(run_copy):
    tokenizer_file = run_copy / "tokenizer.json"
    tokenizer = json.loads(tokenizer_file.read_text())
    vocab = tokenizer["model"]["vocab"]
    first, second = sorted(token for token, i in vocab.items() if i >= 5)[:2]
    vocab[first], vocab[second] = vocab[second], vocab[first]  # same size: the vocabulary check cannot see it
    tokenizer_file.write_text(json.dumps(tokenizer))
    for load in (Mu2SlamForConditionalGeneration.from_pretrained, Mu2SlamProcessor.from_pretrained,
                 Mu2SlamTokenizer.from_pretrained):  # fmt: skip
        with pytest.raises(ValueError) as excinfo:
            load(run_copy)
        assert_clear(excinfo, "tokenizer.json", "changed after it was saved", "no longer matches the model")
    Mu2SlamProcessor.from_pretrained(run_copy, check_integrity=False)


@pytest.mark.parametrize("key, closest", [("num_mel_bin", "num_mel_bins"), ("languagess", "languages")])
def test_misspelt_config_keys_are_refused(run_copy, key, closest):
    with pytest.raises(ValueError) as excinfo:
        Mu2SlamConfig(**{key: 80 if key == "num_mel_bin" else ["en"]})
    assert_clear(excinfo, f"{key!r} is not a Mu2SlamConfig field", f"did you mean {closest!r}")
    config = json.loads((run_copy / "config.json").read_text())
    (run_copy / "config.json").write_text(json.dumps({**config, key: config[closest]}))
    with pytest.raises(ValueError) as excinfo:
        Mu2SlamForConditionalGeneration.from_pretrained(run_copy)
    assert_clear(excinfo, f"{key!r} is not a Mu2SlamConfig field", f"did you mean {closest!r}")


@pytest.mark.parametrize("preset", sorted(path.name for path in PRESETS.iterdir()))
def test_presets_and_transformers_keys_still_load(preset, tmp_path):
    from mu2slam_hf import Mu2SlamRetrievalConfig

    config = Mu2SlamConfig.from_pretrained(PRESETS / preset)
    config.save_pretrained(tmp_path)
    assert Mu2SlamConfig.from_pretrained(tmp_path).to_dict() == config.to_dict()
    Mu2SlamRetrievalConfig.from_pretrained(tmp_path).save_pretrained(tmp_path / "retrieval")
    Mu2SlamRetrievalConfig.from_pretrained(tmp_path / "retrieval")
    standard = {"num_labels": 3, "id2label": {0: "a", 1: "b", 2: "c"}, "output_hidden_states": True, "dtype": "float32",
                "problem_type": "single_label_classification", "max_length": 20, "torch_dtype": "float32",
                "_name_or_path": "x", "architectures": ["Mu2SlamForConditionalGeneration"], "vocab_size": None}  # fmt: skip
    standard["vocab_size"] = config.vocab_size
    loaded = Mu2SlamConfig.from_dict({**config.to_dict(), **standard}, attn_implementation="eager")
    assert loaded.num_labels == 3 and loaded.output_hidden_states


def test_special_token_strings_in_user_text_are_text(trained, tmp_path):
    from mu2slam_hf import train_char_tokenizer

    text = "close the </s> door [MASK] <pad>"
    tokenizer = train_char_tokenizer([text], vocab_size=64)
    tokenizer.save_pretrained(tmp_path)
    for loaded in (tokenizer, Mu2SlamTokenizer.from_pretrained(tmp_path)):
        ids = loaded(text)["input_ids"]
        assert ids.count(loaded.eos_token_id) == 1 and ids[-1] == loaded.eos_token_id  # only the one it appends
        assert loaded.decode(ids, skip_special_tokens=True) == text
    processor = Mu2SlamProcessor.from_pretrained(trained[0])
    batch = processor(text=["un </s> deux"], src_lang="fr", text_target=["one <pad> two"], tgt_lang="en")
    eos = processor.tokenizer.eos_token_id
    for ids in (batch["input_ids"][0], batch["labels"][0]):
        assert (ids == eos).sum() == 1 and ids[-1] == eos and not (ids == processor.tokenizer.pad_token_id).any()


@pytest.mark.parametrize("name", ["text", "text_target", "audio"])
def test_empty_processor_inputs_are_a_clear_error(trained, name):
    processor = Mu2SlamProcessor.from_pretrained(trained[0])
    inputs = {"text": ["un deux"], name: []} if name == "text_target" else {name: []}
    with pytest.raises(ValueError) as excinfo:
        processor(**inputs, src_lang="fr")
    assert_clear(excinfo, f"`{name}` is empty")


def test_a_model_folder_without_processor_files_names_them(trained, tmp_path):
    from transformers import AutoProcessor

    Mu2SlamForConditionalGeneration.from_pretrained(trained[0]).save_pretrained(tmp_path)
    for load in (Mu2SlamProcessor.from_pretrained, AutoProcessor.from_pretrained):
        with pytest.raises(FileNotFoundError) as excinfo:
            load(tmp_path)
        assert_clear(
            excinfo, f"{tmp_path} has no preprocessor_config.json and no tokenizer.json", "processor.save_pretrained"
        )
