"""Distillation policy: how a candidate recovers after pruning / merging, and the losses it uses.

Logit distillation (Hinton et al.) with temperature T and weight w:
    loss = (1 - w) * CE(student, labels) + w * T^2 * KL(softmax(teacher / T) || softmax(student / T))
plus an optional feature loss that works when student and teacher differ in block type and width: the
similarity-preserving loss of Tung & Mori (ICCV 2019) compares the two models' batch similarity matrices of
pooled features (B x B), so no projection between feature spaces is needed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class DistillPolicy:
    steps: int = 0
    temperature: float = 4.0
    weight: float = 0.9
    feature_weight: float = 0.0
    lr: float = 1e-3
    batch_size: int = 64

    @property
    def enabled(self) -> bool:
        return self.steps > 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DistillPolicy":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def logit_kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    t = temperature
    return F.kl_div(F.log_softmax(student / t, dim=-1), F.softmax(teacher / t, dim=-1), reduction="batchmean") * t * t


def similarity_loss(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """Similarity-preserving KD: match the row-normalized batch Gram matrices (any widths, any blocks)."""
    gs = F.normalize(student_features @ student_features.T, dim=1)
    gt = F.normalize(teacher_features @ teacher_features.T, dim=1)
    return (gs - gt).pow(2).sum() / student_features.shape[0] ** 2


def distill_loss(policy: DistillPolicy, labels: torch.Tensor, student_logits: torch.Tensor,
                 teacher_logits: torch.Tensor, student_features: torch.Tensor | None = None,
                 teacher_features: torch.Tensor | None = None) -> torch.Tensor:
    loss = (1 - policy.weight) * F.cross_entropy(student_logits, labels)
    loss = loss + policy.weight * logit_kd_loss(student_logits, teacher_logits, policy.temperature)
    if policy.feature_weight > 0 and student_features is not None and teacher_features is not None:
        loss = loss + policy.feature_weight * similarity_loss(student_features, teacher_features)
    return loss
