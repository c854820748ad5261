"""The hybrid conv/attention supernet and the extraction of standalone subnets from it."""

from __future__ import annotations

import torch
from torch import nn

from compress.nn.blocks import MBConv, TransformerBlock, attend
from compress.nn.net import AttnStage, ConvStage, HybridNet, pool_tokens
from compress.nn.layers import Normalize
from compress.space import Arch, SearchSpace, StageArch
from compress.supernet.elastic import (
    ElasticConvBNAct,
    ElasticDWConv,
    ElasticLayerNorm,
    ElasticLinear,
    ElasticQKV,
    hidden_width,
)


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


class ElasticTransformerBlock(nn.Module):
    def __init__(self, max_dim: int, max_heads: int, head_dim: int, max_mlp_hidden: int):
        super().__init__()
        self.head_dim = head_dim
        self.norm1 = ElasticLayerNorm(max_dim)
        self.qkv = ElasticQKV(max_dim, max_heads, head_dim)
        self.proj = ElasticLinear(max_heads * head_dim, max_dim)
        self.norm2 = ElasticLayerNorm(max_dim)
        self.fc1 = ElasticLinear(max_dim, max_mlp_hidden)
        self.fc2 = ElasticLinear(max_mlp_hidden, max_dim)

    def forward(self, x: torch.Tensor, heads: int, mlp_hidden: int) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(self.norm1(x), heads).reshape(batch, tokens, 3, heads, -1).permute(2, 0, 3, 1, 4)
        out = attend(*qkv.unbind(0))
        x = x + self.proj(out.transpose(1, 2).reshape(batch, tokens, -1), dim)
        return x + self.fc2(nn.functional.gelu(self.fc1(self.norm2(x), mlp_hidden)), dim)

    def extract(self, dim: int, heads: int, mlp_hidden: int) -> TransformerBlock:
        static = TransformerBlock(dim, heads, self.head_dim, mlp_hidden)
        static.norm1 = self.norm1.extract(dim)
        static.attn.qkv = self.qkv.extract(dim, heads)
        static.attn.proj = self.proj.extract(heads * self.head_dim, dim)
        static.norm2 = self.norm2.extract(dim)
        static.fc1 = self.fc1.extract(dim, mlp_hidden)
        static.fc2 = self.fc2.extract(mlp_hidden, dim)
        return static


class ElasticStage(nn.Module):
    """One stage: a shared down-sampling convolution, then the blocks of the chosen family."""

    def __init__(self, spec, max_in: int):
        super().__init__()
        max_dim = max(spec.width)
        self.downsample = ElasticConvBNAct(max_in, max_dim, 3, spec.stride)
        if spec.conv is not None:
            max_hidden = hidden_width(max_dim, max(spec.conv.expand_ratio))
            self.conv_blocks = nn.ModuleList(
                ElasticMBConv(max_dim, max_hidden, max(spec.conv.kernel_size)) for _ in range(max(spec.depth))
            )
        if spec.attn is not None:
            a = spec.attn
            self.pos = ElasticDWConv(max_dim)
            self.attn_blocks = nn.ModuleList(
                ElasticTransformerBlock(max_dim, max(a.heads), a.head_dim, hidden_width(max_dim, max(a.mlp_ratio)))
                for _ in range(max(spec.depth))
            )
            self.norm = ElasticLayerNorm(max_dim)

    def forward_tokens(self, x: torch.Tensor, arch: StageArch) -> tuple[torch.Tensor, int, int]:
        x = self.downsample(x, arch.width)
        if arch.block == "conv":
            for i in range(arch.depth):
                x = self.conv_blocks[i](x, hidden_width(arch.width, arch.expand_ratio[i]), arch.kernel_size[i])
            return x.flatten(2).transpose(1, 2), x.shape[-2], x.shape[-1]
        x = x + self.pos(x)
        height, width = x.shape[-2], x.shape[-1]
        tokens = x.flatten(2).transpose(1, 2)
        for i in range(arch.depth):
            tokens = self.attn_blocks[i](tokens, arch.heads[i], hidden_width(arch.width, arch.mlp_ratio[i]))
        return self.norm(tokens), height, width

    def forward(self, x: torch.Tensor, arch: StageArch) -> torch.Tensor:
        tokens, height, width = self.forward_tokens(x, arch)
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, height, width)

    def static_config(self, arch: StageArch) -> dict:
        """The :class:`HybridNet` config of this stage for ``arch``."""
        if arch.block == "conv":
            blocks = [{"type": "conv", "hidden": hidden_width(arch.width, e), "kernel_size": k}
                      for k, e in zip(arch.kernel_size, arch.expand_ratio)]
        else:
            head_dim = self.attn_blocks[0].head_dim
            blocks = [{"type": "attn", "heads": h, "head_dim": head_dim, "mlp_hidden": hidden_width(arch.width, r),
                       "merge_r": 0} for h, r in zip(arch.heads, arch.mlp_ratio)]
        return {"type": arch.block, "out": arch.width, "stride": self.downsample.stride, "blocks": blocks}

    def extract(self, in_ch: int, arch: StageArch, pool: bool) -> nn.Module:
        cfg = self.static_config(arch)
        if arch.block == "conv":
            static = ConvStage(in_ch, arch.width, cfg["stride"], cfg["blocks"], pool=pool)
            static.blocks = nn.ModuleList(
                self.conv_blocks[i].extract(arch.width, b["hidden"], b["kernel_size"]) for i, b in enumerate(cfg["blocks"])
            )
        else:
            static = AttnStage(in_ch, arch.width, cfg["stride"], cfg["blocks"], pool=pool)
            static.pos = self.pos.extract(arch.width)
            static.blocks = nn.ModuleList(
                self.attn_blocks[i].extract(arch.width, b["heads"], b["mlp_hidden"]) for i, b in enumerate(cfg["blocks"])
            )
            static.norm = self.norm.extract(arch.width)
        static.downsample = self.downsample.extract(in_ch, arch.width)
        return static


class HybridSupernet(nn.Module):
    """Weight-sharing supernet over a :class:`SearchSpace`.

    ``set_active(arch)`` selects the subnet that ``forward`` runs; every subnet reads slices of the same
    parameters. ``extract_subnet`` turns the active slices into a standalone :class:`HybridNet`.
    """

    def __init__(self, space: SearchSpace, in_channels: int, num_classes: int, mean: list[float], std: list[float]):
        super().__init__()
        self.space = space
        self.in_channels, self.num_classes = in_channels, num_classes
        self.normalize = Normalize(mean, std)
        self.stem = ElasticConvBNAct(in_channels, max(space.stem.width), space.stem.kernel_size, space.stem.stride)
        self.stages = nn.ModuleList()
        max_in = max(space.stem.width)
        for spec in space.stages:
            self.stages.append(ElasticStage(spec, max_in))
            max_in = max(spec.width)
        self.classifier = ElasticLinear(max_in, num_classes)
        self.active: Arch = space.largest()

    def set_active(self, arch: Arch) -> None:
        self.active = arch

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        arch = self.active
        x = self.stem(self.normalize(x), arch.stem_width)
        for stage, stage_arch in zip(self.stages[:-1], arch.stages[:-1]):
            x = stage(x, stage_arch)
        tokens, _, _ = self.stages[-1].forward_tokens(x, arch.stages[-1])
        return pool_tokens(tokens, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x), self.num_classes)


def subnet_config(supernet: HybridSupernet, arch: Arch) -> dict:
    """The :class:`HybridNet` config of ``arch``: exact layer sizes, no reference to the space."""
    space = supernet.space
    return {
        "version": 1,
        "in_channels": supernet.in_channels,
        "num_classes": supernet.num_classes,
        "mean": supernet.normalize.mean.flatten().tolist(),
        "std": supernet.normalize.std.flatten().tolist(),
        "stem": {"out": arch.stem_width, "kernel_size": space.stem.kernel_size, "stride": space.stem.stride},
        "stages": [stage.static_config(a) for stage, a in zip(supernet.stages, arch.stages)],
    }


@torch.no_grad()
def extract_subnet(supernet: HybridSupernet, arch: Arch) -> HybridNet:
    """A standalone :class:`HybridNet` holding copies of ``arch``'s slices of the supernet's weights.

    The result knows nothing of the supernet: it is built from a plain config and its state_dict
    saves to safetensors. In eval mode its outputs equal the supernet's for ``arch``.
    """
    supernet.space.check(arch)
    static = HybridNet(subnet_config(supernet, arch))
    static.normalize.load_state_dict(supernet.normalize.state_dict())
    static.stem = supernet.stem.extract(supernet.in_channels, arch.stem_width)
    in_ch = arch.stem_width
    for i, (stage, stage_arch) in enumerate(zip(supernet.stages, arch.stages)):
        static.stages[i] = stage.extract(in_ch, stage_arch, pool=i == len(arch.stages) - 1)
        in_ch = stage_arch.width
    static.classifier = supernet.classifier.extract(in_ch, supernet.num_classes)
    return static.train(supernet.training)
