"""INT8 weight storage for PyTorch: layers whose weights are kept as int8 with per-channel scales.

These are what ``compress.load`` builds for layers an artifact stores in INT8. They dequantize the weight
on the fly (``(q - zero_point) * scale``) and run the float op, so the PyTorch model matches the artifact's
INT8 weights exactly; the artifact's ``model.onnx`` is what runs integer kernels (activations quantized too).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _Int8Weight(nn.Module):
    def _init_buffers(self, q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None):
        if q.dtype not in (torch.int8, torch.uint8):
            raise ValueError(f"int8 weights expected, got {q.dtype}")
        self.register_buffer("weight_int8", q)
        self.register_buffer("weight_scale", scale.float())
        self.register_buffer("weight_zero_point", (zero_point if zero_point is not None
                                                   else torch.zeros_like(scale)).to(torch.int32))

    def dequantized_weight(self) -> torch.Tensor:
        shape = (-1,) + (1,) * (self.weight_int8.dim() - 1)
        zp = self.weight_zero_point.view(shape).float()
        return (self.weight_int8.float() - zp) * self.weight_scale.view(shape)


class Int8Linear(_Int8Weight):
    def __init__(self, q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, bias: torch.Tensor | None):
        super().__init__()
        self._init_buffers(q, scale, zero_point)
        self.bias = nn.Parameter(bias.float()) if bias is not None else None
        self.in_features, self.out_features = q.shape[1], q.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized_weight(), self.bias)


class Int8Conv2d(_Int8Weight):
    def __init__(self, q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None,
                 bias: torch.Tensor | None, stride, padding, groups: int):
        super().__init__()
        self._init_buffers(q, scale, zero_point)
        self.bias = nn.Parameter(bias.float()) if bias is not None else None
        self.stride, self.padding, self.groups = tuple(stride), tuple(padding), groups
        self.in_channels, self.out_channels = q.shape[1] * groups, q.shape[0]
        self.kernel_size = tuple(q.shape[2:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.dequantized_weight(), self.bias, self.stride, self.padding, 1, self.groups)


def to_int8_module(module: nn.Module, q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None) -> nn.Module:
    """The INT8-weight counterpart of a float Linear / Conv2d (its bias is kept in float)."""
    bias = module.bias.detach() if module.bias is not None else None
    if isinstance(module, nn.Linear):
        return Int8Linear(q, scale, zero_point, bias)
    if isinstance(module, nn.Conv2d):
        return Int8Conv2d(q, scale, zero_point, bias, module.stride, module.padding, module.groups)
    raise TypeError(f"cannot store {type(module).__name__} in INT8")
