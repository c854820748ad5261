"""A run directory remembers what produced it: a resolved copy of the recipe and where the study lives.

So ``compress export RUN`` and ``compress report RUN`` need nothing but the run directory.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from compress.errors import CompressError
from compress.fsutil import write_json_atomic, write_text_atomic
from compress.recipe import LoadedRecipe, load_recipe

RUN_INFO, RECIPE_COPY, STUDY_RECIPES = "run.json", "recipe.yaml", "study-recipes"


def save_run_info(run_dir: Path, loaded: LoadedRecipe, storage: str, study: str) -> None:
    from compress.search.study import redact_url

    snapshot = loaded.recipe.model_dump(mode="json")
    if snapshot["search"].get("storage"):  # a password in the recipe's storage URL stays out of the run dir
        snapshot["search"]["storage"] = redact_url(snapshot["search"]["storage"])
    snapshot["space"] = str(loaded.space_path.resolve())
    if loaded.data_path is not None:
        snapshot["data"]["path"] = str(loaded.data_path.resolve())
    snapshot["run_dir"] = str(run_dir.resolve())
    text = "# resolved copy of " + str(loaded.path) + "\n" + yaml.safe_dump(snapshot, sort_keys=False)
    write_text_atomic(run_dir / RECIPE_COPY, text)
    write_json_atomic(run_dir / RUN_INFO, {"recipe": str(loaded.path.resolve()), "storage": redact_url(storage),
                                           "study": study, "recipe_hash": loaded.recipe_hash()})
    # Each study keeps the recipe it was created with, so exporting its trials later rebuilds them with their
    # own settings, whatever recipe (and study) the run directory was used with since.
    own = study_recipe_path(run_dir, study)
    if not own.exists():
        write_text_atomic(own, text)


def study_recipe_path(run_dir: Path, study: str) -> Path:
    return Path(run_dir) / STUDY_RECIPES / (re.sub(r"[^A-Za-z0-9._-]", "_", study) + ".yaml")


def load_run_info(run_dir: Path, storage: str | None = None, study: str | None = None) -> tuple[LoadedRecipe, str, str]:
    """The recipe (the one ``study``, by default the last one searched, was created with), storage URL and
    study name of a run directory."""
    info_file = Path(run_dir) / RUN_INFO
    if not info_file.is_file():
        raise CompressError(f"{run_dir}: not a search run directory ({RUN_INFO} is missing; run `compress search` first)")
    try:
        info = json.loads(info_file.read_text())
        name, recorded_url = study or info["study"], info["storage"]
    except (ValueError, TypeError, KeyError) as exc:  # cut short by a full disk, or edited by hand
        raise CompressError(f"{info_file}: corrupt ({type(exc).__name__}: {exc}); run `compress search` again "
                            "to rewrite it") from None
    own = study_recipe_path(run_dir, name)
    loaded = load_recipe(own if own.is_file() else Path(run_dir) / RECIPE_COPY)
    url = storage or recorded_url
    from compress.search.study import is_redacted

    if is_redacted(url):
        raise CompressError(f"{run_dir}: the study's storage URL holds a password, which is not saved; "
                            "pass it with --storage")
    return loaded, url, name
