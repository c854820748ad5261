"""Supernet checkpoints: ``supernet.safetensors`` + ``space.yaml`` + ``checkpoint.json``.

The directory is self-contained: the space it was trained on travels with it, and ``checkpoint.json`` holds
the recipe hash, the supernet key (what the weights depend on), the data facts (classes, channels,
normalization) and the measured accuracies.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from compress.errors import CheckpointError, CompressError
from compress.fsutil import replace_dir, recover_dir, write_json_atomic, write_text_atomic
from compress.space import SearchSpace
from compress.supernet.hybrid import HybridSupernet
from compress.weights import load_into, load_safetensors, save_safetensors

WEIGHTS = "supernet.safetensors"
META = "checkpoint.json"
SPACE = "space.yaml"


def supernet_dir(run_dir: Path) -> Path:
    """Where a run directory keeps its supernet checkpoint (here, not in ``train``, so that search and
    distillation can find it without importing the trainer)."""
    return run_dir / "supernet"


@dataclass
class SupernetCheckpoint:
    supernet: HybridSupernet
    meta: dict[str, Any]
    path: Path

    @property
    def space(self) -> SearchSpace:
        return self.supernet.space


def save_supernet(path: Path, supernet: HybridSupernet, meta: dict[str, Any]) -> None:
    staging = path.with_name(path.name + ".tmp")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    save_safetensors(supernet.state_dict(), staging / WEIGHTS)
    write_text_atomic(staging / SPACE, yaml.safe_dump(supernet.space.to_dict(), sort_keys=False))
    write_json_atomic(staging / META, {**meta, "space_fingerprint": supernet.space.fingerprint()})
    replace_dir(staging, path)


def load_supernet(path: Path) -> SupernetCheckpoint:
    path = Path(path)
    recover_dir(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: supernet checkpoint directory not found (run `compress train-supernet` first)")
    for name in (WEIGHTS, META, SPACE):
        if not (path / name).is_file():
            raise CheckpointError(f"{path}: incomplete supernet checkpoint, {name} is missing")
    try:
        meta = json.loads((path / META).read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path / META}: not valid JSON ({exc})") from None
    try:
        space = SearchSpace.from_yaml(path / SPACE)
    except CompressError as exc:
        raise CheckpointError(f"{path / SPACE}: invalid search space in checkpoint: {exc}") from None
    if meta.get("space_fingerprint") != space.fingerprint():
        raise CheckpointError(f"{path}: {SPACE} does not match the space the weights were trained on "
                              "(space_fingerprint differs); the checkpoint was edited or mixed with another")
    try:
        data = meta["data"]
        supernet = HybridSupernet(space, data["in_channels"], data["num_classes"], data["mean"], data["std"],
                                  few_shot=bool(meta.get("few_shot", False)),
                                  split_stem=bool(meta.get("split_stem", False)))
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{path / META}: missing or malformed field {exc}") from None
    load_into(supernet, load_safetensors(path / WEIGHTS), path / WEIGHTS)
    return SupernetCheckpoint(supernet.eval(), meta, path)
