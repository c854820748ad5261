"""digits-mosaic: a harder task built from the same real scikit-learn digits.

Each image is a 2x2 mosaic of four digits (each cell 16x16, so 32x32 in all). The label is
(top-left digit + bottom-right digit) mod 10; the other two cells are distractors. Plain ``digits`` is solved
by almost any network, so it cannot tell architectures apart. Here the label depends on two cells at opposite
corners, so a model must recognise digits *and* relate distant regions: local-only or tiny models fall
behind, which is what makes architecture and compression choices show up in accuracy.

The base digits are split into train/val/test exactly as for ``digits`` before composing, and mosaics are
composed within each split, so no base digit image is ever seen in two splits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from compress.data.base import SourceData, Split
from compress.data.digits import CLASS_NAMES, base_digits, digit_split_indices
from compress.data.images import resize_float, resize_uint8, to_uint8

CELL_SIZE = 16
DEFAULT_TRAIN_SIZE = 6000
DEFAULT_EVAL_SIZE = 1000
MIN_EVAL_SIZE = 200
SPLIT_NAMES = ("train", "val", "test")


@dataclass
class Mosaics:
    """Composed mosaics and their provenance."""

    images: torch.Tensor  # uint8 (n, C, 2h, 2w)
    labels: torch.Tensor  # int64 (n,): (label of top-left + label of bottom-right) mod 10
    cells: torch.Tensor  # int64 (n, 4): base image index per cell, order top-left, top-right, bottom-left, bottom-right


def compose_mosaics(
    images: torch.Tensor,
    labels: torch.Tensor,
    n: int,
    seed: int | Sequence[int],
    pool: torch.Tensor | None = None,
) -> Mosaics:
    """Compose ``n`` 2x2 mosaics from base ``images`` (uint8 (M, C, h, w)) with base ``labels`` (M,).

    Cells are drawn uniformly with replacement from ``pool`` (indices into ``images``; all of them if None), so
    the two label cells are independent and the mod-10 label is close to uniform.
    """
    pool = torch.arange(images.shape[0]) if pool is None else pool
    rng = np.random.default_rng(seed)
    cells = pool[torch.from_numpy(rng.integers(0, pool.shape[0], size=(n, 4)))]
    tiles = images[cells]  # (n, 4, C, h, w)
    top = torch.cat([tiles[:, 0], tiles[:, 1]], dim=-1)
    bottom = torch.cat([tiles[:, 2], tiles[:, 3]], dim=-1)
    mosaic_labels = (labels[cells[:, 0]] + labels[cells[:, 3]]) % 10
    return Mosaics(torch.cat([top, bottom], dim=-2), mosaic_labels, cells)


def mosaic_counts(size: int | None) -> dict[str, int]:
    """Mosaics per split: ``size`` (default 6000) for train; 1000 each for val/test, fewer for small ``size``."""
    if size is None:
        return {"train": DEFAULT_TRAIN_SIZE, "val": DEFAULT_EVAL_SIZE, "test": DEFAULT_EVAL_SIZE}
    held_out = min(DEFAULT_EVAL_SIZE, max(MIN_EVAL_SIZE, size // 6))
    return {"train": size, "val": held_out, "test": held_out}


def build_mosaic_splits(
    cell_images: torch.Tensor,
    labels: torch.Tensor,
    pools: dict[str, torch.Tensor],
    counts: dict[str, int],
    seed: int,
) -> dict[str, Mosaics]:
    """Compose each split's mosaics from that split's own pool of base digits (independent seeds per split)."""
    return {
        name: compose_mosaics(cell_images, labels, counts[name], (seed, k), pool=pools[name])
        for k, name in enumerate(SPLIT_NAMES)
    }


def load_mosaic_source(
    *,
    image_size: int | None,
    channels: int | None,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    size: int | None,
) -> SourceData:
    images, labels = base_digits()
    cell_images = to_uint8(resize_float(images, CELL_SIZE))
    pools = digit_split_indices(labels, val_fraction, test_fraction, seed)
    counts = mosaic_counts(size)
    mosaics = build_mosaic_splits(cell_images, labels, pools, counts, seed)
    splits = {}
    for name, m in mosaics.items():
        out = resize_uint8(m.images, image_size or 2 * CELL_SIZE)
        splits[name] = Split(out.repeat(1, 3, 1, 1) if channels == 3 else out, m.labels)
    return SourceData(
        **splits,
        class_names=list(CLASS_NAMES),
        source=(
            "digits-mosaic (2x2 mosaics of scikit-learn digits, label = (top-left + bottom-right) mod 10; "
            f"{counts['train']}/{counts['val']}/{counts['test']} train/val/test mosaics)"
        ),
    )
