"""Publish a trained Mu2SLAM folder on the Hugging Face Hub: check it loads, write its model card, upload it.

The uploaded repository holds exactly what `from_pretrained` and `pipeline(..., trust_remote_code=True)` need
(a seq2seq model; a `Mu2SlamForRetrieval` folder loads with `AutoModel` and is checked on its speech embedding):
safetensors weights, config, generation config, processor (feature extractor, text tokenizer, speech codebook),
the remote-code files, and a README.md model card filled from the config, the training recipes and the
evaluation JSON written by `training_scripts/evaluate.py` (read with `mu2slam_hf.evaluation.read_results`).

One module per job: `folder` (files, loading with the package, the upload folder), `remote_code` (the smoke
transcription or speech embedding without the package), `recipes` and `card` (the model card), `upload` (token,
one-commit upload).

Example:
    ```python
    from mu2slam_hf.hub import publish

    report = publish("runs/ft2", "me/mu2slam-small-synth", results="runs/ft2/eval.json", dry_run="upload_preview")
    ```
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..evaluation import read_results
from .card import MODEL_CARD_TEMPLATE, CardInputs, render_model_card, usage_example
from .errors import PublishError
from .folder import (
    RETRIEVAL_MODEL_TYPE,
    assemble_upload_folder,
    check_folder_files,
    folder_digest,
    load_locally,
    remote_code_files,
)
from .recipes import Recipe, default_recipe_paths, load_recipes
from .remote_code import (
    EMBEDDING_TOLERANCE,
    local_speech_embedding,
    local_transcription,
    remote_code_speech_embedding,
    remote_code_transcription,
    smoke_audio,
)
from .upload import resolve_token, upload

__all__ = [
    "MODEL_CARD_TEMPLATE",
    "CardInputs",
    "PublishError",
    "PublishReport",
    "Recipe",
    "assemble_upload_folder",
    "check_folder_files",
    "folder_digest",
    "load_locally",
    "load_recipes",
    "load_results",
    "publish",
    "remote_code_files",
    "remote_code_speech_embedding",
    "remote_code_transcription",
    "render_model_card",
    "resolve_token",
    "upload",
]


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """The evaluation JSON to publish with: `evaluation.read_results`, holding at least one metric.

    Its errors are raised as PublishErrors (same message), as every refusal of publishing is.
    """
    try:
        results = read_results(path)
    except (OSError, ValueError) as error:
        raise PublishError(str(error)) from error
    if not results["metrics"]:
        raise PublishError(f"Results file {os.fspath(path)!r} holds no metrics: evaluate the model on a test set.")
    return results


@dataclass
class PublishReport:
    """What `publish` did: the folder it wrote (dry run; a removed temp dir after an upload), its files, the smoke
    transcription (None for a retrieval model), the repository and commit URLs after an upload, and for a retrieval
    model the largest difference between the remote code's and the installed package's smoke speech embedding."""

    folder: Path
    files: list[str]
    transcription: str | None
    url: str | None = None
    commit_url: str | None = None
    embedding_difference: float | None = None


def publish(
    model_dir: str | os.PathLike,
    repo_id: str,
    results: str | os.PathLike,
    recipes: Sequence[str | os.PathLike] | None = None,
    *,
    private: bool = False,
    dry_run: str | os.PathLike | None = None,
    token: str | None = None,
    base_model: str | None = None,
    datasets: Sequence[str] = (),
    languages: Sequence[str] | None = None,
    license: str = "apache-2.0",
    synthetic_data: bool | None = None,
    audio: str | os.PathLike | None = None,
    src_lang: str | None = None,
    template: str | os.PathLike | None = None,
    commit_message: str | None = None,
) -> PublishReport:
    """Validate `model_dir`, assemble the upload folder with its model card, and upload it in one commit.

    Args:
        model_dir: a folder saved with `model.save_pretrained` and `processor.save_pretrained`.
        repo_id: `namespace/name` on the Hub.
        results: the evaluation JSON of `training_scripts/evaluate.py`.
        recipes: training recipe YAML files; by default the folder's `training_recipe.yaml` when present.
        private: create the repository as private.
        dry_run: write the exact upload folder here and upload nothing (no token needed).
        token: Hub token; default HF_TOKEN or the saved login.
        base_model / datasets / languages / license: card metadata (see `CardInputs`).
        synthetic_data: force (True/False) the synthetic-data warning; None detects it from paths and recipes.
        audio: 16 kHz file for the smoke run: the ASR pipeline, or `encode_speech` for a retrieval model (default: a
            synthetic 1-second clip).
        src_lang: language of the smoke run and the card's snippet (default: the first evaluated ASR language; for a
            retrieval model, the speech language of the first retrieval row).
        template: a Jinja2 model card template (default: the packaged `MODEL_CARD_TEMPLATE`).
    Returns:
        A `PublishReport`; raises `PublishError` with the fix for anything that would publish a broken model.
    """
    token = None if dry_run is not None else resolve_token(token)
    evaluation = load_results(results)
    recipe_list = load_recipes(default_recipe_paths(model_dir) if recipes is None else recipes)
    check_folder_files(model_dir)
    model, processor = load_locally(model_dir)
    inputs = CardInputs(
        repo_id,
        evaluation,
        recipe_list,
        base_model=base_model,
        datasets=list(datasets),
        languages=languages,
        license=license,
        synthetic_data=synthetic_data,
        smoke_lang=src_lang,
        results_file=Path(results).name,
    )
    card = render_model_card(model_dir, inputs, template)
    lang = usage_example(inputs, model.config.to_dict())["src_lang"]
    if lang not in model.config.languages:
        raise PublishError(f"--src_lang {lang!r} is not a language of this model: {model.config.languages}.")
    with tempfile.TemporaryDirectory(prefix="mu2slam-upload-") as staging:
        folder = Path(dry_run) if dry_run is not None else Path(staging) / "upload"
        files = assemble_upload_folder(model_dir, folder, str(card))
        clip = smoke_audio(audio)
        if model.config.model_type == RETRIEVAL_MODEL_TYPE:
            difference = check_speech_embedding(model, processor, folder, clip, lang)
            report = PublishReport(folder, files, None, embedding_difference=difference)
        else:
            report = PublishReport(folder, files, check_transcription(model, processor, folder, clip, lang))
        if dry_run is None:
            repo_url, commit = upload(folder, repo_id, token, private, commit_message)
            report.url, report.commit_url = str(repo_url), commit.commit_url
    return report


def check_transcription(model: Any, processor: Any, folder: Path, clip: Any, lang: str) -> str:
    """The remote code's smoke transcription of `clip`, which must be the installed package's."""
    expected = local_transcription(model, processor, clip, lang)
    transcription = remote_code_transcription(folder, clip, lang)
    if transcription != expected:
        raise PublishError(
            f"The remote code transcribes the smoke clip as {transcription!r} but the installed mu2slam_hf says "
            f"{expected!r}: the folder's .py files are stale. Save the model and processor again with the "
            "current mu2slam_hf."
        )
    return transcription


def check_speech_embedding(model: Any, processor: Any, folder: Path, clip: Any, lang: str) -> float:
    """Max |remote - installed| of the retrieval model's smoke speech embedding (`encode_speech`); above
    `EMBEDDING_TOLERANCE`, or another embedding size, the folder's remote code is stale."""
    expected = local_speech_embedding(model, processor, clip, lang)
    embedding = remote_code_speech_embedding(folder, clip, lang)
    if embedding.shape != expected.shape:
        found = f"{embedding.size} values instead of {expected.size}"
    else:
        difference = float(np.abs(embedding - expected).max())
        if difference <= EMBEDDING_TOLERANCE:
            return difference
        found = f"max abs difference {difference:.3g} > {EMBEDDING_TOLERANCE:g}"
    raise PublishError(
        f"The remote code's encode_speech embeds the smoke clip differently from the installed mu2slam_hf ({found}): "
        "the folder's .py files are stale. Save the model and processor again with the current mu2slam_hf."
    )
