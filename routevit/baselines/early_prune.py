"""The bLViT paper's "early prune" baseline (Table 3) on a timm ViT.

After each listed layer, keep the ``k = ceil(keep_rate * N)`` tokens (class token always kept and
counted in ``k``) with the highest class-token attention of that layer (averaged over heads), and
drop the rest for good: no efficiency path, no fused token. The remaining layers run on ``k``
tokens. Kept tokens stay in ascending position order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..layers.routing import tokens_to_keep
from ._common import (
    attention_residual,
    check_keep_rate,
    check_layers,
    check_no_mask,
    check_timm_vit,
    cls_attention,
    gather_tokens,
    mlp_residual,
    patch_blocks,
)


def early_prune_select(attention: torch.Tensor, keep: int) -> torch.Tensor:
    """Positions of the class token and the ``keep - 1`` most attended other tokens.

    ``attention`` ``(B, N)`` class-token attention over all tokens -> ``(B, keep)`` ascending
    positions, the first being 0 (the class token).
    """
    n = attention.shape[1]
    if not 1 <= keep <= n:
        raise ValueError(f"keep must be in [1, N={n}], got {keep}")
    top = attention.detach()[:, 1:].topk(keep - 1, dim=1, sorted=False).indices.sort(dim=1).values + 1
    cls = torch.zeros(attention.shape[0], 1, dtype=top.dtype, device=top.device)
    return torch.cat([cls, top], dim=1)


class _EarlyPruneBlock:
    """Mixin over timm's ``Block``: runs the block on ``(B, N, C)``, then keeps
    ``ceil(keep_rate * N)`` tokens: ``(B, N, C) -> (B, K, C)``."""

    _prune_keep_rate: float

    def _tokens(self, n: int) -> tuple[int, int]:
        return n, tokens_to_keep(self._prune_keep_rate, n)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        check_no_mask(attn_mask, is_causal, "early prune")
        x, q, k = attention_residual(self, x)
        keep = tokens_to_keep(self._prune_keep_rate, x.shape[1])
        attention = cls_attention(self.attn, q, k) if keep < x.shape[1] else None
        x = mlp_residual(self, x)
        if attention is None:
            return x
        return gather_tokens(x, early_prune_select(attention, keep))


def patch_early_prune(model: nn.Module, keep_rate: float, prune_after: int | Sequence[int]) -> nn.Module:
    """Prune a timm ``VisionTransformer``'s tokens after the given layer(s), in place; returns it.

    Args:
        model: a vanilla timm ViT (class token at position 0, no register tokens).
        keep_rate: share of the tokens (class token included) kept at each pruning point, in (0, 1].
        prune_after: 1-based block index (or indices) in ``[1, depth]`` after which tokens are
            dropped, ranked by that block's class-token attention (the paper: 0.25 after layer 1).

    ``state_dict`` keys are unchanged: the pruning blocks keep their submodules and weights.
    """
    check_timm_vit(model, "patch_early_prune")
    keep_rate = check_keep_rate(keep_rate)
    layers = check_layers(prune_after, len(model.blocks), "prune_after")
    blocks = [model.blocks[i - 1] for i in layers]
    patch_blocks(blocks, _EarlyPruneBlock, "early_prune")
    for block in blocks:
        block._prune_keep_rate = keep_rate
    return model
