"""HybridNet: the static, deployable network that every extracted, pruned or merged subnet becomes.

Its stages are built by their block family's plugin (:mod:`compress.registry`); each static stage names its
family (``stage.family``), has a ``downsample`` convolution and ``blocks`` that report their own config.

It is built from a plain JSON-able config (exact layer sizes), and :meth:`HybridNet.config` reads that
config back from the module shapes. So a model changed in place (pruned by torch-pruning, merged by the
token-merging policy) is saved as its config plus safetensors weights and rebuilt without pickling and
without the supernet or the pruning library.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from compress.nn.layers import ConvBNAct, Normalize
from compress.registry import family_names, get_family

CONFIG_VERSION = 1


def pool_tokens(tokens: torch.Tensor, size: torch.Tensor | None) -> torch.Tensor:
    """Mean over tokens; weighted by token size once tokens have been merged."""
    if size is None:
        return tokens.mean(dim=1)
    return (tokens * size).sum(dim=1) / size.sum(dim=1)


class HybridNet(nn.Module):
    def __init__(self, config: dict[str, Any]):
        super().__init__()
        check_config(config)
        self.normalize = Normalize(config["mean"], config["std"])
        stem = config["stem"]
        self.stem = ConvBNAct(config["in_channels"], stem["out"], stem["kernel_size"], stem["stride"])
        in_ch = stem["out"]
        self.stages = nn.ModuleList()
        last = len(config["stages"]) - 1
        for i, stage in enumerate(config["stages"]):
            family = get_family(stage["type"])
            self.stages.append(family.static_stage(in_ch, stage["out"], stage["stride"], stage["blocks"], i == last))
            in_ch = stage["out"]
        self.classifier = nn.Linear(in_ch, config["num_classes"])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features before the classifier (used by feature distillation)."""
        # Every stage is called as a module (so exported ONNX nodes carry the stage's name); the last one pools.
        x = self.stem(self.normalize(x))
        for stage in self.stages:
            x = stage(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))

    def config(self) -> dict[str, Any]:
        """The config that rebuilds this model, read from the current module shapes."""
        stages = []
        for stage in self.stages:
            stages.append({
                "type": stage.family,
                "out": stage.downsample.conv.out_channels,
                "stride": stage.downsample.conv.stride[0],
                "blocks": [b.config() for b in stage.blocks],
            })
        return {
            "version": CONFIG_VERSION,
            "in_channels": self.stem.conv.in_channels,
            "num_classes": self.classifier.out_features,
            "mean": self.normalize.mean.flatten().tolist(),
            "std": self.normalize.std.flatten().tolist(),
            "stem": {
                "out": self.stem.conv.out_channels,
                "kernel_size": self.stem.conv.kernel_size[0],
                "stride": self.stem.conv.stride[0],
            },
            "stages": stages,
        }


def check_config(config: dict[str, Any]) -> None:
    """Refuse configs that would build a model that cannot run; messages name the field."""
    try:
        if config.get("version", CONFIG_VERSION) != CONFIG_VERSION:
            raise ValueError(f"version {config.get('version')!r} (this compress reads {CONFIG_VERSION})")
        for key in ("in_channels", "num_classes", "mean", "std", "stem", "stages"):
            if key not in config:
                raise ValueError(f"missing {key!r}")
        if len(config["mean"]) != config["in_channels"] or len(config["std"]) != config["in_channels"]:
            raise ValueError("mean/std length differs from in_channels")
        if not config["stages"]:
            raise ValueError("no stages")
        last = len(config["stages"]) - 1
        for i, stage in enumerate(config["stages"]):
            if stage["type"] not in family_names():
                raise ValueError(f"stages[{i}].type {stage['type']!r} not in {family_names()}")
            if not stage["blocks"]:
                raise ValueError(f"stages[{i}] has no blocks")
            merges = [b.get("merge_r", 0) for b in stage["blocks"]]
            if i != last and any(merges):
                # Merged tokens no longer form a grid, so only the stage that feeds the classifier may merge.
                raise ValueError(f"stages[{i}]: token merging is only possible in the last stage")
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed model config: {exc!r}") from None


def build_model(config: dict[str, Any]) -> HybridNet:
    return HybridNet(copy.deepcopy(config))
