"""Weights on disk: safetensors only. Pickle-based files are refused, never unpickled."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save

from compress.errors import CheckpointError
from compress.fsutil import write_bytes_atomic

HEAD_BYTES = 16  # enough of a file's start for `is_pickle`


def is_pickle(head: bytes) -> bool:
    """Whether a file starting with ``head`` is a pickle (``torch.save``) rather than safetensors.

    safetensors starts with its JSON header's length (8 bytes, little-endian) and then the header, ``{``. That
    length's first byte can be anything, 0x80 included (a header of 0x1080 bytes, one exported artifact in
    this project's quickstart), so the safetensors layout is checked before the pickle signatures: raw pickle
    protocol 2-5 (0x80 and the protocol number) and torch.save's zip container.
    """
    if head[8:9] == b"{":
        return False
    raw_pickle = len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5
    return head.startswith(b"PK\x03\x04") or raw_pickle


def refuse_pickle(head: bytes, file: Path | str) -> None:
    """Raise :class:`CheckpointError` if ``file``, which starts with ``head``, is a pickle: never unpickled."""
    if is_pickle(head):
        raise CheckpointError(f"{file}: this is a pickle (torch.save) file, not safetensors; compress refuses to "
                              "unpickle weights because unpickling can run arbitrary code")


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    write_bytes_atomic(path, save(tensors, metadata=metadata))


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    with open(path, "rb") as fh:
        refuse_pickle(fh.read(HEAD_BYTES), path)
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
