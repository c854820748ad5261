"""The hybrid supernet and the extraction of standalone subnets from it.

The supernet knows stems, stages and a classifier; what happens inside a stage belongs to the block family
the stage runs, found through :mod:`compress.registry`.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from compress.nn.layers import Normalize
from compress.nn.net import HybridNet, pool_tokens
from compress.registry import get_family
from compress.space import Arch, SearchSpace, StageArch, StageSpec
from compress.supernet.elastic import ElasticConvBNAct, ElasticLinear


class ElasticStage(nn.Module):
    """One stage: a down-sampling convolution, then the elastic blocks of each family the stage may use
    (``families[name]``, built by that family's plugin), of which an architecture runs one.

    The families never share block weights. With ``few_shot`` (few-shot NAS, split by block family) they do
    not share the down-sampling convolution either, so no weight of a stage is trained by two families. With
    ``inputs`` (the first stage under ``split_stem``) each input width has its own down-sampling convolution
    too, keyed ``<family or shared>@<width>``.
    """

    def __init__(self, spec: StageSpec, max_in: int, few_shot: bool = False, inputs: Sequence[int] = ()):
        super().__init__()
        max_dim = max(spec.width)
        self.by_family, self.inputs = few_shot and len(spec.blocks) > 1, tuple(inputs)
        self.downsamples = nn.ModuleDict({
            self._key(name, width): ElasticConvBNAct(width, max_dim, 3, spec.stride)
            for name in (spec.blocks if self.by_family else ["shared"]) for width in (self.inputs or (max_in,))})
        self.families = nn.ModuleDict({
            name: get_family(name).elastic_blocks(spec.options(name), max_dim, max(spec.depth))
            for name in spec.blocks})

    def _key(self, block: str, in_ch: int) -> str:
        name = block if self.by_family else "shared"
        return f"{name}@{in_ch}" if self.inputs else name

    def downsample_of(self, block: str, in_ch: int) -> ElasticConvBNAct:
        return self.downsamples[self._key(block, in_ch)]

    @property
    def stride(self) -> int:
        return next(iter(self.downsamples.values())).stride

    def forward_tokens(self, x: torch.Tensor, arch: StageArch) -> tuple[torch.Tensor, int, int]:
        return self.families[arch.block](self.downsample_of(arch.block, x.shape[1])(x, arch.width), arch)

    def forward(self, x: torch.Tensor, arch: StageArch) -> torch.Tensor:
        tokens, height, width = self.forward_tokens(x, arch)
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, height, width)

    def static_config(self, arch: StageArch) -> dict:
        """The :class:`HybridNet` config of this stage for ``arch``."""
        return {"type": arch.block, "out": arch.width, "stride": self.stride,
                "blocks": self.families[arch.block].static_blocks(arch)}

    def extract(self, in_ch: int, arch: StageArch, pool: bool) -> nn.Module:
        cfg = self.static_config(arch)
        static = get_family(arch.block).static_stage(in_ch, arch.width, cfg["stride"], cfg["blocks"], pool)
        static.downsample = self.downsample_of(arch.block, in_ch).extract(in_ch, arch.width)
        self.families[arch.block].extract_into(static, arch)
        return static


class HybridSupernet(nn.Module):
    """Weight-sharing supernet over a :class:`SearchSpace`.

    ``set_active(arch)`` selects the subnet that ``forward`` runs; every subnet reads slices of the same
    parameters. ``extract_subnet`` turns the active slices into a standalone :class:`HybridNet`.

    ``split_stem`` (few-shot NAS, split on the stem width): each stem width has its own stem convolution
    (``stems[str(width)]``) and its own down-sampling convolution in the first stage, so a narrow stem is not
    the first channels of the wide one; everything after that is shared.
    """

    def __init__(self, space: SearchSpace, in_channels: int, num_classes: int, mean: list[float], std: list[float],
                 few_shot: bool = False, split_stem: bool = False):
        super().__init__()
        stem = space.stem
        self.space, self.few_shot, self.split_stem = space, few_shot, split_stem and len(stem.width) > 1
        self.in_channels, self.num_classes = in_channels, num_classes
        self.normalize = Normalize(mean, std)
        if self.split_stem:
            self.stems = nn.ModuleDict({str(w): ElasticConvBNAct(in_channels, w, stem.kernel_size, stem.stride)
                                        for w in stem.width})
        else:  # one stem whose narrower widths are slices (its parameter names are those of older checkpoints)
            self.stem = ElasticConvBNAct(in_channels, max(stem.width), stem.kernel_size, stem.stride)
        self.stages = nn.ModuleList()
        max_in = max(stem.width)
        for i, spec in enumerate(space.stages):
            self.stages.append(ElasticStage(spec, max_in, few_shot, stem.width if self.split_stem and i == 0 else ()))
            max_in = max(spec.width)
        self.classifier = ElasticLinear(max_in, num_classes)
        self.active: Arch = space.largest()

    def set_active(self, arch: Arch) -> None:
        self.active = arch

    def stem_of(self, width: int) -> ElasticConvBNAct:
        return self.stems[str(width)] if self.split_stem else self.stem

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        arch = self.active
        x = self.stem_of(arch.stem_width)(self.normalize(x), arch.stem_width)
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
    static.stem = supernet.stem_of(arch.stem_width).extract(supernet.in_channels, arch.stem_width)
    in_ch = arch.stem_width
    for i, (stage, stage_arch) in enumerate(zip(supernet.stages, arch.stages)):
        static.stages[i] = stage.extract(in_ch, stage_arch, pool=i == len(arch.stages) - 1)
        in_ch = stage_arch.width
    static.classifier = supernet.classifier.extract(in_ch, supernet.num_classes)
    return static.train(supernet.training)
