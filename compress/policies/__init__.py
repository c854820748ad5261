"""Compression policies: small frozen configs, each applied by one function."""

from __future__ import annotations

from dataclasses import dataclass, field

from compress.policies.quantize import QuantPolicy


@dataclass(frozen=True)
class Policies:
    """Everything a trial decides besides the architecture."""

    quant: QuantPolicy = field(default_factory=QuantPolicy)

    def to_dict(self) -> dict:
        return {"quant": self.quant.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "Policies":
        return cls(quant=QuantPolicy.from_dict(d.get("quant", {})))

    def describe(self) -> str:
        q = self.quant
        return f"int8[{q.backend}]: {','.join(q.int8_units)}" if q.enabled else "fp32"


__all__ = ["Policies", "QuantPolicy"]
