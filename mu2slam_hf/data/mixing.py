"""Per-step task mixing with temperature-based language sampling (Mu2SLAM 3.1, after mSLAM).

Every step draws ``examples_per_step[task]`` examples of each task (the paper: speech-only 4, text-only 8,
ASR 1, AST 1, MT 1), or, for the tasks given ``seconds_per_step`` (speech) or ``tokens_per_step`` (text), one
length-bucketed batch of about that many seconds of padded audio or padded tokens (:class:`~mu2slam_hf.data.batching.LengthBucketBatchSampler`: similar lengths, little
padding; optionally shortest first in the first epoch, a curriculum). Within a task the language (``"src-tgt"`` for AST/MT pairs, see
:func:`~mu2slam_hf.data.schema.example_language`) is drawn with ``p_l ∝ n_l ** (1 / T)`` (T=3 text-only,
T=2 MT, T=1 elsewhere: proportional to size), then the next example of a seeded per-language permutation
is taken (a new permutation every pass). Length-bucketed tasks apply the same probabilities per epoch: each
epoch batches the languages' shares of the task's examples. Deterministic given the seed, and resumable:
``state_dict()`` stores the step, the generator state and the per-language cursors.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from .batching import LengthBucketBatchSampler, dataset_lengths
from .schema import TASKS, column_values, example_language

PAPER_EXAMPLES_PER_STEP = {"speech": 4, "text": 8, "asr": 1, "ast": 1, "mt": 1}
PAPER_LANGUAGE_TEMPERATURE = {"text": 3.0, "mt": 2.0}


def temperature_probabilities(counts: Mapping[str, int], temperature: float) -> dict[str, float]:
    """``p_l = n_l^(1/T) / sum_k n_k^(1/T)`` over the languages with examples."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    weights = {lang: n ** (1.0 / temperature) for lang, n in counts.items() if n > 0}
    total = sum(weights.values())
    return {lang: w / total for lang, w in weights.items()}


def step_budgets(
    seconds_per_step: Mapping[str, float] | None, tokens_per_step: Mapping[str, int] | None
) -> dict[str, int]:
    """task -> the padded size of its batch each step: frames for speech tasks (100 per second), tokens for text."""
    budgets = {task: int(seconds * 100) for task, seconds in (seconds_per_step or {}).items()}
    budgets.update(tokens_per_step or {})
    return budgets


def _language_keys(source: Any) -> list[str]:
    """Per-example language keys, read column-wise (see :func:`~mu2slam_hf.data.schema.column_values`)."""
    rows = zip(*(column_values(source, name) for name in ("task", "source_lang", "target_lang")), strict=True)
    return [example_language({"task": t, "source_lang": s, "target_lang": g}) for t, s, g in rows]


class TaskMixture:
    """An endless, resumable stream of mixed-task steps.

    Args:
        sources: task -> examples (a ``datasets.Dataset`` or a sequence of dicts in the canonical schema).
        examples_per_step: task -> examples drawn per step (default: the paper's 4/8/1/1/1).
        language_temperature: task -> sampling temperature T (default: text 3, MT 2; others 1).
        seed: seeds every draw.
        seconds_per_step: task -> seconds of padded audio per step (speech tasks): the task then draws one
            length-bucketed batch per step, walking a shuffled list of batches epoch after epoch, instead of
            ``examples_per_step`` examples. Each epoch holds as many examples as the task has, with language l's
            share ``p_l`` of the temperature (at T=1 every example once; otherwise a language above its share
            gives a different subset each epoch and one below it repeats examples).
        tokens_per_step: task -> padded tokens per step (text tasks), drawn as ``seconds_per_step``; the tokens of
            each example are ``token_lengths[task]`` (see :func:`~mu2slam_hf.data.batching.text_token_lengths`).
        shortest_first: the first epoch of the length-bucketed tasks goes from the shortest batches to the
            longest (SortaGrad); later epochs are shuffled.
    """

    def __init__(
        self,
        sources: Mapping[str, Sequence[dict] | Any],
        examples_per_step: Mapping[str, int] | None = None,
        language_temperature: Mapping[str, float] | None = None,
        seed: int = 0,
        seconds_per_step: Mapping[str, float] | None = None,
        shortest_first: bool = False,
        tokens_per_step: Mapping[str, int] | None = None,
        token_lengths: Mapping[str, Sequence[int]] | None = None,
    ):
        unknown = set(sources) - set(TASKS)
        if unknown:
            raise ValueError(f"unknown tasks {sorted(unknown)}; expected a subset of {TASKS}")
        per_step = dict(PAPER_EXAMPLES_PER_STEP if examples_per_step is None else examples_per_step)
        budgets = step_budgets(seconds_per_step, tokens_per_step)
        per_step.update({task: 1 for task in budgets if task in sources})
        self.sources = {task: source for task, source in sources.items() if per_step.get(task, 0) > 0}
        lengths = {
            task: dataset_lengths(self.sources[task]) for task in seconds_per_step or {} if task in self.sources
        }
        for task in tokens_per_step or {}:
            if task in self.sources and task not in (token_lengths or {}):
                raise ValueError(f"tokens_per_step[{task!r}] needs token_lengths[{task!r}] (text_token_lengths)")
            if task in self.sources:
                lengths[task] = np.asarray(token_lengths[task])
        self.bucketed = {
            task: LengthBucketBatchSampler(lengths[task], max_tokens=budgets[task], seed=seed) for task in lengths
        }
        self.shortest_first = shortest_first
        self._bucket_orders: dict[str, tuple[int, list[list[int]]]] = {}
        self.examples_per_step = {task: int(per_step[task]) for task in self.sources}
        temperatures = PAPER_LANGUAGE_TEMPERATURE if language_temperature is None else language_temperature
        self.seed = seed
        self.indices: dict[str, dict[str, np.ndarray]] = {}
        self.probabilities: dict[str, dict[str, float]] = {}
        # Bucketed tasks sampled away from their data's proportions: language -> examples in each epoch.
        self.epoch_shares: dict[str, dict[str, int]] = {}
        for task, source in self.sources.items():
            groups: dict[str, list[int]] = defaultdict(list)
            for i, key in enumerate(_language_keys(source)):
                groups[key].append(i)
            if not groups:
                raise ValueError(f"task {task!r} has no examples")
            self.indices[task] = {key: np.asarray(idx) for key, idx in sorted(groups.items())}
            counts = {key: len(idx) for key, idx in self.indices[task].items()}
            temperature = temperatures.get(task, 1.0)
            self.probabilities[task] = temperature_probabilities(counts, temperature)
            if task in self.bucketed and temperature != 1.0 and len(counts) > 1:
                total = sum(counts.values())
                self.epoch_shares[task] = {
                    key: max(1, round(p * total)) for key, p in self.probabilities[task].items()
                }
        self._permutations: dict[tuple[str, str, int], np.ndarray] = {}
        self.load_state_dict({"step": 0, "rng": np.random.default_rng(seed).bit_generator.state, "cursors": {}})

    def _permutation(self, task: str, lang: str, epoch: int) -> np.ndarray:
        key = (task, lang, epoch)
        if key not in self._permutations:
            digest = int(hashlib.sha256(f"{self.seed}:{task}:{lang}:{epoch}".encode()).hexdigest(), 16) % 2**63
            self._permutations = {k: v for k, v in self._permutations.items() if k[:2] != (task, lang)}
            self._permutations[key] = np.random.default_rng(digest).permutation(self.indices[task][lang])
        return self._permutations[key]

    def _next_index(self, task: str, lang: str) -> int:
        epoch, position = self.cursors[task].get(lang, (0, 0))
        permutation = self._permutation(task, lang, epoch)
        index = int(permutation[position])
        position += 1
        self.cursors[task][lang] = (epoch + 1, 0) if position == len(permutation) else (epoch, position)
        return index

    def _epoch_examples(self, task: str, epoch: int) -> np.ndarray | None:
        """The examples of a bucketed task's ``epoch`` under temperature sampling (None: every example once).
        Language l contributes the next ``epoch_shares[task][l]`` examples of its endless sequence of seeded
        permutations, so epochs go through each language's examples in turn, and the epoch number alone fixes
        them (resuming needs no more state)."""
        shares = self.epoch_shares.get(task)
        if shares is None:
            return None
        parts = []
        for lang, share in shares.items():
            size = len(self.indices[task][lang])
            start, end = epoch * share, (epoch + 1) * share
            first_pass, last_pass = start // size, (end - 1) // size
            passes = np.concatenate([self._permutation(task, lang, k) for k in range(first_pass, last_pass + 1)])
            parts.append(passes[start - first_pass * size : end - first_pass * size])
        return np.concatenate(parts)

    def _next_bucket(self, task: str) -> list[int]:
        """The next length-bucketed batch of a task with a length budget per step."""
        epoch, position = self.cursors[task].get("*", (0, 0))
        if self._bucket_orders.get(task, (None,))[0] != epoch:
            shortest_first = self.shortest_first and epoch == 0
            examples = self._epoch_examples(task, epoch)
            self._bucket_orders[task] = (epoch, self.bucketed[task].epoch_batches(epoch, shortest_first, examples))
        batches = self._bucket_orders[task][1]
        position += 1
        self.cursors[task]["*"] = (epoch + 1, 0) if position == len(batches) else (epoch, position)
        return [int(i) for i in batches[position - 1]]

    def next_indices(self) -> dict[str, list[int]]:
        """The next step as task -> indices into ``sources[task]``."""
        step = {}
        for task, count in self.examples_per_step.items():
            if task in self.bucketed:
                step[task] = self._next_bucket(task)
                continue
            langs = list(self.probabilities[task])
            draws = self.rng.choice(len(langs), size=count, p=[self.probabilities[task][lang] for lang in langs])
            step[task] = [self._next_index(task, langs[d]) for d in draws]
        self.step += 1
        return step

    def examples(self, indices: Mapping[str, Sequence[int]]) -> dict[str, list[dict]]:
        """task -> the examples at ``indices`` (a step of :meth:`next_indices`)."""
        return {task: [self.sources[task][i] for i in idx] for task, idx in indices.items()}

    def next_batch(self) -> dict[str, list[dict]]:
        """The next step as task -> examples."""
        return self.examples(self.next_indices())

    def __iter__(self) -> Iterator[dict[str, list[dict]]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue with the same next steps (JSON-serialisable)."""
        return {
            "step": self.step,
            "rng": self.rng.bit_generator.state,
            "cursors": {
                task: {lang: list(c) for lang, c in cursors.items()} for task, cursors in self.cursors.items()
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "rng" not in state:
            raise ValueError(
                "this mixture state was saved by a run that streamed its data (--streaming); resume it with "
                "--streaming, or start a new run from its weights (--init)"
            )
        self.step = int(state["step"])
        self.rng = np.random.default_rng(self.seed)
        self.rng.bit_generator.state = state["rng"]
        cursors = state.get("cursors", {})
        self.cursors = {task: {lang: tuple(c) for lang, c in cursors.get(task, {}).items()} for task in self.sources}
