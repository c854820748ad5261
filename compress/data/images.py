"""Tensor image helpers shared by the sources: quantization to uint8, resizing, per-sample cropping."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Resizing converts to float; chunking bounds that temporary to a few tens of MB even for CIFAR-10 upsampled.
_RESIZE_CHUNK = 1024


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] to uint8 (round(x * 255), clamped)."""
    return (x * 255.0).round_().clamp_(0, 255).to(torch.uint8)


def resize_float(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinearly resize float (N, C, H, W) images to size x size.

    Antialiasing is used only when shrinking: it is what prevents aliasing there, while for enlarging it is a
    no-op that merely costs time.
    """
    if x.shape[-2:] == (size, size):
        return x
    shrinking = size < max(x.shape[-2:])
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking)


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 (N, C, H, W) images to size x size, in chunks, returning uint8."""
    if images.shape[-2:] == (size, size):
        return images
    out = torch.empty((images.shape[0], images.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, images.shape[0], _RESIZE_CHUNK):
        chunk = images[start : start + _RESIZE_CHUNK].float().div_(255.0)
        out[start : start + _RESIZE_CHUNK] = to_uint8(resize_float(chunk, size))
    return out


def crop_batch(padded: torch.Tensor, top: torch.Tensor, left: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Crop a height x width window from each padded image at its own (top, left) offset, in one gather."""
    rows = (top.view(-1, 1) + torch.arange(height, device=padded.device)).view(-1, 1, height, 1)
    cols = (left.view(-1, 1) + torch.arange(width, device=padded.device)).view(-1, 1, 1, width)
    batch = torch.arange(padded.shape[0], device=padded.device).view(-1, 1, 1, 1)
    channels = torch.arange(padded.shape[1], device=padded.device).view(1, -1, 1, 1)
    return padded[batch, channels, rows, cols]
