"""Shared pieces of the token-reduction baselines.

* `check_timm_vit` refuses anything but a vanilla timm ``VisionTransformer`` (one class
  token at position 0, token pooling, plain ``Block`` / ``Attention``).
* `attention_residual` runs a timm block's attention sub-layer with the block's own
  submodules (``norm1``, ``attn.qkv``, ``attn.proj``, ``ls1``, ``drop_path1``) through
  ``scaled_dot_product_attention``, optionally with an additive bias, and also returns the
  queries and keys so a baseline can rank or match tokens without a second projection.
* `cls_attention`: the class token's attention row only (``q_cls K^T``, cheap), averaged
  over heads; fused attention does not return probabilities.
* `patch_blocks` swaps the class of the listed blocks to a subclass that overrides
  ``forward``; the submodules and parameters are the original ones, so ``state_dict`` keys stay
  identical and a timm checkpoint still loads.
* `token_counts`: tokens entering each block's attention and MLP, for docs and MAC matching.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

_SWAPPED: dict[tuple[type, type], type] = {}


def check_timm_vit(model: nn.Module, what: str) -> None:
    """Raise ``ValueError`` unless ``model`` is a vanilla, not yet patched timm ``VisionTransformer``."""
    try:
        from timm.layers import Attention
        from timm.models.vision_transformer import Block, VisionTransformer
    except ImportError as e:  # pragma: no cover - timm is a dev dependency
        raise ValueError(f"{what} patches a timm VisionTransformer, but timm is not installed") from e
    name = type(model).__name__
    if not isinstance(model, VisionTransformer):
        raise ValueError(
            f"{what} expects a timm VisionTransformer (timm.models.vision_transformer), got {name}"
        )
    patched = {getattr(b, "_baseline", None) for b in model.blocks} - {None}
    if patched:
        raise ValueError(
            f"{what}: this {name} is already patched with {sorted(patched)}; patch a fresh model"
        )
    problems = []
    if getattr(model, "cls_token", None) is None:
        problems.append("no class token (class_token=False)")
    if getattr(model, "num_prefix_tokens", 1) != 1:
        problems.append(f"{model.num_prefix_tokens} prefix tokens (register or distillation tokens)")
    if getattr(model, "global_pool", "token") != "token":
        problems.append(f"global_pool={model.global_pool!r}")
    for i, block in enumerate(model.blocks):
        if type(block) is not Block or type(getattr(block, "attn", None)) is not Attention:
            attn = type(getattr(block, "attn", None)).__name__
            problems.append(f"blocks[{i}] is {type(block).__name__} with {attn}")
            break
    if problems:
        raise ValueError(
            f"{what} expects a vanilla timm VisionTransformer: one class token at position 0, no "
            f"register tokens, global_pool='token', plain Block/Attention blocks; got {name} with "
            + "; ".join(problems)
        )


def check_keep_rate(keep_rate: float) -> float:
    if isinstance(keep_rate, bool) or not isinstance(keep_rate, numbers.Real):
        raise TypeError(f"keep_rate must be a float in (0, 1], got {type(keep_rate).__name__}")
    if not 0.0 < float(keep_rate) <= 1.0:
        raise ValueError(f"keep_rate must be in (0, 1], got {keep_rate}")
    return float(keep_rate)


def check_layers(layers: int | Sequence[int], depth: int, name: str) -> tuple[int, ...]:
    """1-based block indices in ``[1, depth]``, distinct; returned sorted."""
    if isinstance(layers, numbers.Integral) and not isinstance(layers, bool):
        layers = (int(layers),)
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
        raise TypeError(f"{name} must be an int or a sequence of ints, got {type(layers).__name__}")
    out = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):
            raise TypeError(f"{name} must hold ints (1-based block indices), got {layer!r}")
        if not 1 <= layer <= depth:
            raise ValueError(
                f"{name} are 1-based block indices in [1, {depth}] (the model has {depth} blocks), "
                f"got {tuple(layers)}"
            )
        out.append(int(layer))
    if len(set(out)) != len(out):
        raise ValueError(f"{name} must be distinct, got {tuple(layers)}")
    return tuple(sorted(out))


def check_no_mask(attn_mask: torch.Tensor | None, is_causal: bool, what: str) -> None:
    if attn_mask is not None or is_causal:
        raise ValueError(
            f"{what} changes the number of tokens between blocks, so it cannot take an attention "
            f"mask or is_causal (got attn_mask={'a tensor' if attn_mask is not None else None}, "
            f"is_causal={is_causal})"
        )


def qkv(attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, keys and values of a timm ``Attention``: ``(B, N, C) -> 3 x (B, H, N, D)``."""
    b, n, _ = x.shape
    q, k, v = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    return attn.q_norm(q), attn.k_norm(k), v


def attend(
    attn: nn.Module,
    x: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """The rest of timm's ``Attention.forward``: SDPA (with an additive float ``bias`` broadcastable
    to ``(B, H, N, N)``), output norm, gate, projection. ``x`` ``(B, N, C)`` is the attention input."""
    b, n, _ = x.shape
    drop = attn.attn_drop.p if attn.training else 0.0
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=drop)
    out = attn.norm(out.transpose(1, 2).reshape(b, n, attn.attn_dim))
    gate = getattr(attn, "gate", None)
    if gate is not None:
        out = out * gate(x).sigmoid()
    return attn.proj_drop(attn.proj(out))


def attention_residual(
    block: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x + drop_path1(ls1(attn(norm1(x))))`` of a timm ``Block``, plus its ``q`` and ``k``.

    ``x`` ``(B, N, C)`` -> ``((B, N, C), q (B, H, N, D), k (B, H, N, D))``.
    """
    h = block.norm1(x)
    q, k, v = qkv(block.attn, h)
    out = attend(block.attn, h, q, k, v, bias)
    return x + block.drop_path1(block.ls1(out)), q, k


def mlp_residual(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x + drop_path2(ls2(mlp(norm2(x))))``: ``(B, N, C) -> (B, N, C)``."""
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


def cls_attention(attn: nn.Module, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Attention probabilities of the class token (query 0) over all keys, averaged over heads.

    ``q, k`` ``(B, H, N, D)`` -> ``(B, N)``, each row sums to 1. Costs ``H N D`` MACs per sample.
    """
    logits = (q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)  # (B, H, 1, N)
    return logits.softmax(dim=-1).mean(dim=1).squeeze(1)


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x`` ``(B, N, C)``, ``index`` ``(B, K)`` -> ``(B, K, C)``."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def patch_blocks(blocks: Sequence[nn.Module], mixin: type, baseline: str) -> None:
    """Swap each module's class to ``(mixin, original class)``; the mixin overrides methods
    (a block's ``forward``, or a model's ``forward_features``)."""
    for block in blocks:
        base = type(block)
        key = (mixin, base)
        if key not in _SWAPPED:
            _SWAPPED[key] = type(mixin.__name__.lstrip("_"), (mixin, base), {"__module__": mixin.__module__})
        block.__class__ = _SWAPPED[key]
        block._baseline = baseline


class LayerTokens(NamedTuple):
    """Tokens (CLS included) that one block's attention and MLP see, and that leave the block."""

    attention: int
    mlp: int
    out: int


def token_counts(model: nn.Module, num_tokens: int | None = None) -> list[LayerTokens]:
    """Per block of a (patched or vanilla) timm ViT: tokens entering its attention and its MLP
    and leaving it. ``num_tokens`` defaults to the model's patches + 1 (CLS)."""
    if num_tokens is None:
        num_tokens = model.patch_embed.num_patches + model.num_prefix_tokens
    counts = []
    n = int(num_tokens)
    for block in model.blocks:
        tokens = getattr(block, "_tokens", None)
        mlp, out = tokens(n) if tokens is not None else (n, n)
        counts.append(LayerTokens(n, mlp, out))
        n = out
    return counts
