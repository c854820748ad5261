"""Top-1 accuracy on a held-out split."""

from __future__ import annotations

from typing import Callable

import torch

from compress.data import Split

Predict = Callable[[torch.Tensor], torch.Tensor]


@torch.inference_mode()
def predict_logits(predict: Predict, split: Split, batch_size: int = 256) -> torch.Tensor:
    outs = []
    for start in range(0, len(split), batch_size):
        x = split.images[start : start + batch_size].float().div_(255.0)
        outs.append(predict(x).float())
    return torch.cat(outs)


def accuracy(predict: Predict, split: Split, batch_size: int = 256) -> float:
    """Fraction of ``split`` that ``predict`` (a model in eval mode, or any runtime) classifies correctly."""
    if isinstance(predict, torch.nn.Module) and predict.training:
        raise ValueError("accuracy() needs the model in eval mode")
    logits = predict_logits(predict, split, batch_size)
    if not torch.isfinite(logits).all():
        from compress.errors import TrialError

        raise TrialError("model produced non-finite outputs (NaN or inf)")
    return (logits.argmax(dim=-1) == split.labels).float().mean().item()
