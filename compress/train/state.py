"""Resumable training state: ``accelerator.save_state`` plus a progress record, replaced atomically."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from compress.fsutil import replace_dir, write_json_atomic

PROGRESS = "progress.json"


def save_training_state(accelerator, state_dir: Path, progress: dict) -> None:
    """Write the state to a staging directory, then swap it in: a kill mid-save keeps the previous state."""
    staging = state_dir.with_name(state_dir.name + ".tmp")
    if accelerator.is_main_process and staging.exists():
        shutil.rmtree(staging)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    if accelerator.is_main_process:
        write_json_atomic(staging / PROGRESS, progress)
        replace_dir(staging, state_dir)
    accelerator.wait_for_everyone()


def read_progress(state_dir: Path) -> dict | None:
    file = state_dir / PROGRESS
    return json.loads(file.read_text()) if file.is_file() else None
