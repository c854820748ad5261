"""``gated_attn``: attention whose heads can learn to do nothing, for INT8 deployment.

From "Quantizable Transformers: Removing Outliers by Helping Attention Heads Do Nothing" (Bondarenko, Nagel
and Blankevoort, 2023). A head that has nothing to add to a token must, in plain attention, put its softmax
mass on some low-information token and let the residual path carry large values: that is where the
activation outliers come from that break INT8 activation ranges. A learned gate per head and token,
``sigmoid(G(x))``, multiplies the head's output, so a head can switch itself off instead. Here ``G`` is one
Linear from the normed token to one logit per head (the paper uses a small linear gate per head; the
heads' inputs are not a split of the token here, since width and heads are chosen independently).

Everything else is the ``attn`` family: same options, same stage, token merging included. Pruning keeps a
gated block's heads (its gate is not traced through by the dependency graph) and prunes its width and MLP.
"""

from __future__ import annotations

import torch
from torch import nn

from compress.families.attn import AttnFamily, AttnStage, ElasticAttnBlocks, ElasticTransformerBlock
from compress.nn.blocks import Attention, TransformerBlock
from compress.registry import register_family
from compress.supernet.elastic import ElasticLinear

# Gates start mostly open (sigmoid(1) = 0.73) so that a gated supernet starts close to a plain one.
GATE_BIAS_INIT = 1.0


class GatedAttention(Attention):
    heads_prunable = False  # the gate's per-head outputs would have to shrink with the heads

    def __init__(self, dim: int, num_heads: int, head_dim: int):
        super().__init__(dim, num_heads, head_dim)
        self.gate = nn.Linear(dim, num_heads)
        nn.init.constant_(self.gate.bias, GATE_BIAS_INIT)

    def gate_heads(self, x: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
        return heads * torch.sigmoid(self.gate(x)).transpose(1, 2).unsqueeze(-1)

    def untraced_layers(self) -> list[nn.Module]:
        return [self.gate]


class GatedTransformerBlock(TransformerBlock):
    family = "gated_attn"
    attention_type = GatedAttention


class GatedAttnStage(AttnStage):
    family = "gated_attn"

    @staticmethod
    def make_block(dim: int, b: dict) -> nn.Module:
        return GatedTransformerBlock(dim, b["heads"], b["head_dim"], b["mlp_hidden"], b.get("merge_r", 0))


class ElasticGatedTransformerBlock(ElasticTransformerBlock):
    static_block = GatedTransformerBlock

    def __init__(self, max_dim: int, max_heads: int, head_dim: int, max_mlp_hidden: int):
        super().__init__(max_dim, max_heads, head_dim, max_mlp_hidden)
        self.gate = ElasticLinear(max_dim, max_heads)
        nn.init.constant_(self.gate.linear.bias, GATE_BIAS_INIT)

    def attention(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        batch, tokens, _ = x.shape
        gate = torch.sigmoid(self.gate(x, heads)).unsqueeze(-1)  # (B, N, heads, 1)
        out = super().attention(x, heads).reshape(batch, tokens, heads, -1)
        return (out * gate).reshape(batch, tokens, -1)

    def extract(self, dim: int, heads: int, mlp_hidden: int) -> GatedTransformerBlock:
        static = super().extract(dim, heads, mlp_hidden)
        static.attn.gate = self.gate.extract(dim, heads)
        return static


class ElasticGatedAttnBlocks(ElasticAttnBlocks):
    family = "gated_attn"
    elastic_block = ElasticGatedTransformerBlock


@register_family
class GatedAttnFamily(AttnFamily):
    name = "gated_attn"
    kind = "gated attention"
    elastic_type = ElasticGatedAttnBlocks
    static_type = GatedAttnStage
