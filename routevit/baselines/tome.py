"""ToMe (Bolya et al., "Token Merging: Your ViT but Faster", ICLR 2023) on a timm ViT.

In every block, between attention and MLP, bipartite soft matching merges ``r`` tokens: tokens
alternate into sets A (even positions) and B (odd positions); each A token's most similar B token
(cosine similarity of the attention keys averaged over heads) is its edge; the ``r`` most similar
edges are merged by a size-weighted average. The class token (A's first) is never merged. Token
sizes (how many patches a token stands for) are tracked through the blocks and used for
proportional attention: ``log(size)`` is added to the attention logits (an additive float mask of
``scaled_dot_product_attention``). ``r`` is clipped to ``(N - 1) // 2`` per layer.

Output order of a merging layer: the unmerged A tokens (ascending, class token first), then all
B tokens, as in the authors' code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ._common import (
    attention_residual,
    check_no_mask,
    check_timm_vit,
    gather_tokens,
    mlp_residual,
    patch_blocks,
)


def bipartite_soft_matching(metric: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Match ``r`` A tokens (even positions, the class token at 0 excluded) to B tokens (odd).

    Args:
        metric: ``(B, N, D)`` similarity features (keys averaged over heads).
        r: merges, ``0 <= r <= (N - 1) // 2``.

    Returns:
        ``unmerged (B, NA - r)``, positions in A that stay, ascending (0 = class token first);
        ``src (B, r)``, positions in A that merge; ``dst (B, r)``, their B partners (positions in B).
    """
    n = metric.shape[1]
    if not 0 <= r <= (n - 1) // 2:
        raise ValueError(f"r must be in [0, (N - 1) // 2 = {(n - 1) // 2}] for N={n} tokens, got {r}")
    with torch.no_grad():
        metric = metric / metric.norm(dim=-1, keepdim=True)
        a, b = metric[:, ::2], metric[:, 1::2]
        scores = a @ b.transpose(-1, -2)  # (B, NA, NB)
        scores[:, 0, :] = -math.inf  # the class token never merges
        best, partner = scores.max(dim=-1)  # (B, NA)
        edges = best.argsort(dim=-1, descending=True)
        unmerged = edges[:, r:].sort(dim=-1).values
        src = edges[:, :r]
        dst = partner.gather(1, src)
    return unmerged, src, dst


def merge_tokens(
    x: torch.Tensor,
    size: torch.Tensor,
    unmerged: torch.Tensor,
    src: torch.Tensor,
    dst: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted merge given a matching ([`bipartite_soft_matching`][]).

    ``x`` ``(B, N, C)``, ``size`` ``(B, N, 1)`` -> ``(B, N - r, C)``, ``(B, N - r, 1)``: unmerged A
    tokens then B tokens, each B token the size-weighted average of itself and its merged A tokens.
    """
    xs = torch.cat([x * size, size], dim=-1)
    a, b = xs[:, ::2], xs[:, 1::2]
    index = dst.unsqueeze(-1).expand(-1, -1, xs.shape[-1])
    b = b.scatter_add(1, index, gather_tokens(a, src))
    out = torch.cat([gather_tokens(a, unmerged), b], dim=1)
    size = out[..., -1:]
    return out[..., :-1] / size, size


def tome_merge(
    x: torch.Tensor, size: torch.Tensor, metric: torch.Tensor, r: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge ``r`` tokens of ``x`` ``(B, N, C)`` with sizes ``(B, N, 1)`` by ``metric`` ``(B, N, D)``."""
    return merge_tokens(x, size, *bipartite_soft_matching(metric, r))


class _ToMeBlock:
    """Mixin over timm's ``Block``: `forward_sized` ``(B, N, C)``, sizes ``(B, N, 1)`` or
    None (all 1) -> ``(B, N - min(r, (N - 1) // 2), C)`` and the merged sizes.

    The sizes travel as arguments, never as state: the patched model's ``forward_features``
    hands them from block to block. ``forward(x)`` (what ``model.blocks(x)`` calls) is only
    defined for the first block, where every size is 1; deeper blocks refuse it rather than
    silently dropping proportional attention.
    """

    _tome_r: int
    _tome_first: bool

    def _tokens(self, n: int) -> tuple[int, int]:
        out = n - min(self._tome_r, (n - 1) // 2)
        return out, out

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        check_no_mask(attn_mask, is_causal, "ToMe")
        if not self._tome_first:
            raise RuntimeError(
                "a ToMe block after the first needs the token sizes of the blocks before it: call "
                "the model (forward / forward_features) or block.forward_sized(x, size)"
            )
        return self.forward_sized(x, None)[0]

    def forward_sized(
        self, x: torch.Tensor, size: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if size is not None and size.shape != (*x.shape[:2], 1):
            raise ValueError(
                f"ToMe token sizes must have shape (B, N, 1) = {(*x.shape[:2], 1)} to match the "
                f"tokens {tuple(x.shape)}, got {tuple(size.shape)}"
            )
        bias = None if size is None else size.log().to(x.dtype)[:, None, None, :, 0]  # (B, 1, 1, N)
        x, _, k = attention_residual(self, x, bias)
        r = min(self._tome_r, (x.shape[1] - 1) // 2)
        if r > 0:
            if size is None:
                size = x.new_ones(x.shape[0], x.shape[1], 1)
            x, size = tome_merge(x, size, k.mean(dim=1), r)
        return mlp_residual(self, x), size


class _ToMeViT:
    """Mixin over timm's ``VisionTransformer``: ``forward_features`` passes the token sizes
    from each block to the next (timm's own runs ``self.blocks(x)``, which has no room for them)."""

    def forward_features(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        check_no_mask(attn_mask, is_causal, "ToMe")
        if self.grad_checkpointing:  # set after patching: refuse rather than not checkpoint
            raise RuntimeError("ToMe does not support gradient checkpointing; disable it")
        x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))
        size = None
        for block in self.blocks:
            x, size = block.forward_sized(x, size)
        return self.norm(x)


def patch_tome(model: nn.Module, r: int | Sequence[int]) -> nn.Module:
    """Turn a timm ``VisionTransformer`` into ToMe in place (proportional attention on) and return it.

    Args:
        model: a vanilla timm ViT (class token at position 0, no register tokens).
        r: tokens merged in every block (>= 0), or one count per block (a sequence of ``depth``
            ints). Clipped per layer to ``(N - 1) // 2``; ``r = 0`` is the vanilla model.

    ``state_dict`` keys are unchanged: every block keeps its submodules and weights. The model's
    class is swapped too, for a ``forward_features`` that hands the token sizes between blocks.
    """
    check_timm_vit(model, "patch_tome")
    depth = len(model.blocks)
    rs = _check_r(r, depth)
    if getattr(model, "grad_checkpointing", False):
        raise ValueError("patch_tome does not support gradient checkpointing; disable it first")
    patch_blocks(list(model.blocks), _ToMeBlock, "tome")
    patch_blocks([model], _ToMeViT, "tome")
    for i, block in enumerate(model.blocks):
        block._tome_r = rs[i]
        block._tome_first = i == 0
    return model


def _check_r(r: int | Sequence[int], depth: int) -> list[int]:
    if isinstance(r, int) and not isinstance(r, bool):
        rs = [r] * depth
    elif isinstance(r, Sequence) and not isinstance(r, (str, bytes)):
        rs = list(r)
        if len(rs) != depth:
            raise ValueError(f"r as a sequence needs one count per block ({depth}), got {len(rs)}: {rs}")
    else:
        raise TypeError(f"r must be an int or a sequence of {depth} ints, got {type(r).__name__}")
    for value in rs:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"r must hold ints, got {value!r}")
        if value < 0:
            raise ValueError(f"r must be >= 0 (tokens merged per block), got {r}")
    return rs
