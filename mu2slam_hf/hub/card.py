"""The model card: metadata and Markdown filled from the saved folder, the evaluation results and the recipes.

The default template ships inside the package (`templates/mu2slam_model_card.md.jinja`), so publishing works from
an installed wheel as well as from a checkout.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..asr_decoding import AsrDecodingOptions
from ..evaluation import signature_line
from ..ngram_lm import LM_FILE_NAME
from .folder import RETRIEVAL_MODEL_TYPE, weight_files
from .recipes import Recipe, recipe_strings, recipe_values

MODEL_CARD_TEMPLATE = resources.files(__package__) / "templates" / "mu2slam_model_card.md.jinja"
TRAINER_STATE_FILES = ("trainer_state.json", "training_state.json")
# Per task of the evaluation JSON: the Hub's task type and the card's title.
HUB_TASKS = {
    "asr": ("automatic-speech-recognition", "Automatic Speech Recognition"),
    "ast": ("automatic-speech-recognition", "Speech Translation"),
    "mt": ("translation", "Machine Translation"),
    "classification": ("text-classification", "Text Classification"),
    "lid": ("audio-classification", "Spoken Language Identification"),
    "retrieval": ("feature-extraction", "Speech-Text Retrieval"),
}
METRIC_LABELS = {
    "wer": "WER",
    "cer": "CER",
    "bleu": "BLEU",
    "chrf": "chrF",
    "accuracy": "Accuracy",
    "nll": "NLL",
    **{f"s2t_r{k}": f"Speech→Text R@{k}" for k in (1, 5, 10)},
    **{f"t2s_r{k}": f"Text→Speech R@{k}" for k in (1, 5, 10)},
}
LOWER_IS_BETTER = {"wer", "cer", "nll"}
BASE_MODEL_KEYS = ("base_model", "init_from", "model_name_or_path", "pretrained_model", "init_checkpoint")
DATASET_KEYS = ("dataset", "datasets", "dataset_name", "hub_dataset", "train_data", "data")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
SYNTHETIC = re.compile(r"synth", re.IGNORECASE)


@dataclass
class CardInputs:
    """Everything the model card is filled from, besides the saved folder.

    `results` is the evaluation JSON as `mu2slam_hf.evaluation.read_results` returns it.
    """

    repo_id: str
    results: dict[str, Any]
    recipes: list[Recipe] = field(default_factory=list)
    base_model: str | None = None
    datasets: list[str] = field(default_factory=list)
    languages: list[str] | None = None
    license: str = "apache-2.0"
    synthetic_data: bool | None = None
    smoke_lang: str | None = None
    results_file: str = "eval.json"


def metric_pair(entry: dict[str, Any]) -> str:
    """`fr` for ASR, classification and language identification, `fr → en` for translation tasks and retrieval
    (speech language → text language)."""
    if entry["task"] in ("asr", "classification", "lid"):
        return entry["source_lang"]
    return f"{entry['source_lang']} → {entry['target_lang']}"


def is_synthetic(inputs: CardInputs, model_dir: str | os.PathLike) -> bool:
    """Explicit flag, else whether the evaluation data, a recipe's values or the model path say synthetic."""
    if inputs.synthetic_data is not None:
        return inputs.synthetic_data
    texts = [inputs.results["data"], str(model_dir), *inputs.datasets]
    texts += [value for recipe in inputs.recipes for value in recipe_strings(recipe.content)]
    return any(SYNTHETIC.search(text) for text in texts)


def _hub_ids(values: Iterable[str]) -> list[str]:
    """Values that look like Hub repo ids and are not local paths (the Hub rejects paths in the metadata)."""
    return list(dict.fromkeys(v for v in values if HUB_ID.match(v) and not Path(v).exists()))


def base_model_of(inputs: CardInputs) -> str | None:
    """The model this one was fine-tuned from: `--base_model`, else a recipe's base/init model."""
    if inputs.base_model:
        return inputs.base_model
    found = [v for recipe in inputs.recipes for v in recipe_values(recipe.content, BASE_MODEL_KEYS)]
    return found[0] if found else None


def card_languages(inputs: CardInputs, config: dict) -> list[str]:
    """Explicit languages, else those evaluated, else the model's language embeddings."""
    if inputs.languages:
        return list(inputs.languages)
    evaluated = [code for m in inputs.results["metrics"] for code in (m["source_lang"], m["target_lang"])]
    return list(dict.fromkeys(c for c in evaluated if c in config["languages"])) or list(config["languages"])


def eval_results(inputs: CardInputs) -> list:
    """One huggingface_hub EvalResult per measured value (the card's `model-index`)."""
    from huggingface_hub import EvalResult

    results = inputs.results
    return [
        EvalResult(
            task_type=HUB_TASKS[m["task"]][0],
            task_name=f"{HUB_TASKS[m['task']][1]} ({metric_pair(m)})",
            dataset_type=results["data"],
            dataset_name=f"{results['data']} ({metric_pair(m)})",
            dataset_config=_dataset_config(m),
            dataset_split=results["split"],
            metric_type=m["name"],
            metric_name=f"{METRIC_LABELS[m['name']]} ({metric_pair(m)})",
            metric_value=m["value"],
        )
        for m in results["metrics"]
    ]


def _dataset_config(entry: dict[str, Any]) -> str:
    """The language (`fr`) or the pair (`fr-en`)."""
    source, target = entry["source_lang"], entry["target_lang"]
    return source if source == target else f"{source}-{target}"


def card_tables(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per task: the metric columns and one row per language (pair), for the card's Markdown tables."""
    tables = []
    for task in dict.fromkeys(m["task"] for m in results["metrics"]):
        metrics = [m for m in results["metrics"] if m["task"] == task]
        names = list(dict.fromkeys(m["name"] for m in metrics))
        rows = []
        for pair in dict.fromkeys(metric_pair(m) for m in metrics):
            values = {m["name"]: m for m in metrics if metric_pair(m) == pair}
            cells = [f"{values[n]['value']:.4g}" if n in values else "–" for n in names]
            examples = max(v["num_examples"] for v in values.values())
            rows.append({"pair": pair, "cells": cells, "num_examples": examples})
        columns = [METRIC_LABELS[n] + (" ↓" if n in LOWER_IS_BETTER else " ↑") for n in names]
        header = "speech → text" if task == "retrieval" else "language"
        tables.append({"task": task, "title": HUB_TASKS[task][1], "header": header, "columns": columns, "rows": rows})
    return tables


def architecture_facts(model_dir: Path, config: dict) -> dict[str, Any]:
    """Sizes, layers and vocabulary layout for the card."""
    from safetensors import safe_open

    parameters = 0
    for name in weight_files(model_dir):
        if name.endswith(".safetensors"):
            with safe_open(str(model_dir / name), framework="pt") as weights:
                parameters += sum(int(np.prod(weights.get_slice(k).get_shape())) for k in weights.keys())
    codebook = json.loads((model_dir / "speech_codebook.json").read_text(encoding="utf-8"))
    return {
        "parameters": f"{parameters / 1e6:.1f}M",
        "codebook": codebook,
        "tokenizer": _tokenizer_kind(model_dir),
        "num_special": 5,
        "text_vocab_size": config["text_vocab_size"],
        "codebook_size": config["codebook_size"],
        "vocab_size": config["text_vocab_size"] + config["codebook_size"],
        "half_rate_layers": config.get("encoder_half_rate_layers"),  # absent from configs saved before the key
    }


def _tokenizer_kind(model_dir: Path) -> str:
    model_type = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))["model"]["type"]
    return {"WordLevel": "character-level (WordLevel)", "Unigram": "SentencePiece-style Unigram"}.get(
        model_type, model_type
    )


def trainer_summary(model_dir: Path) -> dict[str, Any] | None:
    """Steps, epochs and last logged training loss from a trainer state file, if the folder has one."""
    for name in TRAINER_STATE_FILES:
        path = model_dir / name
        if path.is_file():
            state = json.loads(path.read_text(encoding="utf-8"))
            losses = [entry["loss"] for entry in state.get("log_history", []) if "loss" in entry]
            return {
                "file": name,
                "global_step": state.get("global_step"),
                "epoch": state.get("epoch"),
                "last_loss": losses[-1] if losses else None,
            }
    return None


def is_retrieval(config: dict) -> bool:
    """Whether the config is a `Mu2SlamForRetrieval` one (a speech-text dual encoder, not a seq2seq model)."""
    return config.get("model_type") == RETRIEVAL_MODEL_TYPE


def usage_example(inputs: CardInputs, config: dict) -> dict[str, Any]:
    """Languages for the card's code snippet: an evaluated ASR language, and an AST entry when one was measured.

    For a retrieval model: the speech language (`src_lang`) and text language (`text_lang`) of an evaluated pair.
    """
    metrics = inputs.results["metrics"]
    if is_retrieval(config):
        pairs = [(m["source_lang"], m["target_lang"]) for m in metrics if m["task"] == "retrieval"]
        src_lang = inputs.smoke_lang or next((source for source, _ in pairs), config["languages"][0])
        text_lang = next((target for source, target in pairs if source == src_lang), src_lang)
        return {"src_lang": src_lang, "text_lang": text_lang, "ast": None, "language_id": False}
    asr = next((m["source_lang"] for m in metrics if m["task"] == "asr"), None)
    ast = next((m for m in metrics if m["task"] == "ast"), None)
    src_lang = inputs.smoke_lang or asr or config["languages"][0]
    return {"src_lang": src_lang, "ast": ast, "language_id": bool(config.get("language_id_head"))}


def asr_decoding(model_dir: Path) -> dict[str, Any]:
    """How `generate` / `pipeline()` transcribe by default: the generation config's ASR decoder and, when saved
    beside the model, the CTC head's n-gram language model (its languages and fusion settings)."""
    generation_file = model_dir / "generation_config.json"
    generation = json.loads(generation_file.read_text(encoding="utf-8")) if generation_file.is_file() else {}
    options = AsrDecodingOptions.from_generation_config(generation)
    decoding: dict[str, Any] = {"ctc_weight": options.ctc_weight, "language_model": None}
    lm_file = model_dir / LM_FILE_NAME
    if lm_file.is_file() and options.lm_weight:
        languages = json.loads(lm_file.read_text(encoding="utf-8"))["languages"]
        decoding["language_model"] = {
            "languages": sorted(languages),
            "order": max(entry["order"] for entry in languages.values()),
            "weight": options.lm_weight,
            "length_bonus": options.lm_length_bonus,
            "beams": options.ctc_beams,
        }
    return decoding


def render_model_card(model_dir: str | os.PathLike, inputs: CardInputs, template: str | os.PathLike | None = None):
    """Fill the model card template (default: the packaged one); return a huggingface_hub ModelCard."""
    import jinja2
    from huggingface_hub import ModelCard, ModelCardData

    folder = Path(model_dir)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    model_name = inputs.repo_id.split("/")[-1]
    synthetic = is_synthetic(inputs, folder)
    base_model = base_model_of(inputs)
    languages = card_languages(inputs, config)
    recipe_datasets = [v for r in inputs.recipes for v in recipe_values(r.content, DATASET_KEYS)]
    datasets = _hub_ids([*inputs.datasets, *recipe_datasets])
    retrieval = is_retrieval(config)
    tags = ["mu2slam", "speech", "speech-text-retrieval" if retrieval else "speech-translation"]
    tags += ["multilingual", "custom_code"]
    card_data = ModelCardData(
        language=languages,
        license=inputs.license,
        library_name="transformers",
        pipeline_tag=HUB_TASKS["retrieval" if retrieval else "asr"][0],
        tags=tags + (["synthetic-data"] if synthetic else []),
        datasets=datasets or None,
        base_model=base_model if base_model and HUB_ID.match(base_model) else None,
        base_model_relation="finetune" if base_model and HUB_ID.match(base_model) else None,
        model_name=model_name,
        eval_results=eval_results(inputs),
    )
    environment = jinja2.Environment(
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True
    )
    source = Path(template) if template is not None else MODEL_CARD_TEMPLATE
    text = environment.from_string(source.read_text(encoding="utf-8")).render(
        card_data=card_data.to_yaml(),
        model_name=model_name,
        repo_id=inputs.repo_id,
        config=config,
        arch=architecture_facts(folder, config),
        languages=languages,
        all_languages=config["languages"],
        results=inputs.results,
        results_file=inputs.results_file,
        tables=card_tables(inputs.results),
        signatures=signature_line(inputs.results["sacrebleu_signatures"])
        if inputs.results.get("sacrebleu_signatures")
        else None,
        recipes=[{"name": r.path.name, "text": r.text.strip()} for r in inputs.recipes],
        trainer=trainer_summary(folder),
        datasets=list(dict.fromkeys([*inputs.datasets, *recipe_datasets])),
        base_model=base_model,
        synthetic=synthetic,
        retrieval=retrieval,
        usage=usage_example(inputs, config),
        decoding=asr_decoding(folder),
    )
    return ModelCard(text)
