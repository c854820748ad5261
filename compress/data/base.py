"""In-memory dataset containers.

Every dataset this toolkit trains on (digits, CIFAR-10, a user's image folder of modest size) fits in memory.
Holding images as uint8 keeps them 4x smaller than float32 and makes every epoch free of file decoding; the
conversion to float in [0, 1] happens per item, so models never see the storage format.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset


@dataclass
class Split:
    """One split: ``images`` uint8 (N, C, H, W) and ``labels`` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        # Programming errors, not user errors: every loader in this package builds splits itself.
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"Split.images must be uint8 (N, C, H, W), got {self.images.dtype} {list(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or tuple(self.labels.shape) != (self.images.shape[0],):
            raise ValueError(
                f"Split.labels must be int64 of length {self.images.shape[0]}, "
                f"got {self.labels.dtype} {list(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def select(self, index: torch.Tensor) -> Split:
        """The sub-split at ``index`` (an int64 index tensor)."""
        return Split(self.images[index], self.labels[index])


class ImageDataset(Dataset):
    """A :class:`Split` as a map-style dataset yielding ``(float32 image in [0, 1] (C, H, W), int label)``."""

    def __init__(self, split: Split) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.split.images[index].float().div_(255.0), int(self.split.labels[index])


@dataclass
class SourceData:
    """What a source module produces: the three splits and class names, before normalization is resolved."""

    train: Split
    val: Split
    test: Split
    class_names: list[str]
    source: str


@dataclass
class DatasetSplits:
    """A loaded dataset: three splits plus the facts a model and a report need about them."""

    train: Split
    val: Split
    test: Split
    num_classes: int
    in_channels: int
    image_size: int
    class_names: list[str]
    mean: list[float]
    std: list[float]
    source: str

    def describe(self) -> dict:
        """A JSON-able summary, written next to results so a run records what it was trained on."""
        return {
            "source": self.source,
            "sizes": {"train": len(self.train), "val": len(self.val), "test": len(self.test)},
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
        }
