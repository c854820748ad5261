"""A run directory remembers what produced it: a resolved copy of the recipe and where the study lives.

So ``compress export RUN`` and ``compress report RUN`` need nothing but the run directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from compress.errors import CompressError
from compress.fsutil import write_json_atomic, write_text_atomic
from compress.recipe import LoadedRecipe, load_recipe

RUN_INFO, RECIPE_COPY = "run.json", "recipe.yaml"


def save_run_info(run_dir: Path, loaded: LoadedRecipe, storage: str, study: str) -> None:
    from compress.search.study import redact_url

    snapshot = loaded.recipe.model_dump(mode="json")
    if snapshot["search"].get("storage"):  # a password in the recipe's storage URL stays out of the run dir
        snapshot["search"]["storage"] = redact_url(snapshot["search"]["storage"])
    snapshot["space"] = str(loaded.space_path.resolve())
    if loaded.data_path is not None:
        snapshot["data"]["path"] = str(loaded.data_path.resolve())
    snapshot["run_dir"] = str(run_dir.resolve())
    write_text_atomic(run_dir / RECIPE_COPY, "# resolved copy of " + str(loaded.path) + "\n"
                      + yaml.safe_dump(snapshot, sort_keys=False))
    write_json_atomic(run_dir / RUN_INFO, {"recipe": str(loaded.path.resolve()), "storage": redact_url(storage),
                                           "study": study, "recipe_hash": loaded.recipe_hash()})


def load_run_info(run_dir: Path, storage: str | None = None) -> tuple[LoadedRecipe, str, str]:
    """The recipe, storage URL and study name of a run directory."""
    info_file = Path(run_dir) / RUN_INFO
    if not info_file.is_file():
        raise CompressError(f"{run_dir}: not a search run directory ({RUN_INFO} is missing; run `compress search` first)")
    info = json.loads(info_file.read_text())
    loaded = load_recipe(Path(run_dir) / RECIPE_COPY)
    url = storage or info["storage"]
    from compress.search.study import is_redacted

    if is_redacted(url):
        raise CompressError(f"{run_dir}: the study's storage URL holds a password, which is not saved; "
                            "pass it with --storage")
    return loaded, url, info["study"]
