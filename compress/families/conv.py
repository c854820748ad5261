"""``conv``: the inverted-residual convolution block (MobileNetV2) with elastic kernel size and expansion.

Elastic as in once-for-all: a smaller expansion takes the first hidden channels, a smaller kernel the centre
of the largest kernel.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from compress.nn.blocks import MBConv
from compress.nn.layers import ConvBNAct
from compress.registry import BlockFamily, Dim, register_family
from compress.space import StageArch, choices
from compress.supernet.elastic import ElasticConvBNAct, hidden_width


class ConvOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kernel_size: list[int] = Field(default=[3])
    expand_ratio: list[float] = Field(default=[4.0])

    @field_validator("kernel_size")
    @classmethod
    def _odd_kernels(cls, v: list[int]) -> list[int]:
        for k in v:
            if k < 1 or k % 2 == 0 or k > 11:
                raise ValueError(f"kernel sizes must be odd and between 1 and 11, got {k}")
        return choices(v, "kernel_size")

    @field_validator("expand_ratio")
    @classmethod
    def _ratios(cls, v: list[float]) -> list[float]:
        for r in v:
            if not 0 < r <= 16:
                raise ValueError(f"expand ratios must be in (0, 16], got {r}")
        return choices(v, "expand_ratio")


class ConvStage(nn.Module):
    """Down-sampling convolution then inverted-residual blocks. With ``pool`` (the last stage) it returns
    pooled features instead of a grid."""

    family = "conv"

    def __init__(self, in_ch: int, dim: int, stride: int, blocks: list[dict], pool: bool = False):
        super().__init__()
        self.pool = pool
        self.downsample = ConvBNAct(in_ch, dim, 3, stride)
        self.blocks = nn.ModuleList(MBConv(dim, b["hidden"], b["kernel_size"]) for b in blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        for block in self.blocks:
            x = block(x)
        return x.mean(dim=(2, 3)) if self.pool else x


class ElasticMBConv(nn.Module):
    def __init__(self, max_dim: int, max_hidden: int, max_kernel: int):
        super().__init__()
        self.pw1 = ElasticConvBNAct(max_dim, max_hidden, 1)
        self.dw = ElasticConvBNAct(max_hidden, max_hidden, max_kernel, depthwise=True)
        self.pw2 = ElasticConvBNAct(max_hidden, max_dim, 1, act=False)

    def forward(self, x: torch.Tensor, hidden: int, kernel_size: int) -> torch.Tensor:
        return x + self.pw2(self.dw(self.pw1(x, hidden), kernel_size=kernel_size), x.shape[1])

    def extract(self, dim: int, hidden: int, kernel_size: int) -> MBConv:
        static = MBConv(dim, hidden, kernel_size)
        static.pw1 = self.pw1.extract(dim, hidden)
        static.dw = self.dw.extract(hidden, hidden, kernel_size)
        static.pw2 = self.pw2.extract(hidden, dim)
        return static


class ElasticConvBlocks(nn.Module):
    def __init__(self, options: ConvOptions, max_dim: int, max_depth: int):
        super().__init__()
        max_hidden = hidden_width(max_dim, max(options.expand_ratio))
        self.blocks = nn.ModuleList(
            ElasticMBConv(max_dim, max_hidden, max(options.kernel_size)) for _ in range(max_depth))

    def forward(self, x: torch.Tensor, arch: StageArch) -> tuple[torch.Tensor, int, int]:
        for i in range(arch.depth):
            x = self.blocks[i](x, hidden_width(arch.width, arch.expand_ratio[i]), arch.kernel_size[i])
        return x.flatten(2).transpose(1, 2), x.shape[-2], x.shape[-1]

    def static_blocks(self, arch: StageArch) -> list[dict]:
        return [{"type": "conv", "hidden": hidden_width(arch.width, e), "kernel_size": k}
                for k, e in zip(arch.kernel_size, arch.expand_ratio)]

    def extract_into(self, static: ConvStage, arch: StageArch) -> None:
        static.blocks = nn.ModuleList(
            self.blocks[i].extract(arch.width, b["hidden"], b["kernel_size"])
            for i, b in enumerate(self.static_blocks(arch)))


@register_family
class ConvFamily(BlockFamily):
    name = "conv"
    kind = "convolutional"
    options = ConvOptions
    dims = (Dim("kernel_size", "k"), Dim("expand_ratio", "e"))

    def elastic_blocks(self, options: ConvOptions, max_dim: int, max_depth: int) -> ElasticConvBlocks:
        return ElasticConvBlocks(options, max_dim, max_depth)

    def static_stage(self, in_ch: int, dim: int, stride: int, blocks: list[dict], pool: bool) -> ConvStage:
        return ConvStage(in_ch, dim, stride, blocks, pool=pool)
