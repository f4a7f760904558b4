"""Training recipes (YAML) as the model card uses them: read, searched for strings and for values under given keys."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import PublishError

RECIPE_IN_FOLDER = "training_recipe.yaml"


@dataclass(frozen=True)
class Recipe:
    """A training recipe (YAML): its file name, parsed content and text."""

    path: Path
    content: Any
    text: str


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


def recipe_strings(content: Any) -> Iterable[str]:
    """Every key and scalar value of a recipe, at any depth, as strings."""
    if isinstance(content, dict):
        for key, value in content.items():
            yield str(key)
            yield from recipe_strings(value)
    elif isinstance(content, list):
        for item in content:
            yield from recipe_strings(item)
    elif content is not None:
        yield str(content)


def recipe_values(content: Any, keys: Sequence[str]) -> Iterable[str]:
    """String values stored under any of `keys`, at any depth of a recipe."""
    if isinstance(content, dict):
        for key, value in content.items():
            if key in keys:
                yield from (v for v in ([value] if not isinstance(value, list) else value) if isinstance(v, str))
            yield from recipe_values(value, keys)
    elif isinstance(content, list):
        for item in content:
            yield from recipe_values(item, keys)
