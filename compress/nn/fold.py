"""Deployment transform: fold BatchNorm into the preceding convolution.

Done before ONNX export and quantization so that the exported convolution weights are exactly the torch
weights (the exporter would otherwise fold them itself under new names), which is what lets INT8 weights
from the quantized ONNX be mapped back into ``model.safetensors``.
"""

from __future__ import annotations

import torch
from torch import nn

from compress.nn.layers import ConvBNAct


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every :class:`ConvBNAct`'s BatchNorm into its conv, in place; returns ``model``.

    Uses the running statistics, so call it on a model whose statistics are final (eval mode).
    """
    for module in model.modules():
        if isinstance(module, ConvBNAct) and isinstance(module.bn, nn.BatchNorm2d):
            conv, bn = module.conv, module.bn
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                               groups=conv.groups, bias=True)
            folded.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            folded.bias.copy_(bn.bias + (bias - bn.running_mean) * scale)
            module.conv, module.bn = folded, nn.Identity()
    return model


def is_folded(model: nn.Module) -> bool:
    return not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
