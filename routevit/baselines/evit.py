"""EViT (Liang et al., "Not All Patches Are What You Need", ICLR 2022) on a timm ViT.

In each pruning layer, after the block's attention, the ``k = ceil(keep_rate * (N - 1))`` patch
tokens with the highest class-token attention (averaged over heads) are kept and the other
``N - 1 - k`` are fused into one token, their average weighted by the class-token attention
(renormalised to sum to 1), appended after the kept tokens. The block's MLP then runs on the
``1 + k + 1`` tokens, and so do all later blocks. The class token is always kept.

Differences from the authors' code: kept tokens are in ascending position order (theirs: by
attention, descending; a ViT with absolute position embeddings gives the same output either way),
and the fusion weights are renormalised (theirs: raw attention weights, a sum < 1).
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


def evit_select(
    x: torch.Tensor, patch_attention: torch.Tensor, keep: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the ``keep`` most attended patch tokens and fuse the rest into one token.

    Args:
        x: ``(B, N, C)`` tokens, class token first.
        patch_attention: ``(B, N - 1)`` class-token attention to the patch tokens (``x[:, 1:]``).
        keep: patch tokens to keep, ``1 <= keep < N - 1``.

    Returns:
        ``(B, keep + 2, C)`` tokens ``[cls, kept (ascending position), fused]`` and the kept
        positions ``(B, keep)`` among the patch tokens (0-based in ``x[:, 1:]``), ascending.
    """
    n = x.shape[1]
    if patch_attention.shape != (x.shape[0], n - 1):
        raise ValueError(
            f"patch_attention must have shape (B, N - 1) = {(x.shape[0], n - 1)}, "
            f"got {tuple(patch_attention.shape)}"
        )
    if not 1 <= keep < n - 1:
        raise ValueError(f"keep must be in [1, N - 1) = [1, {n - 1}), got {keep}")
    order = patch_attention.detach().argsort(dim=1, descending=True, stable=True)
    kept = order[:, :keep].sort(dim=1).values
    rest = order[:, keep:]
    patches = x[:, 1:]
    weights = patch_attention.gather(1, rest)
    weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)
    fused = (gather_tokens(patches, rest) * weights.unsqueeze(-1).to(x.dtype)).sum(dim=1, keepdim=True)
    return torch.cat([x[:, :1], gather_tokens(patches, kept), fused], dim=1), kept


class _EViTBlock:
    """Mixin over timm's ``Block``: ``(B, N, C) -> (B, N', C)``, ``N' = ceil(keep_rate (N-1)) + 2``
    in a pruning layer (``N`` when that keeps every patch token)."""

    _evit_keep_rate: float

    def _tokens(self, n: int) -> tuple[int, int]:
        keep = tokens_to_keep(self._evit_keep_rate, n - 1)
        out = n if keep >= n - 1 else keep + 2
        return out, out

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        check_no_mask(attn_mask, is_causal, "EViT")
        x, q, k = attention_residual(self, x)
        keep = tokens_to_keep(self._evit_keep_rate, x.shape[1] - 1)
        if keep < x.shape[1] - 1:
            x, _ = evit_select(x, cls_attention(self.attn, q, k)[:, 1:], keep)
        return mlp_residual(self, x)


def patch_evit(model: nn.Module, keep_rate: float, prune_layers: Sequence[int]) -> nn.Module:
    """Turn a timm ``VisionTransformer`` into EViT in place and return it.

    Args:
        model: a vanilla timm ViT (class token at position 0, no register tokens).
        keep_rate: share of patch tokens kept in each pruning layer, in (0, 1]; 1 is the
            vanilla model.
        prune_layers: 1-based block indices in ``[1, depth]`` where tokens are pruned and fused
            (EViT's DeiT-S setting is ``(4, 7, 10)``).

    The pruning blocks keep their submodules and weights (``state_dict`` keys are unchanged).
    """
    check_timm_vit(model, "patch_evit")
    keep_rate = check_keep_rate(keep_rate)
    layers = check_layers(prune_layers, len(model.blocks), "prune_layers")
    blocks = [model.blocks[i - 1] for i in layers]
    patch_blocks(blocks, _EViTBlock, "evit")
    for block in blocks:
        block._evit_keep_rate = keep_rate
    return model
