"""What data is, independent of where it lives: the key that supernets and studies are matched on.

The same images reached by another relative path, through a symlink, or copied to another machine give the
same fingerprint; an added, removed, renamed or edited file gives another. Every file's path relative to the
data root and its size are hashed, with the first HEAD_BYTES of its content: whole images (most are smaller)
and the headers of large batch files, without reading a large dataset in full on every run.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

HEAD_BYTES = 64 * 1024


def content_fingerprint(path: Path) -> str:
    root = Path(path).resolve()
    files = [root] if root.is_file() else sorted(
        p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))
    digest = hashlib.sha256()
    for file in files:
        rel = file.name if file == root else file.relative_to(root).as_posix()
        digest.update(f"{rel}\0{os.path.getsize(file)}\0".encode())
        with open(file, "rb") as fh:
            digest.update(hashlib.sha256(fh.read(HEAD_BYTES)).digest())
    return digest.hexdigest()[:16]
