"""What a run checks before step 1, so that a data problem never costs the steps since the last checkpoint.

`check_run_data` checks the train and dev rows once (every manifest line parses, known tasks and the model's
languages, audio files exist, their headers read and they are long enough), reporting all problems together.
`warn_unknown_text` reports, per language, the texts the run's tokenizer would turn into ``<unk>``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

from ..configuration_mu2slam import Mu2SlamConfig
from ..data.schema import column_rows
from ..data.training_data import TrainingData
from ..data.validation import CorpusError, row_problems
from ..processing_mu2slam import Mu2SlamProcessor
from .recipe import Recipe

TEXT_FIELDS = (("source_text", "source_lang"), ("target_text", "target_lang"))


class UnknownTextError(ValueError):
    """Train texts hold characters the tokenizer of a trained folder cannot write."""


def run_languages(recipe: Recipe, resume_from: Path | None = None) -> list[str] | None:
    """The language codes of the model a run trains (from its checkpoint, overrides, init folder or preset); None
    (any code) when the run adds the data's languages (``extend_vocabulary``)."""
    if resume_from is not None:
        return Mu2SlamConfig.from_pretrained(resume_from).languages
    if recipe.extend_vocabulary:
        return None
    if "languages" in recipe.model_overrides:
        return list(recipe.model_overrides["languages"])
    return Mu2SlamConfig.from_pretrained(recipe.init_checkpoint or recipe.model).languages


def check_run_data(recipe: Recipe, data: TrainingData, resume_from: Path | None = None) -> None:
    """Check the rows of the tasks the recipe draws, in the train split and (when there is one) the eval split.

    Raises `mu2slam_hf.data.validation.CorpusError` listing every problem, or FileNotFoundError without train data.
    """
    tasks = recipe.drawn_tasks()
    splits = {data.train_split_name: tasks}
    eval_split = data.resolved_eval_split()
    if eval_split is not None:
        splits[eval_split] = tasks
    data.check(splits, run_languages(recipe, resume_from))


def check_stream_rows(
    data: TrainingData,
    tasks: Collection[str],
    languages: Collection[str] | None,
    split: str,
    rows: Sequence[dict[str, Any]],
    first_row: int,
    when: str = "nothing has been run yet",
) -> None:
    """Check rows of a streamed split as they are read (a stream cannot be checked whole before step 1): raise a
    `CorpusError` naming each bad row by its place in the stream (``split row N``)."""
    numbered = ((f"{split} row {first_row + i}", row) for i, row in enumerate(rows))
    problems = row_problems(numbered, tasks, languages)
    if problems:
        raise CorpusError(str(data), problems, languages, when=when)


def check_train_window(
    data: TrainingData, tasks: Collection[str], languages: Collection[str] | None, task: str,
    rows: Sequence[dict[str, Any]], first_row: int,
) -> None:  # fmt: skip
    """`StreamingTaskMixture`'s check of each window of train rows it reads after the first."""
    when = (f"found when training reached them (the {task} rows from {first_row} on); the checkpoints written so "
            f"far are kept, and --resume continues from the last one once the rows are fixed or filtered out")  # fmt: skip
    check_stream_rows(data, tasks, languages, data.train_split_name, rows, first_row, when)


def warn_unknown_text(processor: Mu2SlamProcessor, sources: Iterable[Iterable[dict[str, Any]]], where: str) -> None:
    """Log, per language, the source and target texts of ``sources`` the processor's tokenizer cannot write."""
    texts, languages = _texts_and_languages(sources)
    if texts:
        processor.warn_unknown_text(texts, languages, where)


def refuse_unknown_text(processor: Mu2SlamProcessor, sources: Iterable[Iterable[dict[str, Any]]], where: str) -> None:
    """Raise `UnknownTextError` when train texts hold characters the (trained) tokenizer writes as ``<unk>``."""
    texts, languages = _texts_and_languages(sources)
    report = processor.tokenizer.unknown_text_report(zip(languages, texts, strict=True))
    if report:
        message = report.message(f"the train texts, with the tokenizer of {where}")
        raise UnknownTextError(
            message.replace(
                "Use a tokenizer trained on text with these characters, or clean the texts.",
                "Nothing has been run. Pass --extend_vocabulary (recipe `extend_vocabulary: true`) to add these "
                "characters as tokens with new embedding rows, or clean the texts.",
            )
        )


def _texts_and_languages(sources: Iterable[Iterable[dict[str, Any]]]) -> tuple[list[str], list[str]]:
    """Every source and target text of ``sources`` with its language."""
    texts, languages = [], []
    for rows in sources:
        for row in _text_columns(rows):
            for text_key, lang_key in TEXT_FIELDS:
                if text_key == "target_text" and row.get("target_text") == row.get("source_text"):
                    continue  # an ASR transcript is both; count it once
                if row.get(text_key):
                    texts.append(row[text_key])
                    languages.append(row.get(lang_key) or row.get("source_lang") or "?")
    return texts, languages


def _text_columns(rows: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    """The rows without their audio (a `datasets.Dataset` reads only the text and language columns)."""
    return column_rows(rows, [key for pair in TEXT_FIELDS for key in pair])


__all__ = [
    "UnknownTextError",
    "check_run_data",
    "check_stream_rows",
    "check_train_window",
    "refuse_unknown_text",
    "run_languages",
    "warn_unknown_text",
]
