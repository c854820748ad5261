"""Multiply-accumulate count of one forward pass (reported beside measured latency, never instead of it)."""

from __future__ import annotations

import torch
from torch import nn

from compress.nn.blocks import Attention


@torch.no_grad()
def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """MACs per sample: convolutions, linear layers and attention's two matrix products."""
    total = 0

    def conv_hook(module, inputs, output):
        nonlocal total
        per_output = (module.in_channels // module.groups) * module.kernel_size[0] * module.kernel_size[1]
        total += output.numel() // output.shape[0] * per_output

    def linear_hook(module, inputs, output):
        nonlocal total
        total += output.numel() // output.shape[0] * module.in_features

    def attn_hook(module, inputs, output):
        nonlocal total
        x = inputs[0]
        tokens = x.shape[1]
        inner = module.num_heads * module.head_dim
        total += 2 * tokens * tokens * inner  # q @ k^T and attn @ v

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d) or type(m).__name__ == "Int8Conv2d":
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear) or type(m).__name__ == "Int8Linear":
            handles.append(m.register_forward_hook(linear_hook))
        elif isinstance(m, Attention):
            handles.append(m.register_forward_hook(attn_hook))
    try:
        was_training = model.training
        model.eval()(example[:1])
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return int(total)
