"""``linear_attn``: ReLU linear attention, the global-context block of edge-device ViTs (EfficientViT).

Softmax attention costs N^2 per head and, deployed in INT8, its softmax is the slowest op (ONNX Runtime's
QLinearSoftmax measured 4.6 ms against 0.8 ms in fp32 here). Linear attention replaces
``softmax(q k^T) v`` with ``relu(q) (relu(k)^T v) / (relu(q) sum_j relu(k_j))``: two small matrix products
per head, cost linear in the number of tokens, no softmax and no exponentials, all of it MatMul and Relu in
the exported graph.

Everything else is the ``attn`` family (options, stage, elastic heads and MLP, head pruning). Token
merging works too: a merged token stands for ``size`` tokens, so its key and value count ``size`` times in
the sums (the linear-attention form of ToMe's proportional attention).
"""

from __future__ import annotations

import torch

from compress.families.attn import AttnFamily, AttnStage, ElasticAttnBlocks, ElasticTransformerBlock
from compress.nn.blocks import Attention, TransformerBlock
from compress.registry import register_family

EPS = 1e-6  # keeps the normalizer away from 0 when every relu(q) . relu(k) vanishes


def linear_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """ReLU linear attention over (B, heads, N, head_dim); ``bias`` is the log token size of merged tokens
    (B, 1, 1, N), as for softmax attention."""
    q, k = torch.relu(q), torch.relu(k)
    if bias is not None:
        k = k * bias.exp().transpose(-2, -1)  # (B, 1, N, 1): each key counts as many times as it stands for
    kv = k.transpose(-2, -1) @ v  # (B, heads, d, d)
    normalizer = q @ k.sum(dim=-2, keepdim=True).transpose(-2, -1)  # (B, heads, N, 1)
    return (q @ kv) / (normalizer + EPS)


class LinearAttention(Attention):
    attend = staticmethod(linear_attend)


class LinearTransformerBlock(TransformerBlock):
    family = "linear_attn"
    attention_type = LinearAttention


class LinearAttnStage(AttnStage):
    family = "linear_attn"

    @staticmethod
    def make_block(dim: int, b: dict) -> LinearTransformerBlock:
        return LinearTransformerBlock(dim, b["heads"], b["head_dim"], b["mlp_hidden"], b.get("merge_r", 0))


class ElasticLinearTransformerBlock(ElasticTransformerBlock):
    static_block = LinearTransformerBlock
    attend = staticmethod(linear_attend)


class ElasticLinearAttnBlocks(ElasticAttnBlocks):
    family = "linear_attn"
    elastic_block = ElasticLinearTransformerBlock


@register_family
class LinearAttnFamily(AttnFamily):
    name = "linear_attn"
    kind = "linear attention"
    elastic_type = ElasticLinearAttnBlocks
    static_type = LinearAttnStage
