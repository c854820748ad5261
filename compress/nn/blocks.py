"""Static residual blocks: the inverted-residual convolution block and the pre-norm transformer block."""

from __future__ import annotations

import torch
from torch import nn

from compress.nn.layers import ConvBNAct
from compress.nn.token_merging import merge_tokens


class MBConv(nn.Module):
    """Inverted residual block (MobileNetV2): 1x1 expand, kxk depthwise, 1x1 project, identity shortcut."""

    def __init__(self, dim: int, hidden: int, kernel_size: int):
        super().__init__()
        self.pw1 = ConvBNAct(dim, hidden, 1)
        self.dw = ConvBNAct(hidden, hidden, kernel_size, groups=hidden)
        self.pw2 = ConvBNAct(hidden, dim, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pw2(self.dw(self.pw1(x)))

    def config(self) -> dict:
        return {"type": "conv", "hidden": self.pw1.conv.out_channels, "kernel_size": self.dw.conv.kernel_size[0]}


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias) v, written out rather than ``F.scaled_dot_product_attention``:
    torch-pruning traces channels through autograd and loses track of them inside SDPA (measured: it then
    prunes indices that do not exist), and at our sequence lengths the fused kernel gains nothing on CPU.
    The supernet uses this same function, so extracted subnets match it exactly."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if bias is not None:
        scores = scores + bias
    return scores.softmax(dim=-1) @ v


class Attention(nn.Module):
    """Multi-head self-attention with an optional proportional-attention bias for merged tokens.

    The qkv projection is one Linear laid out as (3, heads, head_dim) so that torch-pruning can remove
    whole heads; after pruning only ``num_heads`` has to be updated (head_dim is derived from shapes).
    """

    attend = staticmethod(attend)  # families may swap the attention function (linear attention)

    def __init__(self, dim: int, num_heads: int, head_dim: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * num_heads * head_dim)
        self.proj = nn.Linear(num_heads * head_dim, dim)

    @property
    def head_dim(self) -> int:
        return self.qkv.out_features // (3 * self.num_heads)

    def forward(self, x: torch.Tensor, size: torch.Tensor | None = None,
                with_metric: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attention output and, ``with_metric``, the keys summed over heads (B, N, head_dim): token
        merging's similarity metric."""
        batch, tokens, _ = x.shape
        projected = self.qkv(x)
        qkv = projected.reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, N, head_dim); unbind (not indexing) lets torch-pruning see the split
        bias = None
        if size is not None:
            bias = size.log().transpose(1, 2).unsqueeze(1)  # (B, 1, 1, N): a merged key counts `size` times
        out = self.gate_heads(x, self.attend(q, k, v, bias)).transpose(1, 2).reshape(batch, tokens, -1)
        metric = None
        if with_metric:
            # Sum over heads as a product with stacked identities, on the keys before the head permute: a
            # reduction over the head axis measured 3-4x slower in ONNX Runtime.
            width = self.num_heads * self.head_dim
            stacked = torch.eye(self.head_dim, dtype=projected.dtype, device=projected.device).repeat(self.num_heads, 1)
            metric = projected[..., width:2 * width] @ stacked
        return self.proj(out), metric

    def gate_heads(self, x: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
        """Each head's output (B, heads, N, head_dim) as it enters the projection; subclasses gate it."""
        return heads

    # The pruning protocol (compress.policies.prune): whether whole heads may be removed, and layers whose
    # outputs the dependency graph cannot follow (kept whole; their inputs still shrink with the width).
    heads_prunable = True

    def untraced_layers(self) -> list[nn.Module]:
        return []


class TransformerBlock(nn.Module):
    """Pre-norm transformer block; ``merge_r`` tokens are merged between attention and MLP (as in ToMe).
    Families that change only the attention subclass it with another ``attention_type`` and ``family``."""

    family = "attn"
    attention_type = Attention

    def __init__(self, dim: int, num_heads: int, head_dim: int, mlp_hidden: int, merge_r: int = 0):
        super().__init__()
        self.merge_r = merge_r
        self.norm1 = nn.LayerNorm(dim)
        self.attn = self.attention_type(dim, num_heads, head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(mlp_hidden, dim)

    def forward(self, x: torch.Tensor, size: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        attn_out, metric = self.attn(self.norm1(x), size, with_metric=self.merge_r > 0)
        x = x + attn_out
        if self.merge_r > 0:
            x, size = merge_tokens(x, size, metric, self.merge_r)
        x = x + self.fc2(self.act(self.fc1(self.norm2(x))))
        return x, size

    def config(self) -> dict:
        return {
            "type": self.family,
            "heads": self.attn.num_heads,
            "head_dim": self.attn.head_dim,
            "mlp_hidden": self.fc1.out_features,
            "merge_r": self.merge_r,
        }
