"""Attention kernels and the two attention layers.

Backends: ``sdpa`` (torch's scaled_dot_product_attention), ``xformers``
(memory_efficient_attention, CUDA only), ``math`` (explicit softmax(QK^T)V, the reference for
tests) and ``auto`` (xformers for CUDA tensors when it imports, sdpa otherwise).
"""

from __future__ import annotations

import importlib
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_last_dim, check_same_device_dtype, check_tensor

Backend = Literal["auto", "sdpa", "xformers", "math"]
BACKENDS: tuple[str, ...] = ("auto", "sdpa", "xformers", "math")

_current_backend: list[str] = ["auto"]  # a one-slot box, so the setter needs no `global`


def _xformers_ops():
    """The xformers.ops module, or None when xformers does not import."""
    try:
        return importlib.import_module("xformers.ops")
    except Exception:  # ImportError, or a broken build that fails while importing
        return None


def get_attention_backend() -> str:
    return _current_backend[0]


class set_attention_backend:  # noqa: N801 - a function-style name, like torch.set_grad_enabled
    """Choose the attention kernel: ``routevit.set_attention_backend("sdpa")``.

    Also a context manager that restores the previous backend on exit::

        with routevit.set_attention_backend("math"):
            ...
    """

    def __init__(self, backend: Backend) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"attention backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "xformers" and _xformers_ops() is None:
            raise RuntimeError(
                "attention backend 'xformers' was forced but xformers does not import; "
                "install the 'xformers' extra on a CUDA machine or use 'auto'/'sdpa'"
            )
        self._previous = _current_backend[0]
        _current_backend[0] = backend

    def __enter__(self) -> set_attention_backend:
        return self

    def __exit__(self, *exc: object) -> None:
        _current_backend[0] = self._previous


def math_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Reference ``softmax(q k^T / sqrt(D) + bias) v`` in float32, returned in q's dtype."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    logits = (q.float() @ k.float().transpose(-2, -1)) * scale
    if bias is not None:
        logits = logits + bias.float()
    return (logits.softmax(dim=-1) @ v.float()).to(q.dtype)


def _xformers_attention(q, k, v, bias):
    ops = _xformers_ops()
    if ops is None:
        raise RuntimeError("attention backend 'xformers' needs xformers, which does not import")
    if q.device.type != "cuda":
        raise RuntimeError(
            f"attention backend 'xformers' has no kernels for {q.device.type} tensors; "
            "use 'auto' or 'sdpa' off CUDA"
        )
    b, h, lq, d = q.shape
    if bias is not None:  # xformers wants a dense (B, H, Lq, Lk) bias
        bias = bias.expand(b, h, lq, k.shape[2]).to(q.dtype)
    out = ops.memory_efficient_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias
    )
    return out.transpose(1, 2)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Multi-head attention kernel with the current backend.

    Shapes: q ``(B, H, Lq, D)``, k and v ``(B, H, Lk, D)``, bias broadcastable to
    ``(B, H, Lq, Lk)`` (added to the logits) -> ``(B, H, Lq, D)``.
    """
    backend = _current_backend[0]
    if backend == "math":
        return math_attention(q, k, v, bias)
    if backend == "xformers" or (
        backend == "auto" and q.device.type == "cuda" and _xformers_ops() is not None
    ):
        return _xformers_attention(q, k, v, bias)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (timm's parameter names).

    ``Attention(dim, heads)`` is a vanilla ViT attention. With ``inner_dim`` < dim it is the
    efficiency path's dimension-matched attention: qkv ``C -> 3c``, proj ``c -> C``.

    Shapes: ``(B, N, dim) -> (B, N, out_dim)``; ``bias`` broadcastable to ``(B, H, N, N)``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        inner_dim: int | None = None,
        out_dim: int | None = None,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        inner_dim = inner_dim or dim
        if inner_dim % num_heads != 0:
            raise ValueError(f"inner_dim {inner_dim} must be divisible by num_heads {num_heads}")
        self.dim, self.inner_dim, self.num_heads = dim, inner_dim, num_heads
        self.head_dim = inner_dim // num_heads
        self.qkv = nn.Linear(dim, 3 * inner_dim, bias=qkv_bias)
        self.proj = nn.Linear(inner_dim, out_dim or dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        check_tensor(x, "x", 3, "(B, N, C)")
        check_last_dim(x, "x", self.dim)
        b, n, _ = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = attention(qkv[0], qkv[1], qkv[2], bias)
        return self.proj(out.transpose(1, 2).reshape(b, n, self.inner_dim))


class SemiCrossAttention(nn.Module):
    """Queries from the selected tokens, keys and values from all tokens.

    The weights are a vanilla block's fused qkv (``qkv``: C -> 3C, ``proj``: C -> C), so with
    every token selected this is exactly :class:`Attention`.

    Shapes: ``x_q (B, K, C)``, ``x_kv (B, N, C)``, ``bias`` broadcastable to ``(B, H, K, N)``
    -> ``(B, K, C)``.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x_q: torch.Tensor, x_kv: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        check_tensor(x_q, "x_q", 3, "(B, K, C)")
        check_tensor(x_kv, "x_kv", 3, "(B, N, C)")
        check_last_dim(x_q, "x_q", self.dim)
        check_last_dim(x_kv, "x_kv", self.dim)
        if x_q.shape[0] != x_kv.shape[0]:
            raise ValueError(
                f"x_q and x_kv must share the batch size, got {tuple(x_q.shape)} and {tuple(x_kv.shape)}"
            )
        check_same_device_dtype(x_kv, "x_kv", x_q=x_q)
        b, k_len, c = x_q.shape
        n = x_kv.shape[1]
        weight, b_qkv = self.qkv.weight, self.qkv.bias
        q = F.linear(x_q, weight[:c], None if b_qkv is None else b_qkv[:c])
        kv = F.linear(x_kv, weight[c:], None if b_qkv is None else b_qkv[c:])
        q = q.view(b, k_len, self.num_heads, self.head_dim).transpose(1, 2)
        kv = kv.view(b, n, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = attention(q, kv[0], kv[1], bias)
        return self.proj(out.transpose(1, 2).reshape(b, k_len, c))
