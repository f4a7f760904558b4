"""Publish a trained Mu2SLAM folder on the Hugging Face Hub: check it loads, write its model card, upload it.

The uploaded repository holds exactly what `from_pretrained` and `pipeline(..., trust_remote_code=True)` need:
safetensors weights, config, generation config, processor (feature extractor, text tokenizer, speech codebook),
the remote-code files, and a README.md model card filled from the config, the training recipes and the
evaluation JSON written by `training_scripts/evaluate.py`.

Example:
    ```python
    from mu2slam_hf.hub import publish

    report = publish("runs/ft2", "me/mu2slam-small-synth", results="runs/ft2/eval.json", dry_run="upload_preview")
    ```
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

MODEL_CARD_TEMPLATE = Path(__file__).resolve().parents[1] / "model_cards" / "mu2slam_model_card.md.jinja"
SMOKE_SAMPLING_RATE = 16000
SMOKE_TIMEOUT_S = 600

# Files of a saved model + processor that belong in the upload (remote-code .py files are added from auto_map).
UPLOAD_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "processor_config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "speech_codebook.json",
    "speech_codebook.safetensors",
)
SHARD_PATTERN = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
REQUIRED_FILES = ("config.json", "processor_config.json", "tokenizer.json", "tokenizer_config.json")
RECIPE_IN_FOLDER = "training_recipe.yaml"
TRAINER_STATE_FILES = ("trainer_state.json", "training_state.json")

HUB_TASKS = {
    "asr": ("automatic-speech-recognition", "Automatic Speech Recognition"),
    "ast": ("automatic-speech-recognition", "Speech Translation"),
    "mt": ("translation", "Machine Translation"),
    "classification": ("text-classification", "Text Classification"),
}
METRIC_LABELS = {"wer": "WER", "cer": "CER", "bleu": "BLEU", "chrf": "chrF", "accuracy": "Accuracy", "nll": "NLL"}
LOWER_IS_BETTER = {"wer", "cer", "nll"}
BASE_MODEL_KEYS = ("base_model", "init_from", "model_name_or_path", "pretrained_model", "init_checkpoint")
DATASET_KEYS = ("dataset", "datasets", "dataset_name", "hub_dataset", "train_data", "data")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
SYNTHETIC = re.compile(r"synth", re.IGNORECASE)


class PublishError(ValueError):
    """A folder, results file or setting that cannot be published; the message says how to fix it."""


# --------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Metric:
    """One measured value of the evaluation JSON."""

    task: str
    source_lang: str
    target_lang: str
    name: str
    value: float
    num_examples: int

    @property
    def pair(self) -> str:
        """`fr` for ASR and classification, `fr → en` for translation tasks."""
        return (
            self.source_lang if self.task in ("asr", "classification") else f"{self.source_lang} → {self.target_lang}"
        )


@dataclass(frozen=True)
class EvalResults:
    """The evaluation JSON of `training_scripts/evaluate.py`."""

    model: str
    data: str
    split: str
    metrics: tuple[Metric, ...]
    path: Path | None = None


@dataclass(frozen=True)
class Recipe:
    """A training recipe (YAML): its file name, parsed content and text."""

    path: Path
    content: Any
    text: str


def load_results(path: str | os.PathLike) -> EvalResults:
    """Read and check an evaluation JSON; a PublishError names what is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise PublishError(
            f"Results file {str(path)!r} not found. Run `python training_scripts/evaluate.py` on the model first and "
            "pass the JSON it writes with `--results`."
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        metrics = tuple(
            Metric(
                task=str(m["task"]),
                source_lang=str(m["source_lang"]),
                target_lang=str(m["target_lang"]),
                name=str(m["name"]),
                value=float(m["value"]),
                num_examples=int(m["num_examples"]),
            )
            for m in raw["metrics"]
        )
        results = EvalResults(str(raw["model"]), str(raw["data"]), str(raw["split"]), metrics, path)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise PublishError(
            f"Results file {str(path)!r} is not an evaluation JSON ({type(error).__name__}: {error}). Expected "
            '{"model", "data", "split", "metrics": [{"task", "source_lang", "target_lang", "name", "value", '
            '"num_examples"}]} as written by training_scripts/evaluate.py.'
        ) from error
    _check_metric_names(results)
    return results


def _check_metric_names(results: EvalResults) -> None:
    if not results.metrics:
        raise PublishError(f"Results file {str(results.path)!r} holds no metrics: evaluate the model on a test set.")
    for metric in results.metrics:
        if metric.task not in HUB_TASKS or metric.name not in METRIC_LABELS:
            raise PublishError(
                f"Unknown task/metric {metric.task!r}/{metric.name!r} in {str(results.path)!r}: tasks are "
                f"{sorted(HUB_TASKS)}, metrics {sorted(METRIC_LABELS)}."
            )


def load_recipes(paths: Iterable[str | os.PathLike]) -> list[Recipe]:
    """Read training recipes (YAML files)."""
    recipes = []
    for path in map(Path, paths):
        if not path.is_file():
            raise PublishError(f"Recipe {str(path)!r} not found: pass existing YAML files with `--recipe`.")
        text = path.read_text(encoding="utf-8")
        try:
            content = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise PublishError(f"Recipe {str(path)!r} is not valid YAML: {error}") from error
        recipes.append(Recipe(path, content, text))
    return recipes


def default_recipe_paths(model_dir: str | os.PathLike) -> list[Path]:
    """The recipe a training run left in its output folder, if any."""
    candidate = Path(model_dir) / RECIPE_IN_FOLDER
    return [candidate] if candidate.is_file() else []


def resolve_token(token: str | None = None) -> str:
    """The Hub token to upload with: `token`, else HF_TOKEN, else the saved login."""
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise PublishError(
            "No Hugging Face token found: run `hf auth login` (or set the HF_TOKEN environment variable) with a token "
            "that has write access, or use `--dry_run DIR` to only write the folder that would be uploaded."
        )
    return token


# ----------------------------------------------------------------------------------------- validation


def check_folder_files(model_dir: str | os.PathLike) -> None:
    """Check the folder holds the files a Hub model needs, with safetensors weights.

    Pickle files beside them (a Trainer's training_args.bin, optimizer.pt) are fine: they are never uploaded.
    """
    folder = Path(model_dir)
    if not folder.is_dir():
        raise PublishError(f"Model folder {str(folder)!r} not found: pass the output folder of a training run.")
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise PublishError(
            f"The folder {str(folder)!r} cannot be published: the processor/config part is missing {missing}. Save "
            "both with `model.save_pretrained(folder)` and `processor.save_pretrained(folder)`."
        )
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not _weight_files(folder):
        found = (
            f" (only pickle files {pickles}, which are never uploaded: loading them can run code)" if pickles else ""
        )
        raise PublishError(
            f"The folder {str(folder)!r} has no safetensors weights (model.safetensors){found}: load the model and "
            "save it with `model.save_pretrained(folder)` (safetensors is the default)."
        )


def _weight_files(folder: Path) -> list[str]:
    if (folder / "model.safetensors").is_file():
        return ["model.safetensors"]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return ["model.safetensors.index.json", *shards]
    return []


def load_locally(model_dir: str | os.PathLike) -> tuple[Any, Any]:
    """Load model and processor with the installed package, part by part; a PublishError says which part failed."""
    from . import Mu2SlamConfig, Mu2SlamForConditionalGeneration, Mu2SlamProcessor

    parts = {
        "config (config.json)": lambda: Mu2SlamConfig.from_pretrained(model_dir),
        "weights (model.safetensors)": lambda: Mu2SlamForConditionalGeneration.from_pretrained(
            model_dir, use_safetensors=True
        ),
        "processor (processor_config.json, tokenizer, speech codebook)": lambda: Mu2SlamProcessor.from_pretrained(
            model_dir
        ),
    }
    loaded = {}
    for part, load in parts.items():
        try:
            loaded[part] = load()
        except Exception as error:
            raise PublishError(
                f"The folder {str(model_dir)!r} does not load: its {part} failed with {type(error).__name__}: "
                f"{error}. Save it again with `save_pretrained` from the current mu2slam_hf."
            ) from error
    model, processor = list(loaded.values())[1:]
    if processor.speech_codebook is None:
        raise PublishError(
            f"The folder {str(model_dir)!r} has no speech codebook (speech_codebook.safetensors + .json): save the "
            "processor that was used for training with `processor.save_pretrained(folder)`."
        )
    return model.eval(), processor


def smoke_audio(audio_path: str | os.PathLike | None = None) -> np.ndarray:
    """The smoke-test utterance: a 16 kHz mono file, or a synthetic 1-second two-tone clip."""
    if audio_path is None:
        time = np.arange(SMOKE_SAMPLING_RATE) / SMOKE_SAMPLING_RATE
        return (0.3 * np.sin(2 * np.pi * 220 * time) + 0.2 * np.sin(2 * np.pi * 1320 * time)).astype(np.float32)
    import soundfile

    audio, rate = soundfile.read(str(audio_path), dtype="float32", always_2d=True)
    if rate != SMOKE_SAMPLING_RATE:
        raise PublishError(f"Smoke-test audio {str(audio_path)!r} is {rate} Hz: give a 16 kHz file.")
    return audio.mean(axis=1)


def local_transcription(model: Any, processor: Any, audio: np.ndarray, src_lang: str) -> str:
    """What the ASR pipeline says for `audio` with the installed package's classes."""
    from transformers import pipeline

    asr = pipeline(
        "automatic-speech-recognition",
        model=model,
        tokenizer=processor.tokenizer,
        feature_extractor=processor.feature_extractor,
    )
    return asr(audio.copy(), generate_kwargs={"src_lang": src_lang})["text"]


# Runs in `python -I` (no PYTHONPATH, no user site, no cwd on sys.path); the finder hides mu2slam_hf however it
# is installed (editable hook, site-packages or a checkout), so only the folder's remote code can be used.
_REMOTE_CODE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class _HidePackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "mu2slam_hf" or name.startswith("mu2slam_hf."):
                raise ModuleNotFoundError(f"No module named {name!r} (hidden to test the remote code)")
            return None

    sys.meta_path.insert(0, _HidePackage())
    folder, audio_file, src_lang = sys.argv[1:4]

    def stage(name):
        print("STAGE", name, flush=True)

    import numpy as np
    from transformers import AutoConfig, AutoModelForSpeechSeq2Seq, AutoProcessor, pipeline

    stage("config (config.json auto_map -> configuration_mu2slam.py)")
    AutoConfig.from_pretrained(folder, trust_remote_code=True)
    stage("model (auto_map -> modeling_mu2slam.py, model.safetensors)")
    model = AutoModelForSpeechSeq2Seq.from_pretrained(folder, trust_remote_code=True)
    assert type(model).__name__ == "Mu2SlamForConditionalGeneration", type(model)
    stage("processor (processor_config.json auto_map -> processing_mu2slam.py, speech codebook)")
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    assert processor.speech_codebook is not None, "speech codebook not loaded"
    stage("pipeline('automatic-speech-recognition') smoke run")
    asr = pipeline("automatic-speech-recognition", model=folder, trust_remote_code=True)
    text = asr(np.load(audio_file), generate_kwargs={"src_lang": src_lang})["text"]
    assert "mu2slam_hf" not in sys.modules
    print("RESULT", json.dumps({"text": text}), flush=True)
    """
)


def remote_code_transcription(folder: str | os.PathLike, audio: np.ndarray, src_lang: str) -> str:
    """Load `folder` with trust_remote_code=True in a fresh process that cannot import mu2slam_hf, and run the ASR
    pipeline on `audio`. A PublishError names the part that failed."""
    with tempfile.TemporaryDirectory(prefix="mu2slam-remote-code-") as scratch:
        audio_file = Path(scratch) / "audio.npy"
        np.save(audio_file, audio)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        # A private modules cache: remote code cached from an earlier folder with the same file names is never used.
        env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(Path(scratch) / "modules"), TOKENIZERS_PARALLELISM="false")
        command = [sys.executable, "-I", "-c", _REMOTE_CODE_SCRIPT, str(Path(folder).resolve()), str(audio_file)]
        try:
            result = subprocess.run(
                [*command, src_lang], capture_output=True, text=True, env=env, cwd=scratch, timeout=SMOKE_TIMEOUT_S
            )
        except subprocess.TimeoutExpired as error:
            raise PublishError(f"Loading the remote code timed out after {SMOKE_TIMEOUT_S} s.") from error
    lines = result.stdout.splitlines()
    if result.returncode != 0 or not any(line.startswith("RESULT ") for line in lines):
        stages = [line.removeprefix("STAGE ") for line in lines if line.startswith("STAGE ")]
        failed = stages[-1] if stages else "starting Python with transformers"
        raise PublishError(
            f"The folder does not load with trust_remote_code=True in a fresh process without mu2slam_hf: "
            f"{failed} failed.\n{result.stderr[-3000:]}\nSave the model and processor again with the current "
            "mu2slam_hf (`model.save_pretrained`, `processor.save_pretrained`), which writes the remote-code files."
        )
    return json.loads(next(line for line in lines if line.startswith("RESULT "))[len("RESULT ") :])["text"]


# ------------------------------------------------------------------------------------------ upload folder


def remote_code_files(model_dir: str | os.PathLike) -> list[str]:
    """The .py files that the folder's auto_map entries name, with their relative imports."""
    from transformers.dynamic_module_utils import get_relative_import_files

    folder = Path(model_dir)
    modules = set()
    for name in ("config.json", "processor_config.json", "tokenizer_config.json"):
        if (folder / name).is_file():
            modules |= set(_auto_map_modules(json.loads((folder / name).read_text(encoding="utf-8"))))
    files = set()
    for module in sorted(modules):
        path = folder / f"{module}.py"
        if not path.is_file():
            raise PublishError(
                f"The folder {str(folder)!r} names remote code {module}.py in its auto_map but lacks the file: save "
                "the model and processor again with `save_pretrained`, which copies the code."
            )
        files |= {path.name, *(Path(p).name for p in get_relative_import_files(str(path)))}
    return sorted(files)


def _auto_map_modules(config: dict) -> Iterable[str]:
    """Module names referenced by every `auto_map` in a (possibly nested) config dict."""
    for key, value in config.items():
        if key == "auto_map":
            for reference in value.values():
                for name in reference if isinstance(reference, list) else [reference]:
                    if name:
                        yield name.split("--")[-1].rsplit(".", 1)[0]
        elif isinstance(value, dict):
            yield from _auto_map_modules(value)


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def assemble_upload_folder(model_dir: str | os.PathLike, out_dir: str | os.PathLike, card_text: str) -> list[str]:
    """Copy model, processor and remote code into `out_dir` (new or empty), write README.md; return the file names.

    Training leftovers (optimizer states, trainer state, logs, checkpoints, eval JSON) are never copied.
    """
    source, target = Path(model_dir), Path(out_dir)
    if target.exists() and any(target.iterdir()):
        raise PublishError(f"Upload folder {str(target)!r} is not empty: give a new or empty directory.")
    target.mkdir(parents=True, exist_ok=True)
    names = {n for n in UPLOAD_FILES if (source / n).is_file()} | set(_weight_files(source))
    names |= {p.name for p in source.iterdir() if SHARD_PATTERN.match(p.name)}
    names |= set(remote_code_files(source))
    for name in sorted(names):
        shutil.copyfile(source / name, target / name)
    (target / "README.md").write_text(card_text, encoding="utf-8")
    return sorted(names | {"README.md"})


def folder_digest(folder: str | os.PathLike) -> dict[str, str]:
    """{relative path: sha256} of every file under `folder`."""
    root = Path(folder)
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def upload(folder: str | os.PathLike, repo_id: str, token: str, private: bool = False, message: str | None = None):
    """Create the repo if needed and upload every file of `folder` in one commit; return the CommitInfo.

    `create_commit` rather than `upload_folder`: with hf_xet installed the latter may split a folder over several
    commits, and a model repository should never be seen half-updated.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(token=token)
    repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    root = Path(folder)
    operations = [
        CommitOperationAdd(path_in_repo=p.relative_to(root).as_posix(), path_or_fileobj=str(p))
        for p in sorted(root.rglob("*"))
        if p.is_file()
    ]
    commit = api.create_commit(
        repo_id=repo_url.repo_id,
        operations=operations,
        commit_message=message or "Upload Mu2SLAM model, processor, remote code and model card",
    )
    return repo_url, commit


# ------------------------------------------------------------------------------------------- model card


@dataclass
class CardInputs:
    """Everything the model card is filled from, besides the saved folder."""

    repo_id: str
    results: EvalResults
    recipes: list[Recipe] = field(default_factory=list)
    base_model: str | None = None
    datasets: list[str] = field(default_factory=list)
    languages: list[str] | None = None
    license: str = "apache-2.0"
    synthetic_data: bool | None = None
    smoke_lang: str | None = None


def is_synthetic(inputs: CardInputs, model_dir: str | os.PathLike) -> bool:
    """Explicit flag, else whether the evaluation data, a recipe's values or the model path say synthetic."""
    if inputs.synthetic_data is not None:
        return inputs.synthetic_data
    texts = [inputs.results.data, str(model_dir), *inputs.datasets]
    texts += [value for recipe in inputs.recipes for value in _recipe_strings(recipe.content)]
    return any(SYNTHETIC.search(text) for text in texts)


def _recipe_strings(content: Any) -> Iterable[str]:
    if isinstance(content, dict):
        for key, value in content.items():
            yield str(key)
            yield from _recipe_strings(value)
    elif isinstance(content, list):
        for item in content:
            yield from _recipe_strings(item)
    elif content is not None:
        yield str(content)


def _recipe_values(content: Any, keys: Sequence[str]) -> Iterable[str]:
    """String values stored under any of `keys`, at any depth of a recipe."""
    if isinstance(content, dict):
        for key, value in content.items():
            if key in keys:
                yield from (v for v in ([value] if not isinstance(value, list) else value) if isinstance(v, str))
            yield from _recipe_values(value, keys)
    elif isinstance(content, list):
        for item in content:
            yield from _recipe_values(item, keys)


def _hub_ids(values: Iterable[str]) -> list[str]:
    """Values that look like Hub repo ids and are not local paths (the Hub rejects paths in the metadata)."""
    return list(dict.fromkeys(v for v in values if HUB_ID.match(v) and not Path(v).exists()))


def base_model_of(inputs: CardInputs) -> str | None:
    """The model this one was fine-tuned from: `--base_model`, else a recipe's base/init model."""
    if inputs.base_model:
        return inputs.base_model
    found = [v for recipe in inputs.recipes for v in _recipe_values(recipe.content, BASE_MODEL_KEYS)]
    return found[0] if found else None


def card_languages(inputs: CardInputs, config: dict) -> list[str]:
    """Explicit languages, else those evaluated, else the model's language embeddings."""
    if inputs.languages:
        return list(inputs.languages)
    evaluated = [code for m in inputs.results.metrics for code in (m.source_lang, m.target_lang)]
    return list(dict.fromkeys(c for c in evaluated if c in config["languages"])) or list(config["languages"])


def eval_results(inputs: CardInputs) -> list:
    """One huggingface_hub EvalResult per measured value (the card's `model-index`)."""
    from huggingface_hub import EvalResult

    results = inputs.results
    return [
        EvalResult(
            task_type=HUB_TASKS[m.task][0],
            task_name=f"{HUB_TASKS[m.task][1]} ({m.pair})",
            dataset_type=results.data,
            dataset_name=f"{results.data} ({m.pair})",
            dataset_config=m.source_lang if m.source_lang == m.target_lang else f"{m.source_lang}-{m.target_lang}",
            dataset_split=results.split,
            metric_type=m.name,
            metric_name=f"{METRIC_LABELS[m.name]} ({m.pair})",
            metric_value=m.value,
        )
        for m in results.metrics
    ]


def results_tables(results: EvalResults) -> list[dict[str, Any]]:
    """Per task: the metric columns and one row per language (pair), for the card's Markdown tables."""
    tables = []
    for task in dict.fromkeys(m.task for m in results.metrics):
        metrics = [m for m in results.metrics if m.task == task]
        names = list(dict.fromkeys(m.name for m in metrics))
        rows = []
        for pair in dict.fromkeys(m.pair for m in metrics):
            values = {m.name: m for m in metrics if m.pair == pair}
            cells = [_format_value(values[n].value) if n in values else "–" for n in names]
            rows.append({"pair": pair, "cells": cells, "num_examples": max(v.num_examples for v in values.values())})
        columns = [METRIC_LABELS[n] + (" ↓" if n in LOWER_IS_BETTER else " ↑") for n in names]
        tables.append({"task": task, "title": HUB_TASKS[task][1], "columns": columns, "rows": rows})
    return tables


def _format_value(value: float) -> str:
    return f"{value:.4g}"


def architecture_facts(model_dir: Path, config: dict) -> dict[str, Any]:
    """Sizes, layers and vocabulary layout for the card."""
    from safetensors import safe_open

    parameters = 0
    for name in _weight_files(model_dir):
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


def render_model_card(model_dir: str | os.PathLike, inputs: CardInputs, template: str | os.PathLike | None = None):
    """Fill the model card template; return a huggingface_hub ModelCard (metadata + Markdown)."""
    import jinja2
    from huggingface_hub import ModelCard, ModelCardData

    folder = Path(model_dir)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    model_name = inputs.repo_id.split("/")[-1]
    synthetic = is_synthetic(inputs, folder)
    base_model = base_model_of(inputs)
    languages = card_languages(inputs, config)
    recipe_datasets = [v for r in inputs.recipes for v in _recipe_values(r.content, DATASET_KEYS)]
    datasets = _hub_ids([*inputs.datasets, *recipe_datasets])
    tags = ["mu2slam", "speech", "speech-translation", "multilingual", "custom_code"]
    card_data = ModelCardData(
        language=languages,
        license=inputs.license,
        library_name="transformers",
        pipeline_tag="automatic-speech-recognition",
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
    text = environment.from_string(Path(template or MODEL_CARD_TEMPLATE).read_text(encoding="utf-8")).render(
        card_data=card_data.to_yaml(),
        model_name=model_name,
        repo_id=inputs.repo_id,
        config=config,
        arch=architecture_facts(folder, config),
        languages=languages,
        all_languages=config["languages"],
        results=inputs.results,
        results_file=inputs.results.path.name if inputs.results.path else "eval.json",
        tables=results_tables(inputs.results),
        recipes=[{"name": r.path.name, "text": r.text.strip()} for r in inputs.recipes],
        trainer=trainer_summary(folder),
        datasets=list(dict.fromkeys([*inputs.datasets, *recipe_datasets])),
        base_model=base_model,
        synthetic=synthetic,
        usage=usage_example(inputs, config),
    )
    return ModelCard(text)


def usage_example(inputs: CardInputs, config: dict) -> dict[str, Any]:
    """Languages for the card's code snippet: an evaluated ASR language, and an AST pair when one was measured."""
    metrics = inputs.results.metrics
    asr = next((m.source_lang for m in metrics if m.task == "asr"), None)
    ast = next((m for m in metrics if m.task == "ast"), None)
    return {"src_lang": inputs.smoke_lang or asr or config["languages"][0], "ast": ast}


# ---------------------------------------------------------------------------------------------- publish


@dataclass
class PublishReport:
    """What `publish` did: the folder it wrote (dry run; a removed temp dir after an upload), its files, the smoke
    transcription, and the repository and commit URLs after an upload."""

    folder: Path
    files: list[str]
    transcription: str
    url: str | None = None
    commit_url: str | None = None


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
        audio: 16 kHz file for the pipeline smoke run (default: a synthetic 1-second clip).
        src_lang: language of the smoke run and the card's snippet (default: the first evaluated ASR language).
        template: a Jinja2 model card template (default `model_cards/mu2slam_model_card.md.jinja`).
    Returns:
        A `PublishReport`; raises `PublishError` with the fix for anything that would publish a broken model.
    """
    token = None if dry_run is not None else resolve_token(token)
    evaluation = load_results(results)
    recipe_list = load_recipes(default_recipe_paths(model_dir) if recipes is None else recipes)
    check_folder_files(model_dir)
    model, processor = load_locally(model_dir)
    inputs = CardInputs(
        repo_id, evaluation, recipe_list, base_model, list(datasets), languages, license, synthetic_data, src_lang
    )
    card = render_model_card(model_dir, inputs, template)
    lang = usage_example(inputs, model.config.to_dict())["src_lang"]
    if lang not in model.config.languages:
        raise PublishError(f"--src_lang {lang!r} is not a language of this model: {model.config.languages}.")
    with tempfile.TemporaryDirectory(prefix="mu2slam-upload-") as staging:
        folder = Path(dry_run) if dry_run is not None else Path(staging) / "upload"
        files = assemble_upload_folder(model_dir, folder, str(card))
        clip = smoke_audio(audio)
        expected = local_transcription(model, processor, clip, lang)
        transcription = remote_code_transcription(folder, clip, lang)
        if transcription != expected:
            raise PublishError(
                f"The remote code transcribes the smoke clip as {transcription!r} but the installed mu2slam_hf says "
                f"{expected!r}: the folder's .py files are stale. Save the model and processor again with the "
                "current mu2slam_hf."
            )
        report = PublishReport(folder, files, transcription)
        if dry_run is None:
            repo_url, commit = upload(folder, repo_id, token, private, commit_message)
            report.url, report.commit_url = str(repo_url), commit.commit_url
    return report
