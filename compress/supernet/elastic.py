"""Elastic layers: one set of weights sized for the largest choice, sliced for any smaller one.

As in once-for-all, a smaller width takes the first channels and a smaller kernel takes the centre of the
largest kernel. Each layer has one ``_slice`` method used by both ``forward`` and ``extract`` so that an
extracted static module computes exactly what the supernet computed for that choice.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from compress.nn.layers import ConvBNAct


def _center(weight: torch.Tensor, kernel_size: int) -> torch.Tensor:
    full = weight.shape[-1]
    if kernel_size == full:
        return weight
    start = (full - kernel_size) // 2
    return weight[..., start : start + kernel_size, start : start + kernel_size]


class ElasticConvBNAct(nn.Module):
    """Conv2d + BatchNorm2d (+ ReLU) with elastic input/output channels and kernel size.

    BatchNorm keeps full-size running statistics; a slice of them is used and updated in place (the slice
    is a view), which is what lets BN statistics be recalibrated per subnet.
    """

    def __init__(self, max_in: int, max_out: int, max_kernel: int, stride: int = 1, depthwise: bool = False,
                 act: bool = True):
        super().__init__()
        self.stride = stride
        self.depthwise = depthwise
        self.act = act
        self.max_kernel = max_kernel
        self.weight = nn.Parameter(torch.empty(max_out, 1 if depthwise else max_in, max_kernel, max_kernel))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        self.bn = nn.BatchNorm2d(max_out)

    def _slice(self, in_ch: int, out_ch: int, kernel_size: int) -> torch.Tensor:
        if self.depthwise:
            return _center(self.weight[:in_ch], kernel_size)
        return _center(self.weight[:out_ch, :in_ch], kernel_size)

    def forward(self, x: torch.Tensor, out_ch: int | None = None, kernel_size: int | None = None) -> torch.Tensor:
        in_ch = x.shape[1]
        out_ch = in_ch if self.depthwise else out_ch
        kernel_size = kernel_size or self.max_kernel
        weight = self._slice(in_ch, out_ch, kernel_size)
        x = F.conv2d(x, weight, None, self.stride, kernel_size // 2, 1, in_ch if self.depthwise else 1)
        bn = self.bn
        x = F.batch_norm(
            x,
            bn.running_mean[:out_ch] if bn.track_running_stats else None,
            bn.running_var[:out_ch] if bn.track_running_stats else None,
            bn.weight[:out_ch],
            bn.bias[:out_ch],
            self.training or not bn.track_running_stats,
            bn.momentum,
            bn.eps,
        )
        return F.relu(x) if self.act else x

    @torch.no_grad()
    def extract(self, in_ch: int, out_ch: int, kernel_size: int | None = None) -> ConvBNAct:
        kernel_size = kernel_size or self.max_kernel
        out_ch = in_ch if self.depthwise else out_ch
        static = ConvBNAct(in_ch, out_ch, kernel_size, self.stride, groups=in_ch if self.depthwise else 1, act=self.act)
        static.conv.weight.copy_(self._slice(in_ch, out_ch, kernel_size))
        static.bn.weight.copy_(self.bn.weight[:out_ch])
        static.bn.bias.copy_(self.bn.bias[:out_ch])
        static.bn.running_mean.copy_(self.bn.running_mean[:out_ch])
        static.bn.running_var.copy_(self.bn.running_var[:out_ch])
        static.bn.num_batches_tracked.copy_(self.bn.num_batches_tracked)
        static.bn.eps, static.bn.momentum = self.bn.eps, self.bn.momentum
        return static


class ElasticDWConv(nn.Module):
    """Depthwise 3x3 convolution with bias and elastic channels (the attention stage's positional encoding)."""

    def __init__(self, max_ch: int, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(max_ch, max_ch, kernel_size, 1, kernel_size // 2, groups=max_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ch = x.shape[1]
        return F.conv2d(x, self.conv.weight[:ch], self.conv.bias[:ch], 1, self.conv.padding, 1, ch)

    @torch.no_grad()
    def extract(self, ch: int) -> nn.Conv2d:
        static = nn.Conv2d(ch, ch, self.conv.kernel_size, 1, self.conv.padding, groups=ch)
        static.weight.copy_(self.conv.weight[:ch])
        static.bias.copy_(self.conv.bias[:ch])
        return static


class ElasticLinear(nn.Module):
    def __init__(self, max_in: int, max_out: int):
        super().__init__()
        self.linear = nn.Linear(max_in, max_out)

    def _slice(self, in_f: int, out_f: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.linear.weight[:out_f, :in_f], self.linear.bias[:out_f]

    def forward(self, x: torch.Tensor, out_f: int) -> torch.Tensor:
        return F.linear(x, *self._slice(x.shape[-1], out_f))

    @torch.no_grad()
    def extract(self, in_f: int, out_f: int) -> nn.Linear:
        static = nn.Linear(in_f, out_f)
        weight, bias = self._slice(in_f, out_f)
        static.weight.copy_(weight)
        static.bias.copy_(bias)
        return static


class ElasticQKV(nn.Module):
    """The fused qkv projection with elastic input width and elastic width of each of q, k and v.

    Rows are laid out as (3, max_rows); ``rows`` takes the first ``rows`` of each of q, k and v, so the
    extracted static projection has the (3, rows) layout the static block expects. How rows group into
    heads is the attention block's business: with a fixed head dimension, fewer heads take fewer rows;
    with heads that regroup the width, every head count uses the same rows.
    """

    def __init__(self, max_in: int, max_rows: int):
        super().__init__()
        self.max_rows = max_rows
        self.linear = nn.Linear(max_in, 3 * max_rows)

    def _slice(self, in_f: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        weight = self.linear.weight.view(3, self.max_rows, -1)[:, :rows, :in_f]
        bias = self.linear.bias.view(3, -1)[:, :rows]
        return weight.reshape(3 * rows, in_f), bias.reshape(3 * rows)

    def forward(self, x: torch.Tensor, rows: int) -> torch.Tensor:
        return F.linear(x, *self._slice(x.shape[-1], rows))

    @torch.no_grad()
    def extract(self, in_f: int, rows: int) -> nn.Linear:
        weight, bias = self._slice(in_f, rows)
        static = nn.Linear(in_f, weight.shape[0])
        static.weight.copy_(weight)
        static.bias.copy_(bias)
        return static


class ElasticLayerNorm(nn.Module):
    def __init__(self, max_dim: int, eps: float = 1e-5):
        super().__init__()
        self.norm = nn.LayerNorm(max_dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dim = x.shape[-1]
        return F.layer_norm(x, (dim,), self.norm.weight[:dim], self.norm.bias[:dim], self.norm.eps)

    @torch.no_grad()
    def extract(self, dim: int) -> nn.LayerNorm:
        static = nn.LayerNorm(dim, eps=self.norm.eps)
        static.weight.copy_(self.norm.weight[:dim])
        static.bias.copy_(self.norm.bias[:dim])
        return static


def hidden_width(width: int, ratio: float) -> int:
    """Hidden width of an expanded layer; at least 1, rounded to the nearest integer."""
    return max(1, int(math.floor(width * ratio + 0.5)))
