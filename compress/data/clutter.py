"""digits-clutter: scikit-learn's real digits on a canvas strewn with fragments of other digits.

Each image is a ``canvas`` x ``canvas`` field (32 by default) holding one whole digit (16x16) at a random
position and ``fragments`` random 8x8 pieces cut from other digits of the same split, scattered over the field
(pixel-wise maximum, as in the cluttered MNIST of Mnih et al. 2014 and the Spatial Transformer paper). The label
is the whole digit's class. The fragments are made of real strokes, so a model must tell a whole digit from
pieces of others anywhere in the field: a task on which a model's receptive field and capacity show up in
accuracy, at the cost of plain ``digits`` (one small image per sample).

Measured while designing it (the quickstart's supernet, 3,000 training fields): with 6 fragments the largest
subnet reached 68.0% val after 8 epochs and the smallest 46-48%, too hard for a quickstart; with 3, 86.0% and
65-68% after 7 epochs (plain digits: 97-100% for every subnet). 2,000 fields for 10 epochs (the same number
of steps) gave 83.3% and 62-64%: more distinct fields help more than more epochs.

The base digits are split into train/val/test exactly as for ``digits`` before composing, and every
composite is made from its own split's digits only (its digit and its fragments), so no base digit image is
ever seen in two splits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from compress.data.base import SourceData, Split
from compress.data.digits import (CLASS_NAMES, SPLIT_NAMES, as_channels, base_digits, composed_counts,
                                  digit_split_indices)
from compress.data.images import resize_float, resize_uint8, to_uint8

DIGIT_SIZE = 16  # pixels of the whole digit (the 8x8 originals, upsampled)
FRAGMENT_SIZE = 8  # pixels of a fragment, cut from an upsampled digit
CANVAS = 32
DEFAULT_FRAGMENTS = 3
DEFAULT_TRAIN_SIZE = 3000
DEFAULT_EVAL_SIZE = 600


@dataclass
class Clutter:
    """Composed fields and their provenance."""

    images: torch.Tensor  # uint8 (n, 1, canvas, canvas)
    labels: torch.Tensor  # int64 (n,): the class of the whole digit
    digits: torch.Tensor  # int64 (n,): base image index of the whole digit
    positions: torch.Tensor  # int64 (n, 2): row and column of the whole digit's top-left pixel
    fragments: torch.Tensor  # int64 (n, fragments): base image index each fragment was cut from


def compose_clutter(images: torch.Tensor, labels: torch.Tensor, n: int, seed, pool: torch.Tensor,
                    fragments: int = DEFAULT_FRAGMENTS, canvas: int = CANVAS) -> Clutter:
    """Compose ``n`` fields from base ``images`` (uint8 (M, 1, DIGIT_SIZE, DIGIT_SIZE)) drawn from ``pool``:
    ``fragments`` pieces of random digits first, then the whole digit, each at a uniformly random position."""
    rng = np.random.default_rng(seed)
    pool_np = pool.numpy()
    src = images.numpy()
    out = np.zeros((n, 1, canvas, canvas), dtype=np.uint8)
    whole = rng.choice(pool_np, size=n)
    pieces = rng.choice(pool_np, size=(n, fragments))
    positions = np.empty((n, 2), dtype=np.int64)
    span, piece = canvas - DIGIT_SIZE + 1, DIGIT_SIZE - FRAGMENT_SIZE + 1
    for i in range(n):
        field = out[i, 0]
        for j in pieces[i]:
            sy, sx = rng.integers(piece, size=2)
            y, x = rng.integers(canvas - FRAGMENT_SIZE + 1, size=2)
            frag = src[j, 0, sy:sy + FRAGMENT_SIZE, sx:sx + FRAGMENT_SIZE]
            np.maximum(field[y:y + FRAGMENT_SIZE, x:x + FRAGMENT_SIZE], frag,
                       out=field[y:y + FRAGMENT_SIZE, x:x + FRAGMENT_SIZE])
        y, x = positions[i] = rng.integers(span, size=2)
        region = field[y:y + DIGIT_SIZE, x:x + DIGIT_SIZE]
        np.maximum(region, src[whole[i], 0], out=region)
    whole_t = torch.from_numpy(whole)
    return Clutter(torch.from_numpy(out), labels[whole_t], whole_t, torch.from_numpy(positions),
                   torch.from_numpy(pieces))


def clutter_counts(size: int | None) -> dict[str, int]:
    """Fields per split: ``size`` (default 3000) for train; 600 each for val/test, fewer for small ``size``."""
    return composed_counts(size, train=DEFAULT_TRAIN_SIZE, held_out=DEFAULT_EVAL_SIZE, least=100, share=5)


def build_clutter_splits(digits: torch.Tensor, labels: torch.Tensor, pools: dict[str, torch.Tensor],
                         counts: dict[str, int], seed: int, fragments: int = DEFAULT_FRAGMENTS) -> dict[str, Clutter]:
    """Compose each split's fields from that split's own pool of base digits (independent seeds per split)."""
    return {name: compose_clutter(digits, labels, counts[name], (seed, 7919, k), pools[name], fragments=fragments)
            for k, name in enumerate(SPLIT_NAMES)}


def load_clutter_source(*, image_size: int | None, channels: int | None, val_fraction: float,
                        test_fraction: float, seed: int, size: int | None,
                        fragments: int = DEFAULT_FRAGMENTS) -> SourceData:
    images, labels = base_digits()
    digits = to_uint8(resize_float(images, DIGIT_SIZE))
    pools = digit_split_indices(labels, val_fraction, test_fraction, seed)
    counts = clutter_counts(size)
    splits = {}
    for name, c in build_clutter_splits(digits, labels, pools, counts, seed, fragments).items():
        out = resize_uint8(c.images, image_size or CANVAS)
        splits[name] = Split(as_channels(out, channels), c.labels)
    return SourceData(
        **splits,
        class_names=list(CLASS_NAMES),
        source=(f"digits-clutter (scikit-learn digits on a {CANVAS}x{CANVAS} field with {fragments} fragments of "
                f"other digits; {counts['train']}/{counts['val']}/{counts['test']} train/val/test fields)"),
    )
