"""Attention kernels and the two attention layers.

Backends: ``sdpa`` (torch's scaled_dot_product_attention), ``xformers``
(memory_efficient_attention, CUDA only), ``math`` (explicit softmax(QK^T)V, the reference for
tests) and ``auto`` (xformers for CUDA tensors when it imports, sdpa otherwise).

Whether xformers imports is resolved once per process (at the first call that could use it), so
a call under ``torch.compile`` reads a cached module instead of importing (a graph break), and a
broken wheel is not retried at every call. A bias that xformers' kernels refuse in its layout (16-bit
biases need every stride but the last to be a multiple of 8, which SAM's ``(B * nW, H, Lq, 196)``
windowed bias is not) is copied into an aligned buffer and passed as a slice of it.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_last_dim, check_same_device_dtype, check_tensor, has_shape
from .relpos import decomposed_rel_pos
from .windows import WindowGrid

Backend = Literal["auto", "sdpa", "xformers", "math"]
BACKENDS: tuple[str, ...] = ("auto", "sdpa", "xformers", "math")

_current_backend: list[str] = ["auto"]  # a one-slot box, so the setter needs no `global`

# Device types xformers has kernels for (a module constant, so tests can run a fake on the CPU).
XFORMERS_DEVICES: tuple[str, ...] = ("cuda",)

_UNRESOLVED = object()
_xformers_box: list[object] = [_UNRESOLVED]  # xformers.ops, or None once it failed to import


def _xformers_ops():
    """The xformers.ops module, or None when xformers does not import; imported once."""
    ops = _xformers_box[0]
    if ops is _UNRESOLVED:
        try:
            ops = importlib.import_module("xformers.ops")
        except Exception:  # ImportError, or a broken build that fails while importing
            ops = None
        _xformers_box[0] = ops
    return ops


def _forget_xformers() -> None:
    """Resolve xformers again at the next call (for tests that install or remove a fake)."""
    _xformers_box[0] = _UNRESOLVED


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


def _xformers_bias(bias: torch.Tensor, shape: tuple[int, int, int, int], dtype: torch.dtype) -> torch.Tensor:
    """``bias`` (broadcastable to ``shape`` = ``(B, H, Lq, Lk)``) in the layout xformers'
    memory-efficient kernels take: ``dtype`` (the query's), the full 4-D shape (broadcast
    dimensions as stride-0 views), last stride 1 and every other stride a multiple of
    ``128 // bits`` (8 for 16-bit). A bias that is not is copied into a buffer whose rows are
    padded to that multiple, and returned as the ``(..., :Lk)`` slice of it (xformers' own advice);
    the padding is never read. Differentiable (the copy's gradient flows back to ``bias``)."""
    b, h, lq, lk = shape
    bias = bias.to(dtype)
    while bias.dim() < 4:
        bias = bias.unsqueeze(0)
    if bias.shape[-1] != lk or bias.stride(-1) != 1:  # broadcast (or strided) over the keys
        bias = bias.expand(*bias.shape[:-1], lk).contiguous()
    align = 128 // torch.finfo(dtype).bits
    if any(stride % align for stride in bias.stride()[:-1]):
        # padded before the expand, so a broadcast bias is not materialised; every stride of the
        # padded buffer is a multiple of its row, and the expanded dimensions get stride 0
        padded = -(-lk // align) * align
        bias = F.pad(bias, (0, padded - lk))[..., :lk]
    return bias.expand(b, h, lq, lk)


def _xformers_attention(q, k, v, bias):
    ops = _xformers_ops()
    if ops is None:
        raise RuntimeError("attention backend 'xformers' needs xformers, which does not import")
    if q.device.type not in XFORMERS_DEVICES:
        raise RuntimeError(
            f"attention backend 'xformers' has no kernels for {q.device.type} tensors; "
            "use 'auto' or 'sdpa' off CUDA"
        )
    b, h, lq, d = q.shape
    if bias is not None:
        bias = _xformers_bias(bias, (b, h, lq, k.shape[2]), q.dtype)
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
        backend == "auto" and q.device.type in XFORMERS_DEVICES and _xformers_ops() is not None
    ):
        return _xformers_attention(q, k, v, bias)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def _rel_pos_tables(module: nn.Module, rel_pos_size: tuple[int, int] | None, head_dim: int) -> None:
    """Give ``module`` SAM-named ``rel_pos_h`` / ``rel_pos_w`` tables (zeros, as SAM) or None."""
    if rel_pos_size is None:
        module.rel_pos_h = module.rel_pos_w = None
        return
    h, w = rel_pos_size
    if h < 1 or w < 1:
        raise ValueError(f"rel_pos_size must be a positive (height, width), got {rel_pos_size}")
    module.rel_pos_h = nn.Parameter(torch.zeros(2 * h - 1, head_dim))
    module.rel_pos_w = nn.Parameter(torch.zeros(2 * w - 1, head_dim))


def _project_windows(
    x: torch.Tensor, project: Callable[[torch.Tensor], torch.Tensor], grid: WindowGrid | None
) -> torch.Tensor:
    """``project(x)`` (a Linear or a replacement of one), cut into windows if there is a grid:
    ``(B, N, C) -> (B * nW, T, out)``."""
    return project(x) if grid is None else grid.project_windows(x, project)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (timm's parameter names).

    ``Attention(dim, heads)`` is a vanilla ViT attention. With ``inner_dim`` < dim it is the
    efficiency path's dimension-matched attention: qkv ``C -> 3c``, proj ``c -> C``.
    ``rel_pos_size=(h, w)`` adds SAM's decomposed relative position terms for an ``h x w``
    attention grid (tables ``rel_pos_h``, ``rel_pos_w``); ``forward`` then needs ``grid``.

    Shapes: ``(B, N, dim) -> (B, N, out_dim)``; ``bias`` broadcastable to ``(B, H, N, N)``, or
    to ``(B * nW, H, T, T)`` when ``grid`` cuts the tokens into ``nW`` windows of ``T`` slots.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        inner_dim: int | None = None,
        out_dim: int | None = None,
        qkv_bias: bool = True,
        rel_pos_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        inner_dim = inner_dim or dim
        if inner_dim % num_heads != 0:
            raise ValueError(f"inner_dim {inner_dim} must be divisible by num_heads {num_heads}")
        self.dim, self.inner_dim, self.num_heads = dim, inner_dim, num_heads
        self.head_dim = inner_dim // num_heads
        self.qkv = nn.Linear(dim, 3 * inner_dim, bias=qkv_bias)
        self.proj = nn.Linear(inner_dim, out_dim or dim)
        _rel_pos_tables(self, rel_pos_size, self.head_dim)

    def forward(
        self, x: torch.Tensor, bias: torch.Tensor | None = None, grid: WindowGrid | None = None
    ) -> torch.Tensor:
        """``grid``: the ``(B, N, C)`` tokens are an ``H x W`` raster grid attended per window
        (or globally); needed with relative positions."""
        check_tensor(x, "x", 3, "(B, N, C)")
        check_last_dim(x, "x", self.dim)
        if self.rel_pos_h is not None and grid is None:
            raise ValueError("this Attention has relative positions: pass grid=WindowGrid(H, W, window)")
        b, n, _ = x.shape
        qkv = _project_windows(x, self.qkv, grid)
        bw, t, _ = qkv.shape
        qkv = qkv.view(bw, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.rel_pos_h is not None:
            rel = decomposed_rel_pos(qkv[0], self.rel_pos_h, self.rel_pos_w, grid.window_hw)
            bias = rel if bias is None else rel + bias
        out = attention(qkv[0], qkv[1], qkv[2], bias).transpose(1, 2).reshape(bw, t, self.inner_dim)
        if grid is not None:
            out = grid.unpartition(out)  # drop the padding before proj: it is never read
        return self.proj(out)


class SemiCrossAttention(nn.Module):
    """Queries from the selected tokens, keys and values from all tokens.

    The weights are a vanilla block's fused qkv (``qkv``: C -> 3C, ``proj``: C -> C), so with
    every token selected this is exactly [`Attention`][].

    Shapes: ``x_q (B, K, C)``, ``x_kv (B, N, C)``, ``bias`` broadcastable to ``(B, H, K, N)``
    -> ``(B, K, C)``.

    With a windowed ``grid``, each query attends to the keys of its own window: the queries
    must be grouped by window, window-major, the same number ``K / nW`` in every window (as
    per-window routing produces them), and ``bias`` broadcasts to ``(B * nW, H, K / nW, T)``.
    ``q_pos`` ``(B, K)`` gives each query's raster index in the grid; the relative position
    terms (``rel_pos_size``) follow it.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        rel_pos_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        _rel_pos_tables(self, rel_pos_size, self.head_dim)

    def project_q(self, x_q: torch.Tensor) -> torch.Tensor:
        """The queries of the selected tokens: ``(B, K, C) -> (B, K, C)`` (the first third of qkv)."""
        c, b_qkv = self.dim, self.qkv.bias
        return F.linear(x_q, self.qkv.weight[:c], None if b_qkv is None else b_qkv[:c])

    def project_kv(self, x_kv: torch.Tensor, grid: WindowGrid | None = None) -> torch.Tensor:
        """Keys and values of all tokens, cut into windows with a grid:
        ``(B, N, C) -> (B * nW, T, 2C)``."""
        c, b_qkv = self.dim, self.qkv.bias
        weight, bias = self.qkv.weight[c:], None if b_qkv is None else b_qkv[c:]
        return _project_windows(x_kv, lambda t: F.linear(t, weight, bias), grid)

    def forward(
        self,
        x_q: torch.Tensor,
        x_kv: torch.Tensor,
        bias: torch.Tensor | None = None,
        grid: WindowGrid | None = None,
        q_pos: torch.Tensor | None = None,
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
        if self.rel_pos_h is not None and (grid is None or q_pos is None):
            raise ValueError(
                "this SemiCrossAttention has relative positions: pass grid=WindowGrid(...) and "
                "q_pos (B, K), the raster index of each query"
            )
        b, k_len, c = x_q.shape
        windows = 1 if grid is None else grid.num_windows
        if k_len % windows != 0:
            raise ValueError(f"{k_len} queries cannot be split evenly over {windows} windows")
        q, kv = self.project_q(x_q), self.project_kv(x_kv, grid)
        bw, t, _ = kv.shape
        q = q.view(bw, k_len // windows, self.num_heads, self.head_dim).transpose(1, 2)
        kv = kv.view(bw, t, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.rel_pos_h is not None:
            if not has_shape(q_pos, (k_len,), (b, k_len)):
                raise ValueError(
                    f"q_pos must have shape (K,) or (B, K) = ({b}, {k_len}), got {tuple(q_pos.shape)}"
                )
            local = grid.local_position(q_pos.expand(b, k_len)).reshape(bw, k_len // windows)
            rel = decomposed_rel_pos(q, self.rel_pos_h, self.rel_pos_w, grid.window_hw, local)
            bias = rel if bias is None else rel + bias
        out = attention(q, kv[0], kv[1], bias)
        return self.proj(out.transpose(1, 2).reshape(b, k_len, c))
