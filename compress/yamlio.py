"""Loading YAML files into pydantic models with errors that name the file and the field.

Recipes and search spaces share this so that every user-facing validation message has one shape:
``recipes/x.yaml: search.sampler.name: expected one of 'nsga2', 'tpe', ... (got 'foo')``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from compress.errors import RecipeError

M = TypeVar("M", bound=BaseModel)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise RecipeError(f"{path}: file not found")
    if not path.is_file():
        raise RecipeError(f"{path}: not a file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
                          "save the file as UTF-8") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def format_validation_error(source: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required field is missing"
        got = err.get("input")
        suffix = ""
        if err["type"] not in ("missing",) and not isinstance(got, (dict, list)) and got is not None:
            suffix = f" (got {got!r})"
        lines.append(f"{source}: {loc}: {msg}{suffix}")
    return "\n".join(lines)


def validate_model(model: type[M], data: dict, source: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(format_validation_error(source, exc)) from None


def load_model(model: type[M], path: str | Path) -> M:
    return validate_model(model, read_yaml(path), str(path))


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
