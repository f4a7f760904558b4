"""The saved folder: its files, whether it loads with the installed package, and the upload folder made from it."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..input_checks import CHECKSUMS_NAME
from ..ngram_lm import LM_FILE_NAME
from .errors import PublishError

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
    LM_FILE_NAME,  # the CTC head's n-gram language model, when the model has one
    CHECKSUMS_NAME,  # the sha256 of weights, tokenizer and codebook, verified when the folder is loaded
)
RETRIEVAL_MODEL_TYPE = "mu2slam_retrieval"
SHARD_PATTERN = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
REQUIRED_FILES = ("config.json", "processor_config.json", "tokenizer.json", "tokenizer_config.json")
# Per config `model_type`: the installed package's config and model classes that load the folder.
MODEL_CLASSES = {
    "mu2slam": ("Mu2SlamConfig", "Mu2SlamForConditionalGeneration"),
    RETRIEVAL_MODEL_TYPE: ("Mu2SlamRetrievalConfig", "Mu2SlamForRetrieval"),
}


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
    if not weight_files(folder):
        found = (
            f" (only pickle files {pickles}, which are never uploaded: loading them can run code)" if pickles else ""
        )
        raise PublishError(
            f"The folder {str(folder)!r} has no safetensors weights (model.safetensors){found}: load the model and "
            "save it with `model.save_pretrained(folder)` (safetensors is the default)."
        )


def weight_files(folder: Path) -> list[str]:
    """The safetensors weight files of `folder`: model.safetensors, or the index and its shards; [] if none."""
    if (folder / "model.safetensors").is_file():
        return ["model.safetensors"]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return ["model.safetensors.index.json", *shards]
    return []


def load_locally(model_dir: str | os.PathLike) -> tuple[Any, Any]:
    """Load model and processor with the installed package, part by part; a PublishError says which part failed.

    The model class follows the config's `model_type` (see `MODEL_CLASSES`): a seq2seq or a retrieval model.
    """
    package = importlib.import_module("..", __package__)  # mu2slam_hf
    config_part = "config (config.json)"
    model_type = _load_part(model_dir, config_part, lambda: folder_model_type(model_dir))
    config_class, model_class = (getattr(package, name) for name in MODEL_CLASSES[model_type])
    _load_part(model_dir, config_part, lambda: config_class.from_pretrained(model_dir))
    model = _load_part(
        model_dir, "weights (model.safetensors)", lambda: model_class.from_pretrained(model_dir, use_safetensors=True)
    )
    processor = _load_part(
        model_dir,
        "processor (processor_config.json, tokenizer, speech codebook)",
        lambda: package.Mu2SlamProcessor.from_pretrained(model_dir),
    )
    if processor.speech_codebook is None:
        raise PublishError(
            f"The folder {str(model_dir)!r} has no speech codebook (speech_codebook.safetensors + .json): save the "
            "processor that was used for training with `processor.save_pretrained(folder)`."
        )
    return model.eval(), processor


def folder_model_type(model_dir: str | os.PathLike) -> str:
    """The `model_type` of the folder's config.json, one of `MODEL_CLASSES` (else a ValueError naming them)."""
    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    model_type = config.get("model_type")
    if model_type not in MODEL_CLASSES:
        raise ValueError(
            f"model_type {model_type!r} is not a Mu2SLAM model that can be published (one of {list(MODEL_CLASSES)})"
        )
    return model_type


def _load_part(model_dir: str | os.PathLike, part: str, load: Callable[[], Any]) -> Any:
    """`load()`, its error raised as a PublishError that names the folder and the part."""
    try:
        return load()
    except Exception as error:
        raise PublishError(
            f"The folder {str(model_dir)!r} does not load: its {part} failed with {type(error).__name__}: "
            f"{error}. Save it again with `save_pretrained` from the current mu2slam_hf."
        ) from error


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


def assemble_upload_folder(model_dir: str | os.PathLike, out_dir: str | os.PathLike, card_text: str) -> list[str]:
    """Copy model, processor and remote code into `out_dir` (new or empty), write README.md; return the file names.

    Training leftovers (optimizer states, trainer state, logs, checkpoints, eval JSON) are never copied.
    """
    source, target = Path(model_dir), Path(out_dir)
    if target.exists() and any(target.iterdir()):
        raise PublishError(f"Upload folder {str(target)!r} is not empty: give a new or empty directory.")
    target.mkdir(parents=True, exist_ok=True)
    names = {n for n in UPLOAD_FILES if (source / n).is_file()} | set(weight_files(source))
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
