"""Atomic, rotating checkpoints: ``output_dir/checkpoint-<step>/`` with a loadable model + processor folder and the
full training state (``training_state/``: Accelerate's model, optimizer, scheduler and RNG states; one mixture
state per process; ``trainer_state.json`` written last).

A checkpoint is written into ``.tmp-checkpoint-<step>`` in the same folder, every file and folder fsynced, then
renamed into place (an atomic rename on POSIX): a process killed while saving leaves the previous checkpoints
as they were, and at worst a temp folder that the next run removes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
TMP_PREFIX = ".tmp-checkpoint-"
TRASH_PREFIX = ".trash-checkpoint-"
TRAINER_STATE_NAME = "trainer_state.json"
TRAINING_STATE_DIR = "training_state"


def checkpoint_steps(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint in ``output_dir``, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = CHECKPOINT_PATTERN.match(child.name)
        if match and (child / TRAINER_STATE_NAME).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder, or None."""
    found = checkpoint_steps(output_dir)
    return found[-1][1] if found else None


def remove_stale_temporaries(output_dir: str | os.PathLike) -> None:
    """Delete temp/trash folders left by an interrupted save."""
    root = Path(output_dir)
    if root.is_dir():
        for child in root.iterdir():
            if child.name.startswith((TMP_PREFIX, TRASH_PREFIX)):
                shutil.rmtree(child, ignore_errors=True)


def fsync_tree(folder: str | os.PathLike) -> None:
    """fsync every file under ``folder``, then every directory (deepest first), so a rename publishes data."""
    directories = []
    for root, _, files in os.walk(folder):
        directories.append(root)
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                os.fsync(handle.fileno())
    for directory in reversed(directories):
        fsync_dir(directory)


def fsync_dir(directory: str | os.PathLike) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def temp_checkpoint_dir(output_dir: str | os.PathLike, step: int) -> Path:
    return Path(output_dir) / f"{TMP_PREFIX}{step}"


def publish_checkpoint(temp_dir: Path, output_dir: str | os.PathLike, step: int) -> Path:
    """fsync ``temp_dir`` and rename it to ``checkpoint-<step>`` (replacing one of the same step)."""
    fsync_tree(temp_dir)
    final = Path(output_dir) / f"checkpoint-{step}"
    if final.exists():
        trash = Path(output_dir) / f"{TRASH_PREFIX}{step}"
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(final, trash)
        os.replace(temp_dir, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(temp_dir, final)
    fsync_dir(output_dir)
    return final


def rotate_checkpoints(output_dir: str | os.PathLike, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest complete checkpoints; returns the deleted folders."""
    found = checkpoint_steps(output_dir)
    deleted = [folder for _, folder in found[: max(0, len(found) - keep)]]
    for folder in deleted:
        shutil.rmtree(folder)
    return deleted


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write JSON through a temp file + fsync + rename (never a half-written file)."""
    path = Path(path)
    temp = path.with_name(path.name + ".tmp")
    with temp.open("w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, ensure_ascii=False)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def save_checkpoint(
    accelerator,
    output_dir: str | os.PathLike,
    step: int,
    save_model_and_processor: Callable[[Path], None],
    process_state: dict[str, Any],
    trainer_state: dict[str, Any],
    keep: int,
) -> Path | None:
    """Collective: every process calls it. Returns the published folder (on the main process).

    Args:
        save_model_and_processor: writes the loadable model + processor into a folder (called on every process,
            so that a sharded model can gather its weights; it writes only on the main process).
        process_state: this process's own state (e.g. its mixture), saved as ``process_state_<rank>.json``.
        trainer_state: step, recipe, metrics; written last, it marks the checkpoint complete.
    """
    temp = temp_checkpoint_dir(output_dir, step)
    if accelerator.is_main_process:
        shutil.rmtree(temp, ignore_errors=True)
        temp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temp / TRAINING_STATE_DIR))
    write_json(temp / TRAINING_STATE_DIR / f"process_state_{accelerator.process_index}.json", process_state)
    save_model_and_processor(temp)
    accelerator.wait_for_everyone()
    final = None
    if accelerator.is_main_process:
        write_json(temp / TRAINER_STATE_NAME, {**trainer_state, "num_processes": accelerator.num_processes})
        final = publish_checkpoint(temp, output_dir, step)
        rotate_checkpoints(output_dir, keep)
    accelerator.wait_for_everyone()
    return final


def checkpoint_train_seconds(trainer_state: dict[str, Any]) -> float:
    """The training seconds a checkpoint's run had spent (what ``max_train_minutes`` counts). Checkpoints written
    before the count was saved give the count of their last dev evaluation, which is at most that."""
    if "train_seconds" in trainer_state:
        return float(trainer_state["train_seconds"])
    dev = trainer_state.get("dev") or [{}]
    return float(dev[-1].get("train_seconds", 0.0))


def load_checkpoint(accelerator, folder: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore Accelerate's state from ``folder``; returns (trainer_state, this process's process_state)."""
    folder = Path(folder)
    trainer_state = read_json(folder / TRAINER_STATE_NAME)
    saved_processes = trainer_state.get("num_processes", 1)
    if saved_processes != accelerator.num_processes:
        raise ValueError(
            f"{folder} was written by {saved_processes} process(es) but this run has {accelerator.num_processes}: "
            "resume with the same number of processes (the data order of each process is part of the state)."
        )
    accelerator.load_state(str(folder / TRAINING_STATE_DIR))
    process_state = read_json(folder / TRAINING_STATE_DIR / f"process_state_{accelerator.process_index}.json")
    return trainer_state, process_state
