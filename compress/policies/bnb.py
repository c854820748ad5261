"""bitsandbytes layers for the PyTorch runtime: LLM.int8 (row-wise int8) and NF4 (4-bit, blockwise).

Their state dicts are plain tensors (int8 / packed uint8 weights with their scales), so they go to
safetensors; reloading follows bitsandbytes' own rules: an 8-bit layer must be on its device before
``load_state_dict``, a 4-bit one is rebuilt with ``Params4bit.from_prequantized``.
"""

from __future__ import annotations

import torch
from torch import nn


def _bnb():
    try:
        import bitsandbytes as bnb  # imported lazily: it probes for GPU kernels at import time
    except ImportError:
        from compress.errors import CompressError

        raise CompressError("the bnb-int8 / bnb-nf4 backends need bitsandbytes: pip install 'compress[bnb]'") from None
    return bnb


def bnb_supports(linear: nn.Linear, backend: str, device: str) -> bool:
    """Whether bitsandbytes can hold this layer. Its CPU NF4 kernel packs output rows in blocks of 32 and
    quantizes inputs in blocks of 64 (the default blocksize); other layers stay fp32."""
    if backend == "bnb-nf4" and device == "cpu":
        return linear.out_features % 32 == 0 and linear.in_features % 64 == 0
    return True


def to_bnb_linear(linear: nn.Linear, backend: str, device: str = "cpu") -> nn.Module:
    bnb = _bnb()
    weight = linear.weight.detach().clone()
    bias = linear.bias.detach().clone() if linear.bias is not None else None
    if backend == "bnb-int8":
        layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=bias is not None,
                                    has_fp16_weights=False, threshold=0.0)
        layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    elif backend == "bnb-nf4":
        layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=bias is not None,
                                  quant_type="nf4", compute_dtype=torch.float32)
        layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4")
    else:
        raise ValueError(f"unknown bitsandbytes backend {backend!r}")
    if bias is not None:
        layer.bias = nn.Parameter(bias, requires_grad=False)
    return layer.to(device)  # moving to the device is what quantizes the weight


def load_bnb_linear(in_features: int, out_features: int, has_bias: bool, backend: str,
                    tensors: dict[str, torch.Tensor], device: str = "cpu") -> nn.Module:
    """Rebuild a quantized layer from its saved state (keys relative to the layer: ``weight``, ``SCB``...)."""
    bnb = _bnb()
    if backend == "bnb-int8":
        placeholder = nn.Linear(in_features, out_features, bias=has_bias)
        layer = to_bnb_linear(placeholder, backend, device)
        layer.load_state_dict(tensors)
        return layer
    if backend == "bnb-nf4":
        layer = bnb.nn.Linear4bit(in_features, out_features, bias=has_bias, quant_type="nf4",
                                  compute_dtype=torch.float32)
        stats = {k[len("weight."):]: v for k, v in tensors.items() if k.startswith("weight.")}
        layer.weight = bnb.nn.Params4bit.from_prequantized(data=tensors["weight"], quantized_stats=stats,
                                                           requires_grad=False, device=device)
        if has_bias:
            layer.bias = nn.Parameter(tensors["bias"].to(device), requires_grad=False)
        return layer
    raise ValueError(f"unknown bitsandbytes backend {backend!r}")


def dequantized_weight(layer: nn.Module) -> torch.Tensor:
    """The float weight a bitsandbytes layer computes with (for training a quantized model again)."""
    bnb = _bnb()
    weight = layer.weight
    if isinstance(weight, bnb.nn.Int8Params):
        # The row scales sit on the weight until the first forward, on the layer's state after it.
        scb = weight.SCB if weight.SCB is not None else layer.state.SCB
        return weight.data.float() * scb.float().unsqueeze(1) / 127.0
    if isinstance(weight, bnb.nn.Params4bit):
        # The CPU kernel repacks NF4 weights in place on first use, so read the weight the layer computes
        # with through its own forward: rows of the identity give the columns of W (plus the bias).
        with torch.no_grad():
            probe = torch.eye(layer.in_features, device=weight.device)
            out = layer(probe).float()
            if layer.bias is not None:
                out = out - layer.bias.float()
        return out.T.contiguous()
    raise TypeError(f"not a bitsandbytes layer: {type(layer).__name__}")
