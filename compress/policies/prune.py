"""Structured pruning with torch-pruning's dependency graph.

Per stage, a ratio of the coupled channel groups is removed: the stage's residual width (with everything
that must shrink with it: down-sampling conv, norms, the positional conv, the next stage's input), the
inverted-residual hidden channels, the MLP hidden width, and whole attention heads (the block's head count
is then updated; head_dim is kept). The classifier's outputs and the stem's input are never pruned. The
result is a plain, physically smaller model: its config is read back from its shapes, so it is saved and
reloaded without torch-pruning.

:func:`prune_` is the same policy applied to any traceable ``nn.Module`` (torchao-style: config in, model
changed in place): one global ratio over every prunable layer that ``filter_fn(module, fqn)`` admits, the
output layer always kept whole so the model still predicts the same classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from compress.nn.blocks import Attention
from compress.nn.net import HybridNet

IMPORTANCE = ("magnitude", "taylor")


@dataclass(frozen=True)
class PrunePolicy:
    VERSION: ClassVar[int] = 1  # bump when a field changes meaning; from_dict keeps reading older records

    ratios: tuple[float, ...] = field(default_factory=tuple)  # one per stage of a HybridNet; 0 keeps it whole
    importance: str = "magnitude"
    ratio: float = 0.0  # one global ratio, for prune_ on a model that has no stages

    def __post_init__(self):
        if not 0.0 <= self.ratio < 1.0 or any(not 0.0 <= r < 1.0 for r in self.ratios):
            raise ValueError(f"pruning ratios must lie in [0, 1), got ratio={self.ratio}, ratios={self.ratios}")
        if self.importance not in IMPORTANCE:
            raise ValueError(f"unknown importance {self.importance!r}; expected one of {IMPORTANCE}")

    @property
    def enabled(self) -> bool:
        return self.ratio > 0 or any(r > 0 for r in self.ratios)

    def to_dict(self) -> dict:
        d = {"ratios": list(self.ratios), "importance": self.importance}
        if self.ratio:  # only when used, so the records of per-stage policies stay as they were
            d["ratio"] = self.ratio
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PrunePolicy":
        return cls(ratios=tuple(float(r) for r in d.get("ratios", ())), importance=d.get("importance", "magnitude"),
                   ratio=float(d.get("ratio", 0.0)))


def _importance(name: str):
    import torch_pruning as tp

    if name == "magnitude":
        return tp.importance.GroupMagnitudeImportance(p=2)
    return tp.importance.GroupTaylorImportance()


def prune(model: HybridNet, policy: PrunePolicy, images: torch.Tensor, labels: torch.Tensor) -> HybridNet:
    """Prune ``model`` in place following ``policy``; ``images``/``labels`` are a calibration batch
    (shapes for tracing; gradients for the Taylor criterion)."""
    if not policy.enabled:
        return model
    import torch_pruning as tp

    if len(policy.ratios) != len(model.stages):
        raise ValueError(f"{len(policy.ratios)} pruning ratios for {len(model.stages)} stages")
    importance = _importance(policy.importance)

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


def output_layer(model: nn.Module, example_inputs: torch.Tensor) -> nn.Module | None:
    """The last Linear or Conv2d a forward pass runs: the layer whose outputs are the model's predictions."""
    called: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda mod, _i, _o: called.append(mod)) for m in model.modules()
             if isinstance(m, (nn.Linear, nn.Conv2d))]
    try:
        with torch.no_grad():
            model(example_inputs)
    finally:
        for h in hooks:
            h.remove()
    return called[-1] if called else None


def prune_(model: nn.Module, policy: PrunePolicy, example_inputs: torch.Tensor, *,
           filter_fn: Callable[[nn.Module, str], bool] | None = None,
           labels: torch.Tensor | None = None) -> nn.Module:
    """Prune any traceable ``model`` in place with torch-pruning's dependency graph; returns it.

    A compress :class:`HybridNet` with per-stage ``policy.ratios`` goes through :func:`prune` (heads, stages).
    Otherwise ``policy.ratio`` of the coupled channel groups is removed from the layers that
    ``filter_fn(module, fqn)`` admits (all Linear/Conv layers when it is None); the output layer (the last
    Linear/Conv a forward runs) is never shrunk, so the output shape is unchanged. ``example_inputs`` trace the
    graph; the Taylor criterion also needs ``labels`` (gradients of the cross-entropy).
    """
    if isinstance(model, HybridNet) and policy.ratios:
        if labels is None:
            labels = torch.zeros(example_inputs.shape[0], dtype=torch.long)
        return prune(model, policy, example_inputs, labels)
    if policy.ratios:
        raise ValueError("per-stage pruning ratios apply to a compress HybridNet; give this model PrunePolicy(ratio=...)")
    if policy.ratio <= 0:
        return model
    if policy.importance == "taylor" and labels is None:
        raise ValueError("the 'taylor' importance needs labels for the example inputs (prune_(..., labels=y))")
    import torch_pruning as tp

    head = output_layer(model, example_inputs)
    ignored = [head] if head is not None else []
    if filter_fn is not None:
        ignored += [m for fqn, m in model.named_modules()
                    if isinstance(m, (nn.Linear, nn.Conv2d)) and m is not head and not filter_fn(m, fqn)]
    with torch.no_grad():
        before = model.eval()(example_inputs).shape
    was_training = model.training
    with torch.enable_grad():
        pruner = tp.pruner.BasePruner(model, example_inputs=example_inputs, importance=_importance(policy.importance),
                                      pruning_ratio=policy.ratio, ignored_layers=ignored)
        if policy.importance == "taylor":
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(example_inputs), labels).backward()
        pruner.step()
        model.zero_grad(set_to_none=True)
    with torch.no_grad():
        after = model.eval()(example_inputs).shape
    if after != before:  # a coupling torch-pruning could not see; the model is no longer the same function
        raise ValueError(f"pruning changed the model's output shape {list(before)} -> {list(after)}")
    return model.train(was_training)


def prunable_fraction(before: nn.Module, after: nn.Module) -> float:
    """Parameters kept, as a fraction of the unpruned model's."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return count(after) / count(before)
