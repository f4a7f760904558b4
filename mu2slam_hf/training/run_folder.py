"""An output folder belongs to one run: a new run never writes over an earlier one unless asked, and two runs never
write into one folder at the same time.

`claim_run_folder` is called before a run writes anything. It takes an exclusive lock on ``output_dir/.run.lock``
(``flock``: the kernel drops it when the process dies, even by ``kill -9``, so a stale lock never blocks) and
then checks what the folder holds: continuing needs ``resume``, replacing needs ``overwrite_output_dir`` (as
transformers' ``TrainingArguments``); replacing deletes what the earlier run wrote (its checkpoints would otherwise
count as newer than the new run's, and its final model would stand in for one the new run has not written yet).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path

from .checkpointing import TMP_PREFIX, TRASH_PREFIX

LOCK_NAME = ".run.lock"
# What a run writes into its output folder: logs, dev results, TensorBoard events, checkpoints, and the final model
# + processor (weights, configs, tokenizer, codebook), plus what evaluate.py adds beside them.
RUN_FILE_PATTERNS = (
    "train_log.jsonl", "dev_results.json", "logs", "checkpoint-*", f"{TMP_PREFIX}*", f"{TRASH_PREFIX}*",
    "*.safetensors", "model.safetensors.index.json", "config.json", "generation_config.json",
    "processor_config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "speech_codebook.json", "checksums.json", "eval_*.json", "eval_*.md",
)  # fmt: skip


class RunFolderError(RuntimeError):
    """The output folder holds another run, or another run is writing to it; the message says what to do."""


class RunFolder:
    """The claim of one run on its output folder; `release` (or the end of the process) gives it up."""

    def __init__(self, output_dir: str | os.PathLike):
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.lock_path = self.output_dir / LOCK_NAME
        self._handle = open(self.lock_path, "a+", encoding="utf-8")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(self.lock_path)
            self._handle.close()
            raise RunFolderError(
                f"Another run is writing to {self.output_dir} ({holder}). Two runs in one folder would overwrite each "
                "other's checkpoints and interleave their logs: wait for it to finish, stop it, or choose another "
                "--output_dir."
            ) from None
        self._handle.seek(0)
        self._handle.truncate()
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        self._handle.write(json.dumps(holder))
        self._handle.flush()

    def release(self) -> None:
        """Give up the lock (idempotent)."""
        if not self._handle.closed:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _read_holder(lock_path: Path) -> str:
    try:
        holder = json.loads(lock_path.read_text(encoding="utf-8"))
        return f"process {holder['pid']} on {holder['host']}, since {holder['since']}"
    except (OSError, ValueError, KeyError):
        return "holder unknown"


def previous_run_files(output_dir: str | os.PathLike) -> list[Path]:
    """What an earlier run left in ``output_dir`` (sorted; empty for a new or empty folder)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    return sorted({path for pattern in RUN_FILE_PATTERNS for path in root.glob(pattern)})


def claim_run_folder(
    output_dir: str | os.PathLike, resume: bool, overwrite_output_dir: bool, reads_from: str | None = None
) -> RunFolder:
    """Lock ``output_dir`` for this run and make sure the run may write there (see the module docstring).

    ``reads_from``: a folder the run starts from (``init_checkpoint``); overwriting may not delete it.

    Raises:
        RunFolderError: another run holds the folder, or it holds an earlier run and neither ``resume`` nor
            ``overwrite_output_dir`` was given.
        ValueError: both ``resume`` and ``overwrite_output_dir``.
    """
    if resume and overwrite_output_dir:
        raise ValueError("Pass either resume (continue the run in output_dir) or overwrite_output_dir (replace it).")
    folder = RunFolder(output_dir)
    try:
        earlier = previous_run_files(output_dir)
        if earlier and overwrite_output_dir and reads_from and _inside(Path(reads_from), Path(output_dir)):
            raise RunFolderError(
                f"The run starts from {reads_from}, inside {output_dir}: --overwrite_output_dir would delete it. "
                "Choose another --output_dir."
            )
        if earlier and overwrite_output_dir:
            for path in earlier:
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        elif earlier and not resume:
            raise RunFolderError(
                f"{output_dir} already holds a run ({', '.join(p.name for p in earlier[:6])}"
                f"{', ...' if len(earlier) > 6 else ''}). Pass --resume to continue it, --overwrite_output_dir to "
                "replace it (its checkpoints, logs and model are deleted), or choose another --output_dir."
            )
    except BaseException:
        folder.release()
        raise
    return folder


__all__ = ["LOCK_NAME", "RunFolder", "RunFolderError", "claim_run_folder", "previous_run_files"]
