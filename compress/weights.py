"""Weights on disk: safetensors only. Pickle-based files are refused, never unpickled."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save

from compress.errors import CheckpointError
from compress.fsutil import write_bytes_atomic

PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # raw pickle protocol 2+, torch.save's zip container


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    write_bytes_atomic(path, save(tensors, metadata=metadata))


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head.startswith(PICKLE_MAGIC):
        raise CheckpointError(
            f"{path}: this is a pickle (torch.save) file, not safetensors; compress refuses to unpickle weights "
            "because unpickling can run arbitrary code"
        )
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for truncated or malformed files
        raise CheckpointError(f"{path}: not a valid safetensors file ({exc}); the file may be truncated or corrupted") from None


def load_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: Path | str,
              skip_prefixes: tuple[str, ...] = ()) -> None:
    """Load ``tensors`` into ``module`` strictly, turning mismatches into a clear CheckpointError.

    Keys under ``skip_prefixes`` (sub-modules already rebuilt from their own tensors) are left out of the check.
    """
    expected = {k: v for k, v in module.state_dict().items() if not k.startswith(skip_prefixes)}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} tensors of the wrong shape (e.g. {k}: file {list(tensors[k].shape)}, "
                         f"model {list(expected[k].shape)})")
        raise CheckpointError(f"{source}: weights do not match the model: " + "; ".join(parts))
    module.load_state_dict(tensors, strict=not skip_prefixes)
