"""Per-step task mixing over streams: corpora read in order, never held whole (``--streaming``).

:class:`StreamingTaskMixture` draws the same kind of steps as :class:`~mu2slam_hf.data.mixing.TaskMixture`'s
length-budgeted tasks (one batch of about ``seconds_per_step`` of padded audio or ``tokens_per_step`` padded tokens
per task and step), from a ``datasets.IterableDataset`` per task instead of a table with random access. Each task's
stream is read in windows of ``window`` rows; a window's rows are batched by length and their batches shuffled by
:class:`~mu2slam_hf.data.batching.LengthBucketBatchSampler`, exactly as the in-memory mixture batches a whole split.
So when one window holds the whole split, the steps are the in-memory mixture's, batch for batch; with smaller
windows, a batch mixes only rows that are near each other in the stream (shuffle the data before streaming it if
its order is not already random). When a task's stream ends, it starts again (the next pass: new batch orders).

Resumable and exact: the state holds, per task, the pass, the window, the position in its batches and the stream's
own ``state_dict()`` at the window's first row, so a resumed run refills the same window without reading what came
before it. Every window's rows go through ``check_window`` (the run's data check) when they are read.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .batching import LengthBucketBatchSampler, dataset_lengths
from .schema import SPEECH_TASKS

# A window's batch order is seeded by (seed, window); window 0 by the seed alone, as the in-memory mixture is.
WINDOW_SEED_STRIDE = 1_000_003


@dataclass
class _Window:
    """The rows of one task in memory, and where they came from in its stream."""

    rows: list[dict[str, Any]]
    batches: list[list[int]]
    start_state: dict[str, Any] | None  # the stream's state_dict() before its first row (None: a pass's start)
    end_state: dict[str, Any] | None = field(default=None)  # after its last row: the next window's start
    ended: bool = False  # the stream ended within (or right after) this window


class StreamingTaskMixture:
    """An endless, resumable stream of mixed-task steps read from streams (see the module docstring).

    Args:
        streams: task -> a function returning a fresh ``datasets.IterableDataset`` of that task's rows in the
            canonical schema (called once per pass, and on resuming).
        budgets: task -> frames (speech: 100 per second) or tokens of a step's padded batch.
        seed: seeds each window's batch order (a process's own seed under several processes).
        window: rows of a task read and batched together.
        shortest_first: each window of the first pass orders its batches from the shortest to the longest.
        text_lengths: text tasks: rows -> padded token lengths (see :func:`~mu2slam_hf.data.batching.text_token_lengths`).
        check_window: called with (task, rows, index of the first row in its pass) as each window is read; raises
            on bad rows (the run's data check).
    """

    def __init__(
        self,
        streams: Mapping[str, Callable[[], Any]],
        budgets: Mapping[str, int],
        seed: int = 0,
        window: int = 4096,
        shortest_first: bool = False,
        text_lengths: Callable[[list[dict[str, Any]]], np.ndarray] | None = None,
        check_window: Callable[[str, list[dict[str, Any]], int], None] | None = None,
    ):
        missing = sorted(set(streams) - set(budgets))
        if missing:
            raise ValueError(
                f"streaming draws every task as length-bucketed batches, and {missing} have no budget: give them "
                f"seconds_per_step (speech tasks) or tokens_per_step (text tasks) in the recipe."
            )
        if window < 1:
            raise ValueError(f"window must be at least 1 row, got {window}")
        self.streams, self.budgets, self.seed, self.window = dict(streams), dict(budgets), seed, window
        self.shortest_first, self.text_lengths, self.check_window = shortest_first, text_lengths, check_window
        self._windows: dict[str, _Window] = {}
        self._iterators: dict[str, Any] = {}
        self.load_state_dict({"step": 0, "tasks": {}})

    # ---- the TaskMixture interface ---------------------------------------------------------------------------

    def next_indices(self) -> dict[str, list[int]]:
        """The next step as task -> indices into that task's current window (read them with :meth:`examples`)."""
        step = {}
        for task in self.streams:
            cursor = self.cursors[task]
            if cursor["position"] == len(self._window(task).batches):
                self._advance(task)
            step[task] = list(self._windows[task].batches[cursor["position"]])
            cursor["position"] += 1
        self.step += 1
        return step

    def examples(self, indices: Mapping[str, Sequence[int]]) -> dict[str, list[dict]]:
        """task -> the rows at ``indices`` (the step :meth:`next_indices` just returned)."""
        return {task: [self._windows[task].rows[i] for i in idx] for task, idx in indices.items()}

    def next_batch(self) -> dict[str, list[dict]]:
        return self.examples(self.next_indices())

    def state_dict(self) -> dict[str, Any]:
        """The step, and per task its pass, window, batch position and the stream state at the window's start."""
        tasks = {}
        for task, cursor in self.cursors.items():
            window = self._windows.get(task)
            start = cursor["start_state"] if window is None else window.start_state
            tasks[task] = {**cursor, "start_state": copy.deepcopy(start)}
        return {"step": self.step, "tasks": tasks}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "cursors" in state:
            raise ValueError(
                "this mixture state was saved by a run that read its data in memory (without --streaming); resume "
                "it without --streaming, or start a new run from its weights (--init)"
            )
        self.step = int(state["step"])
        saved = state.get("tasks", {})
        self.cursors = {
            task: dict(saved.get(task) or {"pass": 0, "window": 0, "position": 0, "row": 0, "start_state": None})
            for task in self.streams
        }
        self._windows, self._iterators = {}, {}

    # ---- windows ---------------------------------------------------------------------------------------------

    def _window(self, task: str) -> _Window:
        """The task's current window, read on first use (after a resume: from the saved stream state)."""
        if task not in self._windows:
            cursor = self.cursors[task]
            self._windows[task] = self._read_window(task, cursor["start_state"])
            if not self._windows[task].rows:  # a resumed state at the very end of a pass
                self._advance(task)
        return self._windows[task]

    def _advance(self, task: str) -> None:
        """Move the task to its next window (the next pass's first when the stream has ended)."""
        cursor, current = self.cursors[task], self._windows[task]
        cursor["position"] = 0
        if not current.ended:
            cursor["window"] += 1
            cursor["row"] += len(current.rows)
            self._windows[task] = self._read_window(task, current.end_state)
            if self._windows[task].rows:
                return
        cursor.update({"pass": cursor["pass"] + 1, "window": 0, "row": 0})
        self._iterators.pop(task, None)
        self._windows[task] = self._read_window(task, None)
        if not self._windows[task].rows:
            raise ValueError(f"the {task!r} training stream has no rows")

    def _read_window(self, task: str, start_state: dict[str, Any] | None) -> _Window:
        """Read up to ``window`` rows from ``start_state`` (None: the stream's start), check and batch them."""
        cursor = self.cursors[task]
        iterator = self._iterators.get(task)
        if iterator is None:  # a new pass, or a resume: open the stream where the window starts
            stream = self.streams[task]()
            if start_state is not None:
                stream.load_state_dict(copy.deepcopy(start_state))
            iterator = self._iterators[task] = (stream, stream.iter(batch_size=self.window))
        stream, batches = iterator
        rows = _rows(next(batches, None))
        ended = len(rows) < self.window
        end_state = copy.deepcopy(stream.state_dict())
        if self.check_window is not None and rows:
            self.check_window(task, rows, cursor["row"])
        batches = self._batches(task, rows, cursor["pass"], cursor["window"]) if rows else []
        return _Window(rows, batches, copy.deepcopy(start_state), end_state, ended)

    def _batches(self, task: str, rows: list[dict[str, Any]], epoch: int, window: int) -> list[list[int]]:
        if task in SPEECH_TASKS:
            lengths = dataset_lengths(rows)
        elif self.text_lengths is None:
            raise ValueError(f"the text task {task!r} needs text_lengths (padded tokens per row)")
        else:
            lengths = np.asarray(self.text_lengths(rows))
        seed = self.seed + WINDOW_SEED_STRIDE * window
        sampler = LengthBucketBatchSampler(lengths, max_tokens=self.budgets[task], seed=seed)
        return sampler.epoch_batches(epoch, shortest_first=self.shortest_first and epoch == 0)


def first_rows(stream: Any, count: int) -> list[dict[str, Any]]:
    """The first ``count`` rows of an `IterableDataset`."""
    return _rows(next(stream.iter(batch_size=count), None))


# Rows are read a window at a time with `IterableDataset.iter(batch_size=...)`: one Arrow batch per window, and,
# unlike iter(stream), the same rows inside a DataLoader worker (where `datasets` would give each worker only its
# share of the stream's shards, and none to a worker beyond the number of shards).
def _rows(batch: dict[str, list[Any]] | None) -> list[dict[str, Any]]:
    if not batch:
        return []
    return [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]


__all__ = ["StreamingTaskMixture", "first_rows"]
