"""A plain single-process training loop for one static model: recovery distillation inside a trial,
stand-alone training in benchmarks. (Multi-process runs use ``compress.train.distill`` under accelerate.)"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from compress.data import Split, augment_batch
from compress.errors import TrialError
from compress.policies.distill import DistillPolicy, distill_loss


def logits_and_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits and pooled features in one pass when the model exposes them (compress models do)."""
    if hasattr(model, "forward_features") and hasattr(model, "classifier"):
        features = model.forward_features(x)
        return model.classifier(features), features
    return model(x), None


def warmup_cosine(total_steps: int, warmup_steps: int):
    """The one learning-rate schedule (a ``LambdaLR`` factor): linear warm-up over ``warmup_steps``, then
    cosine decay to zero at ``total_steps``. Fine-tuning, supernet training and distillation all use it."""
    warmup = max(1, warmup_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def batches(split: Split, batch_size: int, seed: int):
    """An endless stream of shuffled training batches, reshuffled every pass, deterministic from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    n = len(split)
    batch_size = min(batch_size, n)
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            idx = order[start : start + batch_size]
            yield split.images[idx].float().div_(255.0), split.labels[idx]


def finetune(model: nn.Module, split: Split, *, steps: int, lr: float, batch_size: int = 64, seed: int = 0,
             teacher: nn.Module | None = None, policy: DistillPolicy | None = None, weight_decay: float = 0.0,
             crop_padding: int = 0, hflip: bool = False, label_smoothing: float = 0.0,
             warmup_fraction: float = 0.1) -> nn.Module:
    """Train ``model`` for ``steps`` steps (AdamW, linear warm-up then cosine decay).

    With a ``teacher`` and a ``policy`` the loss is :func:`distill_loss`; without, cross-entropy on the labels.
    Raises :class:`TrialError` if the loss stops being finite. Returns the model in eval mode.
    """
    if steps <= 0:
        return model.eval()
    generator = torch.Generator().manual_seed(seed + 1)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps, int(steps * warmup_fraction)))
    if teacher is not None:
        teacher.eval()
    model.train()
    stream = batches(split, batch_size, seed)
    for step in range(steps):
        x, y = next(stream)
        x = augment_batch(x, crop_padding=crop_padding, hflip=hflip, generator=generator)
        logits, features = logits_and_features(model, x)
        if teacher is not None and policy is not None:
            with torch.no_grad():
                t_logits, t_features = logits_and_features(teacher, x)
            loss = distill_loss(policy, y, logits, t_logits, features, t_features)
        else:
            loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
        if not torch.isfinite(loss):
            raise TrialError(f"fine-tuning loss became {loss.item()} at step {step + 1}/{steps}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        schedule.step()
    return model.eval()
