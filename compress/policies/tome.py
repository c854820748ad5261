"""Token merging policy: ToMe's bipartite soft matching, ``r`` tokens per attention layer.

Merged tokens no longer form an image grid, so merging applies to the attention layers of the last stage
(the one that feeds the classifier). The merge itself lives in the static blocks
(:mod:`compress.nn.token_merging`), so a merged model is an ordinary :class:`HybridNet` whose config records
``merge_r`` per block: artifacts carry it, ``compress.load`` rebuilds it, and the ONNX export contains it.
"""

from __future__ import annotations

from dataclasses import dataclass

from compress.nn.net import HybridNet
from compress.registry import get_family


@dataclass(frozen=True)
class MergePolicy:
    r: int = 0  # tokens merged away in each attention layer of the last stage

    @property
    def enabled(self) -> bool:
        return self.r > 0

    def to_dict(self) -> dict:
        return {"r": self.r}

    @classmethod
    def from_dict(cls, d: dict) -> "MergePolicy":
        return cls(r=int(d.get("r", 0)))


def merge_skip_reason(model: HybridNet) -> str | None:
    """Why token merging cannot apply to ``model`` (None if it can)."""
    family = get_family(model.stages[-1].family)
    if not family.token_merging:
        return f"the last stage is {family.kind} ({family.name!r}): no attention layer whose tokens could be merged"
    return None


def apply_merge(model: HybridNet, policy: MergePolicy) -> HybridNet:
    """Set ``merge_r`` on every attention block of the last stage, in place. r = 0 leaves the model as it was."""
    if not policy.enabled:
        return model
    reason = merge_skip_reason(model)
    if reason:
        raise ValueError(reason)
    for block in model.stages[-1].blocks:
        if hasattr(block, "merge_r"):  # the merge protocol: the block merges `merge_r` tokens in its forward
            block.merge_r = policy.r
    return model
