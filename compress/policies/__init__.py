"""Compression policies: small frozen configs, each applied by one function.

    PrunePolicy    -> compress.policies.prune.prune
    MergePolicy    -> compress.policies.tome.apply_merge
    DistillPolicy  -> compress.policies.finetune.finetune (recovery distillation)
    QuantPolicy    -> compress.deploy.lower (ONNX Runtime / bitsandbytes), always last
"""

from __future__ import annotations

from dataclasses import dataclass, field

from compress.policies.distill import DistillPolicy
from compress.policies.prune import PrunePolicy
from compress.policies.quantize import QuantPolicy
from compress.policies.tome import MergePolicy


@dataclass(frozen=True)
class Policies:
    """Everything a trial decides besides the architecture."""

    quant: QuantPolicy = field(default_factory=QuantPolicy)
    prune: PrunePolicy = field(default_factory=PrunePolicy)
    merge: MergePolicy = field(default_factory=MergePolicy)
    distill: DistillPolicy = field(default_factory=DistillPolicy)

    def to_dict(self) -> dict:
        return {"quant": self.quant.to_dict(), "prune": self.prune.to_dict(), "merge": self.merge.to_dict(),
                "distill": self.distill.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "Policies":
        return cls(quant=QuantPolicy.from_dict(d.get("quant", {})), prune=PrunePolicy.from_dict(d.get("prune", {})),
                   merge=MergePolicy.from_dict(d.get("merge", {})), distill=DistillPolicy.from_dict(d.get("distill", {})))

    def describe(self) -> str:
        parts = []
        if self.prune.enabled:
            parts.append(f"prune {'/'.join(f'{r:g}' for r in self.prune.ratios)} ({self.prune.importance})")
        if self.merge.enabled:
            parts.append(f"merge r={self.merge.r}")
        if self.distill.enabled:
            d = self.distill
            parts.append(f"distill {d.steps} steps T={d.temperature:g} w={d.weight:g}"
                         + (f" feat={d.feature_weight:g}" if d.feature_weight else ""))
        q = self.quant
        parts.append(f"int8[{q.backend}]: {','.join(q.int8_units)}" if q.enabled else "fp32")
        return " | ".join(parts)


__all__ = ["DistillPolicy", "MergePolicy", "Policies", "PrunePolicy", "QuantPolicy"]
