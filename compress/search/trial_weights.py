"""Weights a trial trained, kept so that exporting it does not train it again.

Recovery distillation is most of the time it takes to build a distilling candidate (profiled on three quickstart
trials: 57 of their 69 s), and export rebuilds each front trial with the search's own, deterministic
``build_candidate``: it repeated that training exactly (the quickstart's export took 190 s of its 13 minutes;
with kept weights, under a minute for a larger front). So the loop keeps the recovered float model
of each distilling trial (safetensors, a few hundred KB on the quickstart) in Optuna's artifact store under the
run directory and records it on the trial; export loads it in place of the training steps and builds the rest
(folding, export, quantization) as the trial did.

Kept weights are a cache, never the only copy of a result: a trial measured on another machine (whose store is
that machine's run directory), or whose file is gone, is rebuilt by training again, which gives the same model.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, download_artifact, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound

from compress.errors import CheckpointError, CompressError
from compress.search.record import TrialRecord, record_weights
from compress.weights import load_safetensors, save_safetensors

logger = logging.getLogger(__name__)

STORE_DIR = "trial-weights"  # under the run directory


def artifact_store(run_dir: Path) -> FileSystemArtifactStore:
    # Created by the first write (keep); a read of a missing store finds no artifact and creates nothing.
    return FileSystemArtifactStore(Path(run_dir) / STORE_DIR)


def keep(trial: optuna.Trial, model: torch.nn.Module, run_dir: Path) -> str | None:
    """Store ``model``'s tensors for ``trial``; returns the artifact id, or None (with a warning) when they could
    not be written: the trial's measurement stands either way, and export would then train it again."""
    try:
        with tempfile.TemporaryDirectory() as tmp:
            file = Path(tmp) / f"trial-{trial.number:04d}.safetensors"
            save_safetensors(model.state_dict(), file)
            (Path(run_dir) / STORE_DIR).mkdir(parents=True, exist_ok=True)
            artifact_id = upload_artifact(artifact_store=artifact_store(run_dir), file_path=str(file),
                                          study_or_trial=trial, mimetype="application/octet-stream")
    except (OSError, CompressError) as exc:
        logger.warning(f"trial {trial.number}: its trained weights were not kept ({exc}); export will train it again")
        return None
    record_weights(trial, artifact_id)
    return artifact_id


def kept(trial: optuna.trial.FrozenTrial, run_dir: Path) -> dict[str, torch.Tensor] | None:
    """The tensors :func:`keep` stored for ``trial``, or None when it kept none or they are not on this machine."""
    artifact_id = TrialRecord.from_trial(trial).weights
    if not artifact_id:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "weights.safetensors"
        try:
            download_artifact(artifact_store=artifact_store(run_dir), file_path=str(file), artifact_id=artifact_id)
        except ArtifactNotFound:
            return None
        try:
            return load_safetensors(file)
        except CheckpointError as exc:  # a damaged cache entry: train again rather than fail the export
            logger.warning(f"trial {trial.number}: its kept weights are unreadable ({exc}); training it again")
            return None
