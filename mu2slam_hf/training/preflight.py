"""What a run checks before step 1, so that a data problem never costs the steps since the last checkpoint.

`check_run_data` checks the train and dev manifests once (every line parses, known tasks and the model's languages,
audio files exist, their headers read and they are long enough), reporting all problems together.
`warn_unknown_text` reports, per language, the texts the run's tokenizer would turn into ``<unk>``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..configuration_mu2slam import Mu2SlamConfig
from ..data.validation import check_corpus
from ..processing_mu2slam import Mu2SlamProcessor
from .recipe import Recipe

TEXT_FIELDS = (("source_text", "source_lang"), ("target_text", "target_lang"))


def run_languages(recipe: Recipe, resume_from: Path | None = None) -> list[str]:
    """The language codes of the model a run trains (from its checkpoint, overrides, init folder or preset)."""
    if resume_from is not None:
        return Mu2SlamConfig.from_pretrained(resume_from).languages
    if "languages" in recipe.model_overrides:
        return list(recipe.model_overrides["languages"])
    return Mu2SlamConfig.from_pretrained(recipe.init_checkpoint or recipe.model).languages


def check_run_data(recipe: Recipe, data_dir: str | os.PathLike, resume_from: Path | None = None) -> None:
    """Check the rows of the tasks the recipe draws, in ``train.jsonl`` and (when present) ``dev.jsonl``.

    Raises `mu2slam_hf.data.validation.CorpusError` listing every problem, or FileNotFoundError without train.jsonl.
    """
    drawn = {**recipe.examples_per_step, **dict.fromkeys(recipe.seconds_per_step, 1)}  # as `load_train_sources`
    tasks = [task for task, count in drawn.items() if count > 0]
    languages = run_languages(recipe, resume_from)
    check_corpus(data_dir, {"train": tasks, "dev": tasks}, languages, optional_splits=("dev",))


def warn_unknown_text(processor: Mu2SlamProcessor, sources: Iterable[Iterable[dict[str, Any]]], where: str) -> None:
    """Log, per language, the source and target texts of ``sources`` the processor's tokenizer cannot write."""
    texts, languages = [], []
    for rows in sources:
        for row in _text_columns(rows):
            for text_key, lang_key in TEXT_FIELDS:
                if row.get(text_key):
                    texts.append(row[text_key])
                    languages.append(row.get(lang_key) or row.get("source_lang") or "?")
    if texts:
        processor.warn_unknown_text(texts, languages, where)


def _text_columns(rows: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    """The rows without their audio (a `datasets.Dataset` reads only the text and language columns)."""
    if hasattr(rows, "select_columns"):
        return rows.select_columns([key for pair in TEXT_FIELDS for key in pair])
    return rows


__all__ = ["check_run_data", "run_languages", "warn_unknown_text"]
