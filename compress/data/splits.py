"""Splitting, normalization statistics and the final checks every source goes through."""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from compress.data.base import DatasetSplits, SourceData, Split
from compress.errors import DataError

# Statistics are accumulated in float64 over chunks so that CIFAR-10 sized data never needs a float copy at once.
_STATS_CHUNK = 1024
_STD_FLOOR = 1e-6
log = logging.getLogger(__name__)


def _count(n: int, fraction: float) -> int:
    """How many of n items a fraction carves out; a non-zero fraction always gets at least one item."""
    return 0 if fraction == 0 else max(1, math.floor(n * fraction + 0.5))


def stratified_indices(
    labels: torch.Tensor, val_fraction: float, test_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Partition ``range(len(labels))`` into sorted (train, val, test) index tensors, stratified by label.

    Within each class the items are shuffled (driven by ``seed``) and given evenly spaced ranks in (0, 1); taking
    the globally lowest ranks for test, then val, gives each class its proportional share of every split while
    the split sizes are exactly ``round(n * fraction)``. Unlike sklearn's ``train_test_split`` this never fails on
    classes too small to stratify; the checks in :func:`assemble` report what is actually missing instead.
    """
    n = int(labels.shape[0])
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    perm_labels = labels.numpy()[perm]
    rank = np.empty(n)
    for cls in np.unique(perm_labels):
        members = np.flatnonzero(perm_labels == cls)
        rank[members] = (np.arange(members.size) + 0.5) / members.size
    order = perm[np.argsort(rank, kind="stable")]  # ties keep the shuffled order, so they break randomly
    n_test, n_val = _count(n, test_fraction), _count(n, val_fraction)
    parts = (order[n_test + n_val :], order[n_test : n_test + n_val], order[:n_test])
    train, val, test = (torch.from_numpy(np.sort(part)).long() for part in parts)
    return train, val, test


def carve(split: Split, val_fraction: float, test_fraction: float, seed: int) -> tuple[Split, Split, Split]:
    """Stratified (train, val, test) sub-splits of ``split``; a zero fraction gives an empty split."""
    train, val, test = stratified_indices(split.labels, val_fraction, test_fraction, seed)
    return split.select(train), split.select(val), split.select(test)


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and population std of uint8 (N, C, H, W) images, in [0, 1] units (std floored)."""
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, images.shape[0], _STATS_CHUNK):
        chunk = images[start : start + _STATS_CHUNK].double().div_(255.0)
        total += chunk.sum(dim=(0, 2, 3))
        total_sq += chunk.square().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_(min=0).sqrt_().clamp_(min=_STD_FLOOR)
    return mean.tolist(), std.tolist()


def _declared_values(normalize: dict, key: str, channels: int) -> list[float]:
    values = normalize.get(key)
    field = f"data.normalize.{key}"
    if not isinstance(values, (list, tuple)) or len(values) != channels:
        raise DataError(f"{field} must be a list of {channels} numbers (one per image channel), got {values!r}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise DataError(f"{field} must hold finite numbers, got {values!r}")
    return [float(v) for v in values]


def resolve_normalization(normalize: dict | None, train: Split) -> tuple[list[float], list[float]]:
    """Declared ``{"mean", "std"}`` (validated against the channel count) or statistics of the train split."""
    if normalize is None:
        return channel_stats(train.images)
    if not isinstance(normalize, dict) or set(normalize) != {"mean", "std"}:
        raise DataError(f"data.normalize must be a mapping with exactly the keys 'mean' and 'std', got {normalize!r}")
    channels = train.images.shape[1]
    mean = _declared_values(normalize, "mean", channels)
    std = _declared_values(normalize, "std", channels)
    if any(s <= 0 for s in std):
        raise DataError(f"data.normalize.std must be positive (it divides the image), got {std}")
    return mean, std


def assemble(data: SourceData, *, normalize: dict | None, num_classes: int | None) -> DatasetSplits:
    """Check what a source produced and attach class count, shape facts and normalization."""
    for name in ("train", "val", "test"):
        if len(getattr(data, name)) == 0:
            raise DataError(
                f"{data.source}: the {name} split is empty; provide more images or raise data.{name}_fraction"
            )
    found = len(data.class_names)
    if num_classes is not None and num_classes != found:
        raise DataError(f"data.num_classes is {num_classes} but {data.source} has {found} classes")
    present = set(data.train.labels.unique().tolist())
    missing = [data.class_names[k] for k in range(found) if k not in present]
    if missing:
        raise DataError(f"{data.source}: classes {missing} have no images in the train split; every class needs some")
    for name in ("val", "test"):
        present = set(getattr(data, name).labels.unique().tolist())
        absent = [data.class_names[k] for k in range(found) if k not in present]
        if absent:  # accuracy on that split says nothing about these classes
            log.warning("%s: classes %s have no images in the %s split (too few images to carve one out); "
                        "add images or raise data.%s_fraction", data.source, absent, name, name)
    mean, std = resolve_normalization(normalize, data.train)
    return DatasetSplits(
        train=data.train,
        val=data.val,
        test=data.test,
        num_classes=found,
        in_channels=int(data.train.images.shape[1]),
        image_size=int(data.train.images.shape[-1]),
        class_names=list(data.class_names),
        mean=mean,
        std=std,
        source=data.source,
    )
