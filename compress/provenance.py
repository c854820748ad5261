"""Versions and environment facts recorded with every checkpoint, trial and artifact."""

from __future__ import annotations

import platform
from importlib import metadata

PACKAGES = ("compress", "torch", "optuna", "onnx", "onnxruntime", "torch-pruning", "accelerate", "safetensors",
            "bitsandbytes", "torchao")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def machine() -> dict[str, str]:
    import torch

    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine()}
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info
