"""Streaming training data (``--streaming``): windows of a stream batched as the in-memory mixture batches a split,
exact resumption from the stream's own state, the same rows in DataLoader workers, and bad rows named when read."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import CPU_ONLY, REPO_ROOT
from test_training_data import RECIPE, clips, disk_data, manifest_data, snapshot_data, table, train_on, write_csv  # noqa: F401
from torch.utils.data import DataLoader, IterableDataset

from mu2slam_hf import Mu2SlamForConditionalGeneration
from mu2slam_hf.data import make_example, to_dataset
from mu2slam_hf.data.mixing import TaskMixture
from mu2slam_hf.data.streaming import StreamingTaskMixture
from mu2slam_hf.data.training_data import TrainingData
from mu2slam_hf.data.validation import CorpusError
from mu2slam_hf.training import RecipeError

BUDGETS = {"asr": 400, "mt": 24}  # 4 s of padded audio, 24 padded words


def _rows():
    asr = [make_example(f"a{i}", "asr", "en", audio=f"{i}.flac", target_text="x", duration=0.3 + (i * 7 % 13) / 10)
           for i in range(37)]  # fmt: skip
    mt = [make_example(f"m{i}", "mt", "de", source_text=" ".join(["w"] * (1 + i % 9)), target_text="y",
                       target_lang="en") for i in range(29)]  # fmt: skip
    return {"asr": to_dataset(asr), "mt": to_dataset(mt)}


def _words(rows) -> np.ndarray:
    return np.array([len(row["source_text"].split()) for row in rows])


def _streams(sources, shards=3):
    return {task: (lambda d=d: d.to_iterable_dataset(num_shards=shards)) for task, d in sources.items()}


def _ids(mixture, steps):
    out = []
    for _ in range(steps):
        out.append({task: [row["id"] for row in rows] for task, rows in mixture.next_batch().items()})
    return out


def _streaming(sources, window, shortest_first=True, **kwargs):
    return StreamingTaskMixture(_streams(sources, **kwargs), BUDGETS, seed=3, window=window,
                                shortest_first=shortest_first, text_lengths=_words)  # fmt: skip


def test_a_stream_read_in_one_window_draws_the_steps_of_the_in_memory_mixture():
    sources = _rows()
    in_memory = TaskMixture(sources, seed=3, seconds_per_step={"asr": 4.0}, tokens_per_step={"mt": 24},
                            token_lengths={"mt": _words(sources["mt"])}, shortest_first=True)  # fmt: skip
    # 60 steps: several passes over both tasks (the first shortest first, then shuffled)
    assert _ids(_streaming(sources, window=100), 60) == _ids(in_memory, 60)


def test_windows_batch_neighbouring_rows_and_each_pass_reads_every_row_once():
    sources, window = _rows(), 8
    mixture = _streaming(sources, window, shards=1)
    steps = _ids(mixture, 200)
    position = {row["id"]: i for i, row in enumerate(sources["asr"])}
    seen = Counter()
    for step in steps:
        rows = [position[i] for i in step["asr"]]
        assert len({row // window for row in rows}) == 1  # a batch never mixes two windows
        longest = max(sources["asr"][r]["duration"] for r in rows)
        assert len(rows) == 1 or round(longest * 100) * len(rows) <= BUDGETS["asr"]  # padded frames within budget
        seen.update(step["asr"])
    passes = mixture.state_dict()["tasks"]["asr"]["pass"]
    assert passes >= 3 and set(seen) == set(position)
    # every row of the finished passes exactly once per pass (the running pass: at most once more)
    assert all(passes <= count <= passes + 1 for count in seen.values())


@pytest.mark.parametrize("stop", [1, 5, 9, 23, 40])
def test_a_resumed_stream_continues_with_the_same_steps(stop):
    sources = _rows()
    uninterrupted = _ids(_streaming(sources, window=7), stop + 25)
    first = _streaming(sources, window=7)
    _ids(first, stop)
    state = json.loads(json.dumps(first.state_dict()))  # a checkpoint keeps it as JSON
    resumed = _streaming(sources, window=7)
    resumed.load_state_dict(state)
    assert resumed.step == stop and _ids(resumed, 25) == uninterrupted[stop:]


class _InWorkers(IterableDataset):
    def __init__(self, mixture):
        self.mixture = mixture

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        for index, step in enumerate(iter(lambda: self.mixture.next_batch(), None)):
            if index % info.num_workers == info.id:
                yield {task: [row["id"] for row in rows] for task, rows in step.items()}


def test_dataloader_workers_read_the_whole_stream_not_a_share_of_its_shards():
    """`datasets` gives each DataLoader worker only its share of a stream's shards when iterated with iter(); the
    windows are read with .iter(batch_size=...), so every worker steps through the same rows."""
    sources = _rows()
    expected = _ids(_streaming(sources, window=10, shards=1), 30)
    loader = DataLoader(_InWorkers(_streaming(sources, window=10, shards=1)), batch_size=None, num_workers=2)
    drawn = [step for step, _ in zip(loader, range(30), strict=False)]
    assert drawn == expected


def test_state_from_another_kind_of_run_is_refused():
    sources = _rows()
    in_memory = TaskMixture(sources, seed=3, seconds_per_step={"asr": 4.0}, tokens_per_step={"mt": 24},
                            token_lengths={"mt": _words(sources["mt"])})  # fmt: skip
    with pytest.raises(ValueError, match=r"read its data in memory \(without --streaming\); resume it without"):
        _streaming(sources, 10).load_state_dict(in_memory.state_dict())
    with pytest.raises(ValueError, match=r"streamed its data \(--streaming\); resume it with --streaming"):
        in_memory.load_state_dict(_streaming(sources, 10).state_dict())


# ---- the training loop ------------------------------------------------------------------------------------------

STREAMING_RECIPE = {**RECIPE, "examples_per_step": {}, "seconds_per_step": {"asr": 1.0}, "max_steps": 3,
                    "eval_interval": 3}  # fmt: skip


def _losses(result) -> list[float]:
    return [entry["loss"] for entry in result.log]


def test_streaming_training_has_the_losses_of_in_memory_training(clips, tmp_path):  # noqa: F811
    """One window holding the split: the same batches, so the same losses (the manifest, a save_to_disk folder with
    audio bytes, and a local Hub snapshot read by load_dataset(streaming=True)); with 2 worker processes too."""
    in_memory = _losses(train_on(manifest_data(clips), clips, tmp_path / "in-memory", **STREAMING_RECIPE))
    for name, make in (("manifest", manifest_data), ("disk", disk_data), ("hub", snapshot_data)):
        data = make(clips)  # audio as files or bytes; the same rows in the same order
        data.streaming = True
        result = train_on(data, clips, tmp_path / name, **STREAMING_RECIPE)
        assert _losses(result) == pytest.approx(in_memory, rel=1e-5), name
    data = manifest_data(clips)
    data.streaming = True
    workers = {"dataloader": {"num_workers": 2}, "ctc_language_model": 3}  # the default cache_features: moot here
    result = train_on(data, clips, tmp_path / "workers", **{**STREAMING_RECIPE, **workers})
    assert _losses(result) == pytest.approx(in_memory, rel=1e-4)
    fit = json.loads((tmp_path / "workers" / "ctc_language_model_fit.json").read_text())
    assert fit["sentences"] == {"en": 3, "fr": 3}  # the train transcripts, read through the stream


def test_streaming_needs_length_budgets_and_names_bad_rows_when_it_reads_them(clips, tmp_path):  # noqa: F811
    data = manifest_data(clips)
    data.streaming = True
    with pytest.raises(RecipeError, match=r"--streaming batches every task by length.*\['asr'\].*seconds_per_step"):
        train_on(data, clips, tmp_path / "a")  # RECIPE draws asr by examples_per_step

    rows = table(clips, "train")
    rows[4]["path"] = "clips/missing.flac"  # in the second window of 2 rows
    bad = TrainingData(train_file=str(write_csv(clips["root"] / "stream-bad.csv", rows)), audio_column_name="path",
                       text_column_name="sentence", source_lang_column_name="locale", streaming=True)  # fmt: skip
    recipe = {**STREAMING_RECIPE, "max_steps": 8, "checkpoint_interval": 1, "dataloader": {"stream_window": 2}}
    with pytest.raises(CorpusError) as excinfo:
        train_on(bad, clips, tmp_path / "b", **recipe)
    message = str(excinfo.value)
    assert "train row 4: example 'train-4': audio file not found" in message and "missing.flac" in message
    assert "found when training reached them (the asr rows from 4 on); the checkpoints written so far are kept" in (
        message
    )
    assert sorted(p.name for p in Path(tmp_path / "b").glob("checkpoint-*"))  # written before the bad window

    rows = table(clips, "train")
    rows[0]["locale"] = "xx"  # in the first window: named before step 1, nothing written
    first = TrainingData(train_file=str(write_csv(clips["root"] / "stream-bad0.csv", rows)), audio_column_name="path",
                         text_column_name="sentence", source_lang_column_name="locale", streaming=True)  # fmt: skip
    with pytest.raises(CorpusError, match=r"(?s)nothing has been run yet.*train row 0: example 'train-0': unknown"):
        train_on(first, clips, tmp_path / "c", **recipe)
    assert not list((tmp_path / "c").glob("checkpoint-*"))


@pytest.mark.slow
def test_two_processes_stream_their_own_rows_and_resume(clips, tmp_path):  # noqa: F811
    """`accelerate launch` with 2 CPU processes and --streaming: each reads its own rows (3 and 3 of 6 here, in
    windows of 2), the run completes, both processes' stream states are saved, and --resume continues from them."""
    data = manifest_data(clips)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump({**STREAMING_RECIPE, "checkpoint_interval": 2, "dataloader": {"stream_window": 2}})
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), **CPU_ONLY}

    def launch(max_steps: int, *extra: str) -> None:
        command = [
            str(Path(sys.executable).with_name("accelerate")), "launch",
            "--config_file", str(REPO_ROOT / "configuration" / "accelerate" / "cpu_ddp.yaml"),
            "--main_process_port", "29541", str(REPO_ROOT / "training_scripts" / "finetune.py"),
            "--recipe", str(recipe), "--data", data.dataset_name, "--streaming", "--output_dir", str(tmp_path / "run"),
            "--max_steps", str(max_steps), "--no_progress", "--no_tensorboard", *extra,
        ]  # fmt: skip
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]

    launch(3)
    state = tmp_path / "run" / "checkpoint-2" / "training_state"
    streams = [json.loads((state / f"process_state_{rank}.json").read_text())["mixture"] for rank in (0, 1)]
    assert all(s["step"] == 2 and "start_state" in s["tasks"]["asr"] for s in streams)
    launch(5, "--resume")
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log if "loss" in entry][-2:] == [4, 5]
    Mu2SlamForConditionalGeneration.from_pretrained(tmp_path / "run")


def test_streamed_dev_rows_are_checked_against_the_model_languages(clips):  # noqa: F811
    """The loop checks the streamed dev rows against the languages of the model it built (a resumed or
    vocabulary-extended model's own), not only those the recipe names."""
    from mu2slam_hf.training.loop import eval_rows
    from mu2slam_hf.training.recipe import recipe_from_dict

    data = manifest_data(clips)
    data.streaming = True
    recipe = recipe_from_dict({**RECIPE, **STREAMING_RECIPE})
    languages = sorted({row["lang"] for row in clips["validation"]})
    assert len(eval_rows(recipe, data, languages)) == len(clips["validation"])
    with pytest.raises(CorpusError, match=r"dev row 0: example 'validation-0': unknown"):
        eval_rows(recipe, data, ["xx"])


def test_worker_processes_with_the_in_memory_feature_cache_are_refused_before_the_output_folder(clips, tmp_path):  # noqa: F811
    with pytest.raises(RecipeError, match=r"Set dataloader.cache_features: false"):
        train_on(manifest_data(clips), clips, tmp_path / "run", dataloader={"num_workers": 2})
    assert not (tmp_path / "run").exists()
