"""digits-mosaic: a harder task built from the same real scikit-learn digits.

Each image is a ``grid`` x ``grid`` mosaic of digits (3x3 by default, 10x10 pixels per cell, 30x30 in all):
two different images of one digit and one image each of ``grid**2 - 2`` other, distinct digits, at random
positions. The label is the digit that appears twice. Plain ``digits`` is solved by almost any network, so
it cannot tell architectures apart. Here the label depends on every cell (a model must recognise all of
them and find the one that repeats), so recognition errors compound and small or low-capacity models fall
behind: architecture and compression choices show up in accuracy.

Measured while designing it: (top-left + bottom-right) mod 10 on 2x2 mosaics was too hard (a supernet stayed
at chance for 6 epochs of 4,000 mosaics); the repeated digit on 2x2 mosaics of 16x16 cells was too easy
(every subnet, smallest to largest, at 98.7-99.1% val accuracy), and so were 2x2 mosaics of raw 8x8 digits
(98.3% and 98.5% for the smallest and largest subnet trained alone). On 3x3 mosaics a supernet trained for 25
epochs reached 44-46%: hard enough that capacity matters, so the mosaic recipe trains for longer.

The base digits are split into train/val/test exactly as for ``digits`` before composing, and mosaics are
composed within each split, so no base digit image is ever seen in two splits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from compress.data.base import SourceData, Split
from compress.data.digits import (CLASS_NAMES, SPLIT_NAMES, as_channels, base_digits, composed_counts,
                                  digit_split_indices)
from compress.data.images import resize_float, resize_uint8, to_uint8

CELL_SIZES = {2: 16, 3: 10}  # pixels per cell: mosaics of 32 and 30 pixels
DEFAULT_GRID = 3
DEFAULT_TRAIN_SIZE = 6000
DEFAULT_EVAL_SIZE = 1000
MIN_EVAL_SIZE = 200


@dataclass
class Mosaics:
    """Composed mosaics and their provenance."""

    images: torch.Tensor  # uint8 (n, C, grid*h, grid*w)
    labels: torch.Tensor  # int64 (n,): the digit class that appears in two cells
    cells: torch.Tensor  # int64 (n, grid**2): base image index per cell, row by row from the top-left


def compose_mosaics(
    images: torch.Tensor,
    labels: torch.Tensor,
    n: int,
    seed: int | Sequence[int],
    pool: torch.Tensor | None = None,
    grid: int = 2,
) -> Mosaics:
    """Compose ``n`` ``grid`` x ``grid`` mosaics from base ``images`` (uint8 (M, C, h, w)) with ``labels`` (M,).

    Per mosaic: a label class drawn uniformly (among classes with two images in ``pool``), two distinct images
    of it, one image each of ``grid**2 - 2`` other distinct classes, shuffled over the cells.
    """
    cells_per_mosaic = grid * grid
    pool = torch.arange(images.shape[0]) if pool is None else pool
    rng = np.random.default_rng(seed)
    by_class = {int(c): pool[labels[pool] == c].numpy() for c in torch.unique(labels[pool])}
    repeatable = [c for c, idx in by_class.items() if len(idx) >= 2]
    classes = list(by_class)
    if not repeatable or len(classes) < cells_per_mosaic - 1:
        raise ValueError(f"a {grid}x{grid} mosaic needs a class with two images and {cells_per_mosaic - 2} other "
                         f"classes in the pool (it has {len(classes)} classes)")
    cells = np.empty((n, cells_per_mosaic), dtype=np.int64)
    mosaic_labels = np.empty(n, dtype=np.int64)
    for i in range(n):
        label = repeatable[rng.integers(len(repeatable))]
        others = rng.choice([c for c in classes if c != label], size=cells_per_mosaic - 2, replace=False)
        chosen = list(rng.choice(by_class[label], size=2, replace=False))
        chosen += [by_class[int(c)][rng.integers(len(by_class[int(c)]))] for c in others]
        cells[i] = rng.permutation(chosen)
        mosaic_labels[i] = label
    cells_t = torch.from_numpy(cells)
    tiles = images[cells_t]  # (n, grid*grid, C, h, w)
    rows = [torch.cat([tiles[:, r * grid + c] for c in range(grid)], dim=-1) for r in range(grid)]
    return Mosaics(torch.cat(rows, dim=-2), torch.from_numpy(mosaic_labels), cells_t)


def mosaic_counts(size: int | None) -> dict[str, int]:
    """Mosaics per split: ``size`` (default 6000) for train; 1000 each for val/test, fewer for small ``size``."""
    return composed_counts(size, train=DEFAULT_TRAIN_SIZE, held_out=DEFAULT_EVAL_SIZE, least=MIN_EVAL_SIZE, share=6)


def build_mosaic_splits(
    cell_images: torch.Tensor,
    labels: torch.Tensor,
    pools: dict[str, torch.Tensor],
    counts: dict[str, int],
    seed: int,
    grid: int = 2,
) -> dict[str, Mosaics]:
    """Compose each split's mosaics from that split's own pool of base digits (independent seeds per split)."""
    return {
        name: compose_mosaics(cell_images, labels, counts[name], (seed, k), pool=pools[name], grid=grid)
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
    grid: int = DEFAULT_GRID,
) -> SourceData:
    images, labels = base_digits()
    cell = CELL_SIZES[grid]
    cell_images = to_uint8(resize_float(images, cell))
    pools = digit_split_indices(labels, val_fraction, test_fraction, seed)
    counts = mosaic_counts(size)
    mosaics = build_mosaic_splits(cell_images, labels, pools, counts, seed, grid=grid)
    splits = {}
    for name, m in mosaics.items():
        out = resize_uint8(m.images, image_size or grid * cell)
        splits[name] = Split(as_channels(out, channels), m.labels)
    return SourceData(
        **splits,
        class_names=list(CLASS_NAMES),
        source=(
            f"digits-mosaic ({grid}x{grid} mosaics of scikit-learn digits, label = the digit that appears twice; "
            f"{counts['train']}/{counts['val']}/{counts['test']} train/val/test mosaics)"
        ),
    )
