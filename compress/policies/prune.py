"""Structured pruning with torch-pruning's dependency graph.

Per stage, a ratio of the coupled channel groups is removed: the stage's residual width (with everything
that must shrink with it: down-sampling conv, norms, the positional conv, the next stage's input), the
inverted-residual hidden channels, the MLP hidden width, and whole attention heads (the block's head count
is then updated; head_dim is kept). The classifier's outputs and the stem's input are never pruned. The
result is a plain, physically smaller model: its config is read back from its shapes, so it is saved and
reloaded without torch-pruning.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from compress.nn.blocks import Attention
from compress.nn.net import HybridNet

IMPORTANCE = ("magnitude", "taylor")


@dataclass(frozen=True)
class PrunePolicy:
    ratios: tuple[float, ...] = field(default_factory=tuple)  # one per stage; 0 keeps the stage whole
    importance: str = "magnitude"

    @property
    def enabled(self) -> bool:
        return any(r > 0 for r in self.ratios)

    def to_dict(self) -> dict:
        return {"ratios": list(self.ratios), "importance": self.importance}

    @classmethod
    def from_dict(cls, d: dict) -> "PrunePolicy":
        return cls(ratios=tuple(float(r) for r in d.get("ratios", ())), importance=d.get("importance", "magnitude"))


def prune(model: HybridNet, policy: PrunePolicy, images: torch.Tensor, labels: torch.Tensor) -> HybridNet:
    """Prune ``model`` in place following ``policy``; ``images``/``labels`` are a calibration batch
    (shapes for tracing; gradients for the Taylor criterion)."""
    if not policy.enabled:
        return model
    import torch_pruning as tp

    if len(policy.ratios) != len(model.stages):
        raise ValueError(f"{len(policy.ratios)} pruning ratios for {len(model.stages)} stages")
    if policy.importance == "magnitude":
        importance = tp.importance.GroupMagnitudeImportance(p=2)
    elif policy.importance == "taylor":
        importance = tp.importance.GroupTaylorImportance()
    else:
        raise ValueError(f"unknown importance {policy.importance!r}; expected one of {IMPORTANCE}")

    ratios = {stage: r for stage, r in zip(model.stages, policy.ratios) if r > 0}
    # Any family's attention (compress.nn.blocks.Attention and subclasses) has its heads pruned whole.
    attentions = [m for m in model.modules() if isinstance(m, Attention)]
    heads = {a.qkv: a.num_heads for a in attentions}
    head_ratios = {}
    for stage, r in ratios.items():
        for a in stage.modules():
            if isinstance(a, Attention) and a.heads_prunable and a.num_heads > 1:
                head_ratios[a.qkv] = r
    was_training = model.training
    model.eval()
    with torch.enable_grad():  # the dependency graph is traced through autograd
        pruner = tp.pruner.BasePruner(
            model,
            example_inputs=images[:2],
            importance=importance,
            pruning_ratio=0.0,  # only the stages named in pruning_ratio_dict shrink
            pruning_ratio_dict=ratios,
            ignored_layers=[model.classifier, *(m for a in attentions for m in a.untraced_layers())],
            num_heads=heads,  # always declared: qkv rows are (3, heads, head_dim) and must stay so
            prune_num_heads=bool(head_ratios),
            prune_head_dims=False,
            head_pruning_ratio_dict=head_ratios or None,
        )
        if policy.importance == "taylor":
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(images), labels).backward()
        pruner.step()
        model.zero_grad(set_to_none=True)
    for a in attentions:
        a.num_heads = pruner.num_heads.get(a.qkv, a.num_heads)
    return model.train(was_training)


def prunable_fraction(before: nn.Module, after: nn.Module) -> float:
    """Parameters kept, as a fraction of the unpruned model's."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return count(after) / count(before)
