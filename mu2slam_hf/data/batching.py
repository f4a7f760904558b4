"""Length-bucketed batching under a frame/token budget, and a streaming path sharded across processes.

Lengths: speech examples count feature frames (``duration * frames_per_second``, 100/s by default: 10 ms
hops), text examples count characters of their input unless a ``length_fn`` (e.g. a tokenizer's) is given.
A batch's cost is ``max length * batch size`` (what padding allocates); it never exceeds ``max_tokens``
(a single longer example forms its own batch).

Streaming: :class:`ShardedStream` yields each example to exactly one (process, DataLoader worker) pair:
index ``i`` goes to shard ``i % (world_size * num_workers)``. Use it with a plain ``DataLoader`` and pass
``rank=accelerator.process_index, world_size=accelerator.num_processes``; do not ``accelerator.prepare``
that DataLoader (Accelerate would dispatch from rank 0 or re-shard it with ``IterableDatasetShard``).
Shards can hold different numbers of batches (bucketing, bad examples skipped, a source that does not divide
evenly); under DDP a process that runs out while another still steps would wait forever in the next gradient
all-reduce, so iterate the loader through :func:`until_any_process_ends`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, Sampler, get_worker_info

from .audio import decode_example
from .schema import SPEECH_TASKS, DataError, OnError, check_example, column_values, handle_error


def example_length(example: dict[str, Any], frames_per_second: float = 100.0) -> int:
    """Frames for speech examples (from ``duration`` or a decoded array), characters for text examples."""
    if example.get("task") in SPEECH_TASKS:
        audio = example.get("audio") or {}
        if audio.get("array") is not None:
            return max(1, round(len(audio["array"]) / audio["sampling_rate"] * frames_per_second))
        return max(1, round((example.get("duration") or 0.0) * frames_per_second))
    return max(1, len(example.get("source_text") or ""))


def dataset_lengths(source: Any, frames_per_second: float = 100.0) -> np.ndarray:
    """:func:`example_length` of every example; column-wise for a ``datasets.Dataset``."""
    if hasattr(source, "column_names"):
        tasks, durations, texts = (column_values(source, name) for name in ("task", "duration", "source_text"))
        return np.array([
            max(1, round((d or 0.0) * frames_per_second)) if t in SPEECH_TASKS else max(1, len(x or ""))
            for t, d, x in zip(tasks, durations, texts, strict=True)
        ])  # fmt: skip
    return np.array([example_length(e, frames_per_second) for e in source])


def text_token_lengths(source: Any, tokenizer: Any) -> np.ndarray:
    """Per text example, the longer of its source and target in tokens (with special tokens): the padded length
    a text batch costs. ``tokenizer`` is a Hugging Face tokenizer; ``source`` a ``datasets.Dataset`` or dicts."""

    def column(name: str) -> list[str]:
        return [text or "" for text in column_values(source, name)]

    count = _token_counter(tokenizer)
    return np.maximum(count(column("source_text")), count(column("target_text")))


TOKEN_COUNT_CHUNK = 8192  # texts encoded at once: an encoding holds ids, offsets and strings per token


def _token_counter(tokenizer: Any) -> Callable[[list[str]], np.ndarray]:
    """A function giving the tokens (special ones included) of each text. A fast tokenizer's backend counts them
    without building the offsets and Python lists of a ``tokenizer(texts)`` call (the same counts, in less time)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_batch_fast"):
        return lambda texts: np.array([len(ids) for ids in tokenizer(texts)["input_ids"]], dtype=np.int64)
    # a copy without the padding or truncation the saved tokenizer may carry (a call sets its own on the shared one)
    backend = type(backend).from_str(backend.to_str())
    backend.no_padding()
    backend.no_truncation()

    def count(texts: list[str]) -> np.ndarray:
        counts = np.empty(len(texts), dtype=np.int64)
        for start in range(0, len(texts), TOKEN_COUNT_CHUNK):
            encodings = backend.encode_batch_fast(texts[start : start + TOKEN_COUNT_CHUNK], add_special_tokens=True)
            counts[start : start + len(encodings)] = [len(encoding.ids) for encoding in encodings]
        return counts

    return count


def _cut(order: Iterable[int], lengths: Sequence[int], max_tokens: int, max_batch_size: int | None) -> list[list[int]]:
    batches, batch, longest = [], [], 0
    for i in order:
        new_longest = max(longest, lengths[i])
        full = max_batch_size is not None and len(batch) >= max_batch_size
        if batch and (new_longest * (len(batch) + 1) > max_tokens or full):
            batches.append(batch)
            batch, new_longest = [], lengths[i]
        batch.append(i)
        longest = new_longest
    if batch:
        batches.append(batch)
    return batches


def padded_fraction(batches: Iterable[Sequence[int]], lengths: Sequence[int]) -> float:
    """Share of padding in the padded batches: ``1 - real / (sum over batches of max length * size)``."""
    real = padded = 0
    for batch in batches:
        sizes = [lengths[i] for i in batch]
        real += sum(sizes)
        padded += max(sizes) * len(sizes)
    return 1.0 - real / padded if padded else 0.0


def random_batches(lengths: Sequence[int], max_tokens: int, seed: int = 0, max_batch_size: int | None = None):
    """The naive baseline: a random order cut under the same budget (for comparison with bucketing)."""
    order = np.random.default_rng(seed).permutation(len(lengths))
    return _cut(order, lengths, max_tokens, max_batch_size)


class LengthBucketBatchSampler(Sampler[list[int]]):
    """Batches of similar length under a ``max_tokens`` budget (``max length * size``).

    Indices are shuffled, split into pools of ``pool_size`` batches' worth of examples, sorted by length
    inside each pool and cut greedily; the batch order is then shuffled. Pass as ``batch_sampler=`` to a
    ``DataLoader``; call :meth:`set_epoch` for a new order each epoch.

    Args:
        lengths: per-example lengths (see :func:`dataset_lengths`).
        max_tokens: cap on ``max length * batch size`` (frames or tokens).
        max_batch_size: optional cap on examples per batch.
        pool_size: examples sorted together; larger pools pad less but mix lengths less across batches.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        max_tokens: int,
        max_batch_size: int | None = None,
        pool_size: int = 4096,
        shuffle: bool = True,
        seed: int = 0,
    ):
        self.lengths = np.asarray(lengths)
        self.max_tokens, self.max_batch_size, self.pool_size = max_tokens, max_batch_size, pool_size
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self._batches = self._make_batches()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._batches = self._make_batches()

    def epoch_batches(
        self, epoch: int, shortest_first: bool = False, indices: Sequence[int] | None = None
    ) -> list[list[int]]:
        """The batches of ``epoch`` (without changing the sampler's own epoch); ``shortest_first`` orders them by
        their longest example instead of shuffling (SortaGrad's first epoch). ``indices``: batch these examples
        (a subset, or a multiset where some repeat) instead of every example once."""
        batches = self._make_batches(epoch, indices)
        if shortest_first:
            batches.sort(key=lambda batch: int(self.lengths[batch].max()))
        return batches

    def _make_batches(self, epoch: int | None = None, indices: Sequence[int] | None = None) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch if epoch is None else epoch])
        examples = np.arange(len(self.lengths)) if indices is None else np.asarray(indices, dtype=np.int64)
        order = examples[rng.permutation(len(examples))] if self.shuffle else examples
        batches = []
        for start in range(0, len(order), self.pool_size):
            pool = order[start : start + self.pool_size]
            pool = pool[np.argsort(self.lengths[pool], kind="stable")]
            batches += _cut(pool.tolist(), self.lengths, self.max_tokens, self.max_batch_size)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches)

    def __len__(self) -> int:
        return len(self._batches)

    def padded_fraction(self) -> float:
        return padded_fraction(self._batches, self.lengths)


def distributed_rank_and_size() -> tuple[int, int]:
    """(rank, world size) from torch.distributed when initialised, else the ``RANK``/``WORLD_SIZE`` variables
    that ``accelerate launch`` and ``torchrun`` set, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class ShardedStream(IterableDataset):
    """Streams examples (optionally decoded, checked, bucketed into batches), one disjoint shard per
    (process, DataLoader worker).

    Args:
        source: a ``datasets.Dataset``, a sequence of examples, or a callable returning a fresh iterator.
        rank, world_size: this process and the process count (default: :func:`distributed_rank_and_size`).
        decode: decode audio to 16 kHz mono arrays (:func:`~mu2slam_hf.data.audio.decode_example`).
        on_error: ``"skip"`` reports bad examples with their id (via ``report`` or a warning) and drops
            them; ``"raise"`` raises :class:`DataError`. Errors never escape as anything but DataError.
        languages: allowed language codes for the schema check (None: any).
        max_tokens: when set, yield length-bucketed batches (lists of examples) instead of examples, sorted
            within a buffer of ``buffer_size`` examples.
    """

    def __init__(
        self,
        source: Any,
        rank: int | None = None,
        world_size: int | None = None,
        decode: bool = True,
        on_error: OnError = "skip",
        report: Callable[[DataError], None] | None = None,
        languages: Sequence[str] | None = None,
        max_tokens: int | None = None,
        buffer_size: int = 1024,
        length_fn: Callable[[dict], int] = example_length,
    ):
        self.source, self.decode, self.on_error, self.report = source, decode, on_error, report
        self.languages = languages
        self.max_tokens, self.buffer_size, self.length_fn = max_tokens, buffer_size, length_fn
        default_rank, default_size = distributed_rank_and_size()
        self.rank = default_rank if rank is None else rank
        self.world_size = default_size if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside world size {self.world_size}")

    def shard(self) -> tuple[int, int]:
        """(this reader's shard index, number of shards) over processes times DataLoader workers."""
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        return self.rank * workers + worker, self.world_size * workers

    def _examples(self) -> Iterator[dict[str, Any]]:
        index, count = self.shard()
        if hasattr(self.source, "column_names") or isinstance(self.source, Sequence):
            for i in range(index, len(self.source), count):
                yield self.source[i]
            return
        for i, example in enumerate(self.source()):
            if i % count == index:
                yield example

    def _good_examples(self) -> Iterator[dict[str, Any]]:
        for example in self._examples():
            try:
                check_example(example, self.languages)
                yield decode_example(example) if self.decode else example
            except DataError as error:
                handle_error(error, self.on_error, self.report)

    def __iter__(self) -> Iterator[Any]:
        examples = self._good_examples()
        if self.max_tokens is None:
            yield from examples
            return
        buffer: list[dict[str, Any]] = []
        for example in examples:
            buffer.append(example)
            if len(buffer) >= self.buffer_size:
                yield from self._bucket(buffer)
                buffer = []
        yield from self._bucket(buffer)

    def _bucket(self, buffer: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
        lengths = [self.length_fn(e) for e in buffer]
        order = sorted(range(len(buffer)), key=lengths.__getitem__)
        for batch in _cut(order, lengths, self.max_tokens, None):
            yield [buffer[i] for i in batch]


def until_any_process_ends(batches: Iterable[Any], device: torch.device | str = "cpu") -> Iterator[Any]:
    """Yields ``batches`` while every process still has one, so that all processes take the same number of steps.

    One all-reduce (MIN) of a flag per batch: when any process's shard is exhausted, every process stops before its
    next step (the other shards' remaining batches are dropped for this epoch, as ``drop_last`` would). Without
    torch.distributed initialised, yields every batch. ``device``: where the flag lives (the backend's device:
    CPU for gloo, the process's GPU for NCCL).
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        yield from batches
        return
    iterator = iter(batches)
    while True:
        batch = next(iterator, _EXHAUSTED)
        flag = torch.tensor([0 if batch is _EXHAUSTED else 1], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        if not int(flag):
            return
        yield batch


_EXHAUSTED = object()
