"""Token merging (ToMe): bipartite soft matching, written from Bolya et al., "Token Merging: Your ViT But
Faster" (ICLR 2023).

Per attention layer, ``r`` tokens are merged away:

1. similarity is the cosine similarity of the attention keys averaged over heads;
2. tokens alternate into set A (even positions) and set B (odd positions);
3. each A token draws one edge to its most similar B token;
4. the ``r`` strongest edges are kept, and each of those A tokens is merged into its B token by a
   size-weighted mean (the size of a token is how many input tokens it stands for);
5. the remaining A tokens are kept unchanged, followed by all B tokens.

Sizes are carried along so that attention can be *proportional* (a merged token counts as ``size``
keys: ``softmax(qk/sqrt(d) + log size)``) and so that pooling is a size-weighted mean. Only gather,
scatter-add and sort are used, so the merge exports to ONNX and runs in ONNX Runtime.
"""

from __future__ import annotations

import torch


def merge_tokens(
    x: torch.Tensor, size: torch.Tensor | None, metric: torch.Tensor, r: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge ``r`` tokens of ``x`` (B, N, C) by bipartite soft matching on ``metric`` (B, N, D).

    Returns the merged tokens (B, N - r, C) and their sizes (B, N - r, 1). ``r`` is capped at N // 2
    (the size of set A when N is even); with ``r <= 0`` the inputs come back untouched.
    """
    n_tokens = x.shape[1]
    r = min(r, n_tokens // 2)
    if size is None:
        size = torch.ones_like(x[..., :1])
    if r <= 0:
        return x, size

    metric = metric / metric.norm(dim=-1, keepdim=True)
    metric_a, metric_b = metric[:, ::2], metric[:, 1::2]
    scores = metric_a @ metric_b.transpose(-1, -2)  # (B, Na, Nb)
    best_score, best_b = scores.max(dim=-1)  # each A token's edge to its most similar B token
    order = best_score.argsort(dim=-1, descending=True)  # strongest edges first
    merged_a = order[:, :r]  # (B, r) A tokens merged away
    kept_a = order[:, r:]  # (B, Na - r) A tokens kept
    target_b = best_b.gather(1, merged_a)  # (B, r) where each merged A token goes

    # Size-weighted mean: merge sums of (x * size) and of size, then divide.
    weighted = torch.cat([x * size, size], dim=-1)
    a, b = weighted[:, ::2], weighted[:, 1::2]
    channels = weighted.shape[-1]
    kept = a.gather(1, kept_a.unsqueeze(-1).expand(-1, -1, channels))
    moved = a.gather(1, merged_a.unsqueeze(-1).expand(-1, -1, channels))
    b = b.scatter_add(1, target_b.unsqueeze(-1).expand(-1, -1, channels), moved)
    out = torch.cat([kept, b], dim=1)
    new_size = out[..., -1:]
    return out[..., :-1] / new_size, new_size
