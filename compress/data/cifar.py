"""CIFAR-10 in its *binary* distribution (cifar-10-binary.tar.gz), read with numpy.

The binary format is used rather than the Python pickle version because unpickling a downloaded file can run
arbitrary code. Each record is 1 label byte followed by 3072 pixel bytes: the 1024 red, then 1024 green, then
1024 blue values of a 32x32 image in row-major order, i.e. exactly a (3, 32, 32) uint8 array.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from compress.data.base import SourceData, Split
from compress.data.images import resize_uint8
from compress.data.splits import carve
from compress.errors import DataError

RECORD_BYTES = 1 + 3 * 32 * 32
NUM_CLASSES = 10
NESTED_DIR = "cifar-10-batches-bin"
STANDARD_CLASS_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip


def _batch_order(path: Path) -> tuple[int, str]:
    """Sort data_batch_2 before data_batch_10 so the train set order does not depend on name length."""
    match = re.search(r"\d+", path.stem)
    return (int(match.group()) if match else 0, path.name)


def read_batch(path: Path) -> Split:
    """One CIFAR-10 binary batch file as a :class:`Split`, rejecting truncated files and bad labels."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD_BYTES:
        raise DataError(
            f"{path} is {raw.size} bytes, not a positive multiple of {RECORD_BYTES} "
            "(1 label byte + 3072 pixel bytes per record); the file is truncated or not CIFAR-10 binary"
        )
    records = raw.reshape(-1, RECORD_BYTES)
    labels = records[:, 0]
    bad = np.flatnonzero(labels >= NUM_CLASSES)
    if bad.size:
        raise DataError(
            f"{path}: record {bad[0]} has label {labels[bad[0]]}, but CIFAR-10 labels are 0..{NUM_CLASSES - 1}"
        )
    images = records[:, 1:].reshape(-1, 3, 32, 32)
    return Split(torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64)))


def _class_names(folder: Path) -> list[str]:
    meta = folder / "batches.meta.txt"
    if not meta.is_file():
        return list(STANDARD_CLASS_NAMES)
    names = [line.strip() for line in meta.read_text().splitlines() if line.strip()]
    if len(names) != NUM_CLASSES:
        raise DataError(f"{meta} lists {len(names)} class names; expected {NUM_CLASSES}, one per line")
    return names


def load_cifar_source(
    *,
    path: str,
    image_size: int | None,
    channels: int | None,
    val_fraction: float,
    seed: int,
) -> SourceData:
    if channels not in (None, 3):
        raise DataError(f"data.channels is {channels}, but CIFAR-10 images have 3 channels")
    root = Path(path)
    if not root.exists():
        raise DataError(f"data.path {root} does not exist")
    if not root.is_dir():
        raise DataError(f"data.path {root} is not a directory; expected the folder of CIFAR-10 binary batch files")
    folder = root / NESTED_DIR if (root / NESTED_DIR).is_dir() else root
    train_files = sorted(folder.glob("data_batch_*.bin"), key=_batch_order)
    if not train_files:
        raise DataError(f"{folder} has no data_batch_*.bin files (CIFAR-10 binary format, not the pickle version)")
    test_file = folder / "test_batch.bin"
    if not test_file.is_file():
        raise DataError(f"{test_file} does not exist; CIFAR-10 binary needs test_batch.bin next to the train batches")

    batches = [read_batch(f) for f in train_files]
    full = Split(torch.cat([b.images for b in batches]), torch.cat([b.labels for b in batches]))
    train, val, _ = carve(full, val_fraction, 0.0, seed)
    test = read_batch(test_file)
    size = image_size or 32
    train, val, test = (Split(resize_uint8(s.images, size), s.labels) for s in (train, val, test))
    return SourceData(
        train=train,
        val=val,
        test=test,
        class_names=_class_names(folder),
        source=f"cifar10 ({folder}, {len(full)} train+val / {len(test)} test images)",
    )
