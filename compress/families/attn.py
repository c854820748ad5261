"""``attn``: pre-norm multi-head self-attention with elastic heads and MLP ratio.

A stage down-samples with a convolution, adds a depthwise-convolution positional encoding (CPVT-style:
works at any resolution and costs little), runs transformer blocks over the flattened grid and ends with a
LayerNorm. Elastic heads take the first heads of each of q, k and v (fixed head dimension); the MLP takes
its first hidden units. Token merging applies to these blocks (``merge_r``).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from compress.nn.blocks import TransformerBlock, attend
from compress.nn.layers import ConvBNAct
from compress.nn.net import pool_tokens
from compress.registry import BlockFamily, Dim, register_family
from compress.space import StageArch, choices
from compress.supernet.elastic import ElasticDWConv, ElasticLayerNorm, ElasticLinear, ElasticQKV, hidden_width


class AttnOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    heads: list[int] = Field(default=[2])
    head_dim: int = Field(default=16, ge=4, le=256)
    mlp_ratio: list[float] = Field(default=[2.0])
    # How a head count maps onto weights. "slice": each head has `head_dim` rows of q, k and v, and fewer
    # heads take the first heads' rows (so a 1-head subnet inherits a quarter of a 4-head layer).
    # "regroup" (HAT): q, k and v are as wide as the stage and the head count only regroups those rows
    # (head_dim = width / heads), so every head count shares all of the weights. `head_dim` is then unused.
    heads_mode: Literal["slice", "regroup"] = "slice"

    @field_validator("heads")
    @classmethod
    def _heads(cls, v: list[int]) -> list[int]:
        for h in v:
            if not 1 <= h <= 64:
                raise ValueError(f"heads must be between 1 and 64, got {h}")
        return choices(v, "heads")

    @field_validator("mlp_ratio")
    @classmethod
    def _mlp(cls, v: list[float]) -> list[float]:
        for r in v:
            if not 0 < r <= 16:
                raise ValueError(f"MLP ratios must be in (0, 16], got {r}")
        return choices(v, "mlp_ratio")


class AttnStage(nn.Module):
    """Down-sampling convolution, positional encoding, transformer blocks over the flattened grid, LayerNorm.
    ``block_type`` builds each block from its config (subclass families swap the block, keep the stage)."""

    family = "attn"

    def __init__(self, in_ch: int, dim: int, stride: int, blocks: list[dict], pool: bool = False):
        super().__init__()
        self.pool = pool
        self.downsample = ConvBNAct(in_ch, dim, 3, stride)
        self.pos = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)
        self.blocks = nn.ModuleList(self.make_block(dim, b) for b in blocks)
        self.norm = nn.LayerNorm(dim)

    @staticmethod
    def make_block(dim: int, b: dict) -> nn.Module:
        return TransformerBlock(dim, b["heads"], b["head_dim"], b["mlp_hidden"], b.get("merge_r", 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        x = x + self.pos(x)
        height, width = x.shape[-2], x.shape[-1]
        tokens = x.flatten(2).transpose(1, 2)
        size = None
        for block in self.blocks:
            tokens, size = block(tokens, size)
        tokens = self.norm(tokens)
        if self.pool:
            return pool_tokens(tokens, size)
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, height, width)


class ElasticTransformerBlock(nn.Module):
    static_block = TransformerBlock
    attend = staticmethod(attend)  # the same function as the static block's, so extraction is exact

    def __init__(self, max_dim: int, max_heads: int, head_dim: int | None, max_mlp_hidden: int):
        super().__init__()
        self.head_dim = head_dim  # None: heads regroup the stage's width
        max_rows = max_dim if head_dim is None else max_heads * head_dim
        self.norm1 = ElasticLayerNorm(max_dim)
        self.qkv = ElasticQKV(max_dim, max_rows)
        self.proj = ElasticLinear(max_rows, max_dim)
        self.norm2 = ElasticLayerNorm(max_dim)
        self.fc1 = ElasticLinear(max_dim, max_mlp_hidden)
        self.fc2 = ElasticLinear(max_mlp_hidden, max_dim)

    def rows(self, width: int, heads: int) -> int:
        """Rows of each of q, k and v for ``heads`` heads in a stage of ``width`` channels."""
        return width if self.head_dim is None else heads * self.head_dim

    def attention(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        """Multi-head attention of the normed tokens ``x``: (B, N, rows), before the projection."""
        batch, tokens, width = x.shape
        qkv = self.qkv(x, self.rows(width, heads)).reshape(batch, tokens, 3, heads, -1).permute(2, 0, 3, 1, 4)
        return self.attend(*qkv.unbind(0)).transpose(1, 2).reshape(batch, tokens, -1)

    def forward(self, x: torch.Tensor, heads: int, mlp_hidden: int) -> torch.Tensor:
        dim = x.shape[-1]
        x = x + self.proj(self.attention(self.norm1(x), heads), dim)
        return x + self.fc2(nn.functional.gelu(self.fc1(self.norm2(x), mlp_hidden)), dim)

    def extract(self, dim: int, heads: int, mlp_hidden: int) -> TransformerBlock:
        rows = self.rows(dim, heads)
        static = self.static_block(dim, heads, rows // heads, mlp_hidden)
        static.norm1 = self.norm1.extract(dim)
        static.attn.qkv = self.qkv.extract(dim, rows)
        static.attn.proj = self.proj.extract(rows, dim)
        static.norm2 = self.norm2.extract(dim)
        static.fc1 = self.fc1.extract(dim, mlp_hidden)
        static.fc2 = self.fc2.extract(mlp_hidden, dim)
        return static


class ElasticAttnBlocks(nn.Module):
    family = "attn"
    elastic_block = ElasticTransformerBlock

    def __init__(self, options: AttnOptions, max_dim: int, max_depth: int):
        super().__init__()
        self.pos = ElasticDWConv(max_dim)
        head_dim = None if options.heads_mode == "regroup" else options.head_dim
        self.blocks = nn.ModuleList(
            self.elastic_block(max_dim, max(options.heads), head_dim, hidden_width(max_dim, max(options.mlp_ratio)))
            for _ in range(max_depth))
        self.norm = ElasticLayerNorm(max_dim)

    def forward(self, x: torch.Tensor, arch: StageArch) -> tuple[torch.Tensor, int, int]:
        x = x + self.pos(x)
        height, width = x.shape[-2], x.shape[-1]
        tokens = x.flatten(2).transpose(1, 2)
        for i in range(arch.depth):
            tokens = self.blocks[i](tokens, arch.heads[i], hidden_width(arch.width, arch.mlp_ratio[i]))
        return self.norm(tokens), height, width

    def static_blocks(self, arch: StageArch) -> list[dict]:
        return [{"type": self.family, "heads": h, "head_dim": self.blocks[0].rows(arch.width, h) // h,
                 "mlp_hidden": hidden_width(arch.width, r), "merge_r": 0} for h, r in zip(arch.heads, arch.mlp_ratio)]

    def extract_into(self, static: AttnStage, arch: StageArch) -> None:
        static.pos = self.pos.extract(arch.width)
        static.blocks = nn.ModuleList(
            self.blocks[i].extract(arch.width, b["heads"], b["mlp_hidden"])
            for i, b in enumerate(self.static_blocks(arch)))
        static.norm = self.norm.extract(arch.width)


@register_family
class AttnFamily(BlockFamily):
    name = "attn"
    kind = "attention"
    options = AttnOptions
    dims = (Dim("heads", "h"), Dim("mlp_ratio", "m"))
    token_merging = True
    elastic_type = ElasticAttnBlocks
    static_type = AttnStage

    def check_stage(self, options: AttnOptions, widths: list[int]) -> None:
        if options.heads_mode == "regroup":
            bad = [(w, h) for w in widths for h in options.heads if w % h]
            if bad:
                raise ValueError(f"heads_mode regroup needs every width divisible by every head count; "
                                 f"width {bad[0][0]} is not divisible by {bad[0][1]} heads")

    def elastic_blocks(self, options: AttnOptions, max_dim: int, max_depth: int) -> ElasticAttnBlocks:
        return self.elastic_type(options, max_dim, max_depth)

    def static_stage(self, in_ch: int, dim: int, stride: int, blocks: list[dict], pool: bool) -> AttnStage:
        return self.static_type(in_ch, dim, stride, blocks, pool=pool)
