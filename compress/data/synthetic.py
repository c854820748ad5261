"""A tiny synthetic dataset, fully determined by its seed, for tests and smoke runs of any shape.

Each class is a fixed random low-frequency template (4x4 noise upsampled to the image size); each image is its
class template shifted by up to one pixel plus Gaussian noise. The templates differ far more than the noise,
so even a linear classifier learns the task quickly, while the shift and noise keep it from being trivial.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from compress.data.base import SourceData, Split
from compress.data.images import crop_batch, resize_float, to_uint8
from compress.data.splits import carve

DEFAULT_NUM_CLASSES = 4
DEFAULT_CHANNELS = 1
DEFAULT_IMAGE_SIZE = 16
DEFAULT_SIZE = 512
_COARSE = 4
_NOISE_STD = 0.1
_MAX_SHIFT = 1


def load_synthetic_source(
    *,
    num_classes: int | None,
    channels: int | None,
    image_size: int | None,
    size: int | None,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> SourceData:
    num_classes = num_classes or DEFAULT_NUM_CLASSES
    channels = channels or DEFAULT_CHANNELS
    image_size = image_size or DEFAULT_IMAGE_SIZE
    size = size or DEFAULT_SIZE
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_classes, channels, _COARSE, _COARSE, generator=gen)
    templates = 0.2 + 0.6 * resize_float(coarse, image_size)  # keep clear of 0/1 so noise is rarely clipped
    labels = (torch.arange(size) % num_classes)[torch.randperm(size, generator=gen)]
    padded = F.pad(templates[labels], (_MAX_SHIFT,) * 4, mode="replicate")
    top = torch.randint(0, 2 * _MAX_SHIFT + 1, (size,), generator=gen)
    left = torch.randint(0, 2 * _MAX_SHIFT + 1, (size,), generator=gen)
    shifted = crop_batch(padded, top, left, image_size, image_size)
    noisy = (shifted + _NOISE_STD * torch.randn(shifted.shape, generator=gen)).clamp_(0.0, 1.0)
    train, val, test = carve(Split(to_uint8(noisy), labels), val_fraction, test_fraction, seed)
    return SourceData(
        train=train,
        val=val,
        test=test,
        class_names=[str(k) for k in range(num_classes)],
        source=f"synthetic ({num_classes} classes, {size} images, {channels}x{image_size}x{image_size}, seed {seed})",
    )
