"""Small static layers that deployable subnets are assembled from (plain torch, exportable, prunable)."""

from __future__ import annotations

import torch
from torch import nn


class Normalize(nn.Module):
    """Per-channel normalization baked into the model so deployed models take images in [0, 1].

    The statistics are buffers (saved with the weights and visible in ``config.json``), never hidden in a
    data pipeline the user has to re-create.
    """

    def __init__(self, mean: list[float], std: list[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class ConvBNAct(nn.Module):
    """Conv2d (no bias) + BatchNorm2d + optional ReLU. ReLU rather than a smooth activation because it fuses
    into integer convolution kernels (QLinearConv) and costs nothing at INT8."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride, kernel_size // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.act = nn.ReLU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))
