"""A subnet ready to measure: extracted from the supernet, BatchNorm statistics recalibrated."""

from __future__ import annotations

import torch

from compress.nn.net import HybridNet
from compress.space import Arch
from compress.supernet.hybrid import HybridSupernet, extract_subnet
from compress.nn.bn import recalibrate_bn


def calibrated_subnet(supernet: HybridSupernet, arch: Arch, bn_batches: list[torch.Tensor]) -> HybridNet:
    """``extract_subnet`` followed by BatchNorm recalibration on ``bn_batches``; returned in eval mode."""
    return recalibrate_bn(extract_subnet(supernet, arch), bn_batches)
