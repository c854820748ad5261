"""Batching, augmentation and calibration samples, all reproducible from a seed.

Search compares many candidate networks; if their data order or augmentation differed by chance, part of the
accuracy differences would be noise. Every random choice here is therefore drawn from an explicit generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from compress.data.base import ImageDataset, Split
from compress.data.images import crop_batch


def make_loader(
    split: Split,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    drop_last: bool = False,
    num_workers: int = 0,
) -> DataLoader:
    """A DataLoader of ``(float images in [0, 1], int64 labels)`` batches.

    The shuffle order comes from a generator seeded with ``seed``: two loaders built alike yield the same
    batches, and successive epochs of one loader differ from each other but are reproducible.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    return DataLoader(
        ImageDataset(split),
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
    )


def augment_batch(
    x: torch.Tensor,
    *,
    crop_padding: int = 0,
    hflip: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random translation and horizontal flip of a float (B, C, H, W) batch, per sample, vectorised.

    Translation pads ``crop_padding`` zero pixels on every side and crops back to H x W at a random offset
    (the usual "pad and random crop"); the flip mirrors each sample with probability 1/2. With both disabled
    ``x`` itself is returned. Random numbers are drawn on the generator's device, then moved to ``x``'s.
    """
    if crop_padding < 0:
        raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
    if crop_padding == 0 and not hflip:
        return x
    batch, _, height, width = x.shape
    device = generator.device if generator is not None else torch.device("cpu")
    if crop_padding:
        padded = F.pad(x, (crop_padding,) * 4)
        offsets = torch.randint(0, 2 * crop_padding + 1, (2, batch), generator=generator, device=device).to(x.device)
        x = crop_batch(padded, offsets[0], offsets[1], height, width)
    if hflip:
        flip = (torch.rand(batch, generator=generator, device=device) < 0.5).to(x.device)
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    return x


def calibration_batches(split: Split, n_batches: int, batch_size: int, seed: int = 0) -> list[torch.Tensor]:
    """``n_batches`` float [0, 1] batches of ``batch_size`` images drawn at random (deterministic from ``seed``).

    Quantization calibration wants a representative sample rather than the first images on disk. Images are
    drawn without replacement; when more are asked for than the split holds, further permutations follow, so
    the list always has exactly ``n_batches`` full batches.
    """
    if n_batches < 1 or batch_size < 1:
        raise ValueError(f"n_batches and batch_size must be at least 1, got {n_batches} and {batch_size}")
    if len(split) == 0:
        raise ValueError("cannot draw calibration batches from an empty split")
    generator = torch.Generator().manual_seed(seed)
    needed = n_batches * batch_size
    rounds = math.ceil(needed / len(split))
    index = torch.cat([torch.randperm(len(split), generator=generator) for _ in range(rounds)])[:needed]
    return [split.images[chunk].float().div_(255.0) for chunk in index.split(batch_size)]


# The batches that make a built candidate reproducible: BatchNorm recalibration and quantization calibration.
# Search, export, supernet evaluation and ``compress distill`` all draw them here, so an artifact rebuilt
# anywhere sees the same images (the sizes and seed offsets are part of what the search measured).
BN_BATCH_SIZE, CALIBRATION_BATCH_SIZE, CALIBRATION_SEED_OFFSET = 64, 32, 1


@dataclass(frozen=True)
class ReferenceBatches:
    bn: list[torch.Tensor]  # BatchNorm recalibration of a subnet
    calibration: list[torch.Tensor]  # activation ranges for static INT8 quantization


def reference_batches(split: Split, seed: int, *, bn: int = 0, calibration: int = 0) -> ReferenceBatches:
    """``bn`` BatchNorm batches and ``calibration`` quantization batches of ``split``, deterministic from ``seed``."""
    return ReferenceBatches(
        bn=calibration_batches(split, bn, BN_BATCH_SIZE, seed=seed) if bn else [],
        calibration=(calibration_batches(split, calibration, CALIBRATION_BATCH_SIZE, seed=seed + CALIBRATION_SEED_OFFSET)
                     if calibration else []),
    )
