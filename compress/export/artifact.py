"""Artifacts: a standalone, deployable subnetwork in a directory.

    config.json        model config, architecture, policies, target, measured metrics, provenance, checksums
    model.safetensors  weights; INT8 layers as int8 with per-channel scales and zero points
    model.onnx         the ONNX model (INT8 where quantized) when the runtime is onnxruntime (or asked for)
    README.md          a model card with the measured metrics

``compress.load(dir)`` rebuilds the PyTorch model from config.json + model.safetensors alone (no supernet,
no pruning library, no unpickling); ``compress.load(dir, runtime="onnxruntime")`` wraps model.onnx.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from compress.errors import CheckpointError
from compress.weights import refuse_pickle
from compress.fsutil import recover_dir, replace_dir, write_bytes_atomic, write_json_atomic, write_text_atomic
from compress.yamlio import format_validation_error

FORMAT = "compress-artifact"
FORMAT_VERSION = 1
CONFIG, WEIGHTS, ONNX, CARD = "config.json", "model.safetensors", "model.onnx", "README.md"
OWN_FILES = (WEIGHTS, ONNX)  # the only names config.json may list: it is read from untrusted directories
MAX_CONFIG_BYTES = 16 * 2**20  # a real config.json is a few kB; a larger one is not parsed


class ArtifactConfig(BaseModel):
    """The schema of config.json; unknown keys are allowed (forward compatibility), required ones checked."""

    model_config = ConfigDict(extra="allow")

    format: str
    format_version: int
    runtime: str
    model: dict[str, Any]
    quantization: dict[str, Any]
    input: dict[str, Any]
    metrics: dict[str, Any]
    files: dict[str, str]
    arch: dict[str, Any] | None = None
    policies: dict[str, Any] | None = None
    target: dict[str, Any] = {}
    provenance: dict[str, Any] = {}
    classes: list[str] = []


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_artifact(path: Path, candidate, metrics, *, data, target, provenance: dict[str, Any],
                   extra_metrics: dict[str, Any] | None = None, write_onnx: bool = True) -> Path:
    """Write ``candidate`` (a built :class:`~compress.search.candidate.Candidate`) to ``path`` atomically."""
    from compress.export.card import model_card
    from compress.nn.onnx_export import export_onnx

    deployable = candidate.deployable
    staging = path.with_name(path.name + ".tmp")
    if staging.exists():
        shutil.rmtree(staging)
    try:
        staging.mkdir(parents=True)
    except OSError as exc:
        raise CheckpointError(f"cannot write artifact {path}: {exc.strerror or exc}") from None
    files: dict[str, bytes] = {WEIGHTS: deployable.safetensors_bytes()}
    if deployable.runtime == "onnxruntime":
        files[ONNX] = deployable.onnx_bytes()
    elif write_onnx:  # a PyTorch-runtime artifact still ships an fp32 ONNX for other runtimes
        files[ONNX] = export_onnx(deployable.model, torch.rand(deployable.input_shape)).SerializeToString()
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "runtime": deployable.runtime,
        "model": candidate.model.config(),
        "folded_batchnorm": True,
        "quantization": deployable.quantization_record(),
        "arch": candidate.spec.arch.to_dict(),
        "policies": candidate.spec.policies.to_dict(),
        "seed": candidate.spec.seed,
        "notes": candidate.notes,
        "input": {
            "shape": [data.in_channels, data.image_size, data.image_size],
            "dtype": "float32",
            "range": [0.0, 1.0],
            "normalization": {"mean": data.mean, "std": data.std, "applied_by_model": True},
        },
        "classes": data.class_names,
        "target": target.model_dump(mode="json"),
        "metrics": {**metrics.to_dict(), **(extra_metrics or {})},
        "provenance": provenance,
        "files": {name: sha256(blob) for name, blob in files.items()},
    }
    try:
        for name, blob in files.items():
            write_bytes_atomic(staging / name, blob)
        write_json_atomic(staging / CONFIG, config)
        write_text_atomic(staging / CARD, model_card(config, path.name))
    except BaseException:  # a full disk, Ctrl-C: no half-written staging directory is left to look like an artifact
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_dir(staging, path)
    return path


def read_config(path: Path) -> ArtifactConfig:
    path = Path(path)
    recover_dir(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: artifact directory not found")
    cfg_file = path / CONFIG
    if not cfg_file.is_file():
        raise CheckpointError(f"{path}: not an artifact ({CONFIG} is missing)")
    if cfg_file.stat().st_size > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{cfg_file}: {cfg_file.stat().st_size:,} bytes, more than any artifact's config "
                              f"({MAX_CONFIG_BYTES:,}); not read")
    try:
        raw = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{cfg_file}: not valid JSON ({exc})") from None
    try:
        config = ArtifactConfig.model_validate(raw)
    except ValidationError as exc:
        raise CheckpointError(format_validation_error(str(cfg_file), exc)) from None
    if config.format != FORMAT or config.format_version != FORMAT_VERSION:
        raise CheckpointError(f"{cfg_file}: format {config.format!r} version {config.format_version} is not "
                              f"{FORMAT!r} version {FORMAT_VERSION}")
    foreign = [name for name in config.files if name not in OWN_FILES]
    if foreign:
        raise CheckpointError(f"{cfg_file}: files lists {foreign[0]!r}, which is not a file of an artifact "
                              f"(expected {', '.join(OWN_FILES)})")
    if WEIGHTS not in config.files:
        raise CheckpointError(f"{cfg_file}: files does not list {WEIGHTS}")
    return config


def verified_bytes(path: Path, config: ArtifactConfig, name: str) -> bytes:
    """A file of the artifact, checked against the checksum recorded in config.json."""
    file = Path(path) / name
    if name not in config.files:
        raise CheckpointError(f"{path}: the artifact has no {name}")
    if name not in OWN_FILES:  # read_config refuses these; checked here too for configs built in code
        raise CheckpointError(f"{path}: {name!r} is not a file of an artifact")
    if file.is_symlink():  # it could lead anywhere (a device, a file of another user)
        raise CheckpointError(f"{file}: a symbolic link; an artifact's files must be its own regular files")
    if not file.is_file():
        raise CheckpointError(f"{file}: missing (config.json lists it)")
    blob = file.read_bytes()
    if name.endswith(".safetensors"):
        refuse_pickle(blob, file)
    if sha256(blob) != config.files[name]:
        raise CheckpointError(f"{file}: checksum does not match config.json; the file is corrupted or was "
                              "modified after export")
    return blob


def verify_artifact(path: Path, config: ArtifactConfig) -> dict[str, bytes]:
    """Every file config.json lists, checked against its checksum: a damaged artifact is refused whole."""
    return {name: verified_bytes(path, config, name) for name in config.files}


def load_torch_model(path: Path, config: ArtifactConfig | None = None, device: str = "cpu") -> torch.nn.Module:
    from safetensors.torch import load as load_safetensor_bytes

    from compress.deploy import rebuild_model

    config = config or read_config(path)
    blob = verify_artifact(path, config)[WEIGHTS]
    try:
        tensors = load_safetensor_bytes(blob)
    except Exception as exc:
        raise CheckpointError(f"{Path(path) / WEIGHTS}: not a valid safetensors file ({exc})") from None
    try:
        return rebuild_model(config.model, config.quantization, tensors, device=device)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


class OnnxModule(torch.nn.Module):
    """An artifact's model.onnx behind the ``nn.Module`` call interface (tensor in, tensor out)."""

    def __init__(self, model_bytes: bytes, threads: int = 1, device: str = "cpu"):
        super().__init__()
        from compress.measure.runtime import OrtRunner

        self.runner = OrtRunner(model_bytes, threads=threads, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.runner(x)


def load(path: str | Path, runtime: str = "torch", device: str = "cpu", threads: int = 1) -> torch.nn.Module:
    """Load an exported artifact as a ready-to-run model (eval mode; takes float images in [0, 1]).

    ``runtime="torch"`` (default): the PyTorch model rebuilt from config.json + model.safetensors.
    ``runtime="onnxruntime"``: model.onnx in ONNX Runtime, wrapped as an ``nn.Module``; for INT8 artifacts
    this is the model the search measured, integer kernels included.
    """
    path = Path(path)
    config = read_config(path)
    if runtime == "torch":
        return load_torch_model(path, config, device=device)
    if runtime == "onnxruntime":
        if ONNX not in config.files:
            raise CheckpointError(f"{path}: exported without ONNX (export.onnx: false), so it has no onnxruntime "
                                  "model; load it with runtime='torch'")
        return OnnxModule(verify_artifact(path, config)[ONNX], threads=threads, device=device).eval()
    raise ValueError(f"runtime must be 'torch' or 'onnxruntime', got {runtime!r}")


def deployed_runner(path: Path, threads: int | None = None, device: str | None = None):
    """A runner on the artifact's own runtime (thread count and device from its target unless given)."""
    from compress.measure.runtime import OrtRunner, TorchRunner

    config = read_config(path)
    device = device or config.target.get("device", "cpu")
    if device == "remote":  # measured on a device server; run here on the CPU (--device times it there)
        device = "cpu"
    threads = threads or int(config.target.get("threads", 1))
    if config.runtime == "onnxruntime":
        return OrtRunner(verify_artifact(path, config)[ONNX], threads=threads, device=device), config
    return TorchRunner(load_torch_model(path, config, device=device), threads=threads, device=device), config
