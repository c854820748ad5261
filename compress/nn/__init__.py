"""Static, deployable modules. Nothing here knows about the supernet, the search or the policies."""

from compress.nn.blocks import Attention, MBConv, TransformerBlock
from compress.nn.layers import ConvBNAct, Normalize
from compress.nn.net import HybridNet, build_model, check_config, pool_tokens
from compress.nn.token_merging import merge_tokens

__all__ = [
    "Attention", "ConvBNAct", "HybridNet", "MBConv", "Normalize", "TransformerBlock",
    "build_model", "check_config", "merge_tokens", "pool_tokens",
]
