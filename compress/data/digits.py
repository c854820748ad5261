"""scikit-learn's handwritten digits: 1797 real 8x8 images bundled with sklearn, so tests and demos run offline."""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits

from compress.data.base import SourceData, Split
from compress.data.images import resize_float, to_uint8
from compress.data.splits import stratified_indices

CLASS_NAMES = [str(d) for d in range(10)]
SPLIT_NAMES = ("train", "val", "test")  # the splits of a source composed from the digits, in seed order
NATIVE_SIZE = 8


def base_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits as float (N, 1, 8, 8) in [0, 1] (sklearn stores 0..16) and int64 labels."""
    bunch = load_digits()
    images = torch.from_numpy(bunch.images).float().div_(16.0).unsqueeze(1)
    return images, torch.from_numpy(bunch.target).long()


def digit_split_indices(
    labels: torch.Tensor, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, torch.Tensor]:
    """The stratified base split shared by ``digits`` and ``digits-mosaic`` (so both hold out the same digits)."""
    train, val, test = stratified_indices(labels, val_fraction, test_fraction, seed)
    return {"train": train, "val": val, "test": test}


def as_channels(images: torch.Tensor, channels: int | None) -> torch.Tensor:
    """Grayscale digit images (N, 1, H, W) as they are, or repeated to three channels when an RGB model wants them."""
    return images.repeat(1, 3, 1, 1) if channels == 3 else images


def composed_counts(size: int | None, *, train: int, held_out: int, least: int, share: int) -> dict[str, int]:
    """Images per split of a source composed from the digits (mosaics, cluttered fields): ``size`` (default
    ``train``) for train, and for val and test each ``size // share``, kept within [``least``, ``held_out``]."""
    if size is None:
        return {"train": train, "val": held_out, "test": held_out}
    n = min(held_out, max(least, size // share))
    return {"train": size, "val": n, "test": n}


def load_digits_source(
    *, image_size: int | None, channels: int | None, val_fraction: float, test_fraction: float, seed: int
) -> SourceData:
    images, labels = base_digits()
    images = to_uint8(resize_float(images, image_size or NATIVE_SIZE))
    full = Split(as_channels(images, channels), labels)
    parts = digit_split_indices(labels, val_fraction, test_fraction, seed)
    return SourceData(
        train=full.select(parts["train"]),
        val=full.select(parts["val"]),
        test=full.select(parts["test"]),
        class_names=list(CLASS_NAMES),
        source=f"digits (scikit-learn, {len(full)} images)",
    )
