"""Distillation policy: how a candidate recovers after pruning / merging, and the losses it uses.

Logit distillation (Hinton et al.) with temperature T and weight w:
    loss = (1 - w) * CE(student, labels) + w * T^2 * KL(softmax(teacher / T) || softmax(student / T))
plus an optional feature loss that works when student and teacher differ in block type and width: the
similarity-preserving loss of Tung & Mori (ICCV 2019) compares the two models' batch similarity matrices of
pooled features (B x B), so no projection between feature spaces is needed.
"""

from __future__ import annotations

import math
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


def alpha_divergence_loss(student: torch.Tensor, teacher: torch.Tensor, alphas: tuple[float, float] = (-1.0, 1.0),
                          clip: float = 5.0) -> torch.Tensor:
    """AlphaNet's adaptive alpha-divergence for in-place distillation: the larger of D_a(p || q) for a negative
    and a positive ``a`` (p the teacher's distribution, q the student's), per sample, averaged.

    KL (a = 1) punishes a student that under-estimates classes the teacher finds likely, but barely one that
    spreads mass over classes the teacher rules out; a negative ``a`` punishes the latter. Taking the larger
    of the two penalizes both kinds of mismatch. The density ratio
    (p / q)^a is clipped at ``clip`` (AlphaNet's beta), since for a < 0 it grows without bound where q -> 0.
    """
    log_q, log_p = F.log_softmax(student, dim=-1), F.log_softmax(teacher, dim=-1)
    q = log_q.exp()
    divergences = []
    for a in alphas:
        if a == 1.0:
            d = (log_p.exp() * (log_p - log_q)).sum(-1)
        elif a == 0.0:
            d = (q * (log_q - log_p)).sum(-1)
        else:
            ratio = (a * (log_p - log_q)).clamp(max=math.log(clip)).exp()  # (p / q)^a, clipped
            d = ((q * ratio).sum(-1) - 1) / (a * (a - 1))
        divergences.append(d)
    return torch.stack(divergences).max(dim=0).values.mean()


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
