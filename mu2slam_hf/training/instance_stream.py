"""The training loop's stream of built mixture draws: a run's `TaskMixture` draws turned into `Mu2SlamInstance`
rows by the run's `InstanceBuilder`, in the training process or in DataLoader worker processes.

Masks come from a generator seeded per (seed, process, draw) (`step_generator`), so a draw's instances do not depend
on what ran before it (exact resumption), nor on which process builds them: `InstanceStream` builds the draws in
DataLoader worker processes and gives the same instances as building them in the training process.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..data.mixing import TaskMixture
from ..instances import InstanceBuilder, Mu2SlamInstance


def step_generator(seed: int, process_index: int, step: int) -> torch.Generator:
    """The mask generator of one step of one process."""
    state = np.random.SeedSequence([seed, process_index, step]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


@dataclass
class MixtureDraw:
    """One draw of a `TaskMixture`, built: its instances, and the mixture's state after it (what a checkpoint
    saves, so a resumed run continues with the next draw)."""

    index: int
    instances: list[Mu2SlamInstance]
    mixture_state: dict[str, Any]


class InstanceStream(IterableDataset):
    """A run's mixture draws built into instances, in draw order, endlessly.

    Iterated directly, every draw is built in the calling process and the mixture advances in place. Inside a
    ``DataLoader`` with ``num_workers=n`` (see :func:`instance_loader`), worker ``w`` builds draws ``w, w + n, ...``
    of its own copy of the mixture (it steps the cheap index draws of the others without reading their audio), and
    the DataLoader hands them back in draw order: the same instances as in the calling process, while audio
    decoding and feature extraction run beside training. Draw ``d`` uses the mask generator
    ``step_generator(seed, process_index, d)``.
    """

    def __init__(self, mixture: TaskMixture, builder: InstanceBuilder, seed: int, process_index: int = 0):
        self.mixture, self.builder = mixture, builder
        self.seed, self.process_index = seed, process_index

    def __iter__(self) -> Iterator[MixtureDraw]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        mixture, first = self.mixture, self.mixture.step
        while True:
            index = mixture.step
            indices = mixture.next_indices()
            if (index - first) % workers == worker:
                generator = step_generator(self.seed, self.process_index, index)
                instances = self.builder.build(mixture.examples(indices), generator)
                yield MixtureDraw(index, instances, mixture.state_dict())


def instance_loader(stream: InstanceStream, num_workers: int) -> Iterator[MixtureDraw]:
    """The stream's draws, built in ``num_workers`` DataLoader worker processes (0: in this process)."""
    if num_workers == 0:
        return iter(stream)
    loader = DataLoader(stream, batch_size=None, num_workers=num_workers, collate_fn=_with_arrays)
    return (_with_tensors(draw) for draw in loader)


# A draw holds dozens of small tensors; sent as tensors, each would get its own shared-memory segment (a file
# descriptor passed and mapped per tensor), which cost more than building the draw. As numpy arrays they are
# pickled by value through the worker's pipe, and `torch.from_numpy` takes them back without a copy.
def _with_arrays(draw: MixtureDraw) -> MixtureDraw:
    """In the worker: every tensor of the draw's instances as a numpy array."""
    return _map_instance_fields(draw, lambda value: value.numpy() if isinstance(value, torch.Tensor) else value)


def _with_tensors(draw: MixtureDraw) -> MixtureDraw:
    """In the training process: the arrays of `_with_arrays` back as tensors (no copy)."""
    return _map_instance_fields(
        draw, lambda value: torch.from_numpy(value) if isinstance(value, np.ndarray) else value
    )


def _map_instance_fields(draw: MixtureDraw, convert) -> MixtureDraw:
    instances = [
        dataclasses.replace(instance, **{name: convert(value) for name, value in vars(instance).items()})
        for instance in draw.instances
    ]
    return dataclasses.replace(draw, instances=instances)
