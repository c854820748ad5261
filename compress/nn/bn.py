"""BatchNorm recalibration: the running statistics of a subnet of a weight-sharing supernet are those of
whatever subnets were trained last, so before measuring a subnet we re-estimate them on training data
(OFA / BigNAS practice)."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: list[torch.Tensor]) -> nn.Module:
    """Reset every BatchNorm's running statistics and re-estimate them as an exact average over ``batches``.

    Returns the model in eval mode. Models without BatchNorm come back unchanged (but in eval mode).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or not batches:
        return model.eval()
    saved_momentum = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: every batch counts equally
    model.train()
    for x in batches:
        model(x)
    for bn, momentum in zip(bns, saved_momentum):
        bn.momentum = momentum
    return model.eval()
