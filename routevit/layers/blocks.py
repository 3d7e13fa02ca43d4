"""Transformer blocks: the vanilla block, the two paths of a big.LITTLE module and their fusion.

Parameter names follow timm's ``Block`` (``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``,
``mlp.fc1``, ``mlp.fc2``) so vanilla checkpoints load into the performance path one to one.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import runtime
from ._checks import check_last_dim, check_tensor
from .attention import Attention, SemiCrossAttention
from .routing import Routes
from .windows import WindowGrid


class Mlp(nn.Module):
    """``fc1 -> GELU -> fc2``: ``(..., in_dim) -> (..., out_dim)``."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, out_dim or in_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))

    def forward_transposed(self, x: torch.Tensor) -> torch.Tensor:
        """`forward` with the tokens as the columns of both matmuls (``W @ x^T``).

        Same function, other orientation: for a few rows (the P path's K selected tokens at
        small batch) MKL divides ``W @ x^T`` better between the cores than ``x @ W^T``; see
        [`routevit.runtime.RuntimePolicy`][] and docs/results.md. ``(..., in_dim) -> (..., out_dim)``,
        returned as a transposed view.
        """
        columns = x.reshape(-1, x.shape[-1]).t()  # (in_dim, rows)
        hidden = self.act(torch.addmm(self.fc1.bias.unsqueeze(1), self.fc1.weight, columns))
        out = torch.addmm(self.fc2.bias.unsqueeze(1), self.fc2.weight, hidden)  # (out_dim, rows)
        return out.t().reshape(*x.shape[:-1], out.shape[0])


class DropPath(nn.Module):
    """Stochastic depth: drops a whole sample's branch output with probability ``p`` in training."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop path probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _check_grid(grid: object) -> None:
    """Blocks share ``forward(x, routes=None, grid=None)``: catch a grid passed as the routes."""
    if isinstance(grid, WindowGrid):
        raise TypeError(
            "a WindowGrid was passed as routes: call block(x, routes, grid) or block(x, grid=grid)"
        )


def _need_routes(routes: object, block: nn.Module) -> Routes:
    _check_grid(routes)
    if not isinstance(routes, Routes):
        raise TypeError(
            f"{type(block).__name__} updates the routed tokens: pass routes (a Routes from a "
            f"prediction layer), got {type(routes).__name__}"
        )
    return routes


class Block(nn.Module):
    """Vanilla pre-norm ViT block (a "full" layer that updates every token): ``(B, N, C) -> (B, N, C)``.

    ``routes`` is accepted for the blocks' common signature and not used: every token is updated.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        rel_pos_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, rel_pos_size=rel_pos_size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(
        self, x: torch.Tensor, routes: Routes | None = None, grid: WindowGrid | None = None
    ) -> torch.Tensor:
        _check_grid(routes)
        check_tensor(x, "x", 3, "(B, N, C)")
        x = x + self.drop_path(self.attn(self.norm1(x), grid=grid))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class DimMatchedBlock(nn.Module):
    """Efficiency (E) path: a vanilla ViT block of width ``inner_dim`` on a ``dim``-wide stream.

    Attention: qkv ``C -> 3c``, proj ``c -> C``. FFN: ``Linear(C -> c)``, ``Mlp(c, 4c, c)``,
    ``Linear(c -> C)``. Updates all tokens: ``(B, N, C) -> (B, N, C)`` (``routes`` unused).

    A replacement E block (see [`BigLittleBlock`][]'s ``efficiency``) provides the same
    ``attn_branch(x, grid)`` and ``mlp_branch(x)``, each ``(B, N, C) -> (B, N, C)``.
    """

    def __init__(
        self,
        dim: int,
        inner_dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        rel_pos_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.dim, self.inner_dim = dim, inner_dim
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(
            dim, num_heads, inner_dim=inner_dim, out_dim=dim, qkv_bias=qkv_bias, rel_pos_size=rel_pos_size
        )
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp_in = nn.Linear(dim, inner_dim)
        self.mlp = Mlp(inner_dim, int(inner_dim * mlp_ratio))
        self.mlp_out = nn.Linear(inner_dim, dim)
        self.drop_path = DropPath(drop_path)

    def attn_branch(self, x: torch.Tensor, grid: WindowGrid | None = None) -> torch.Tensor:
        """The attention sub-layer's update, before the residual: ``(B, N, C) -> (B, N, C)``."""
        return self.drop_path(self.attn(self.norm1(x), grid=grid))

    def mlp_branch(self, x: torch.Tensor) -> torch.Tensor:
        """The FFN sub-layer's update, before the residual: ``(B, N, C) -> (B, N, C)``."""
        return self.drop_path(self.mlp_out(self.mlp(self.mlp_in(self.norm2(x)))))

    def forward(
        self, x: torch.Tensor, routes: Routes | None = None, grid: WindowGrid | None = None
    ) -> torch.Tensor:
        _check_grid(routes)
        check_tensor(x, "x", 3, "(B, N, C)")
        check_last_dim(x, "x", self.dim)
        x = x + self.attn_branch(x, grid)
        return x + self.mlp_branch(x)


def _check_flag(value: object, name: str) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")


def _score_scale(update: torch.Tensor, alpha: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """``(alpha * s + 1) * update``: the path that carries gradients to the router.

    Written ``update + update * (alpha * s)``: the factor ``alpha * s + 1`` in 16 bits would
    round to 1.0 for ``alpha * s`` below ~4e-3 (bf16's spacing near 1 is 2^-7), a systematic
    error and a silent loss of the router's share. ``alpha * s`` keeps its own precision, and
    under autocast (``alpha`` in fp32) the result is fp32, the residual stream's dtype that
    [`Routes.scatter_add`][] casts the update to anyway.
    """
    return torch.addcmul(update, update, (alpha * scores).unsqueeze(-1))  # one kernel


class PerformanceBlock(nn.Module):
    """Performance (P) path: a vanilla-width block that updates only the selected tokens.

    Attention is semi-cross (queries: selected tokens, keys/values: all tokens); each
    sub-layer's output is scaled by ``(alpha * s_i + 1)`` with ``alpha`` initialised to 0.

    Ablation switches (the paper's Table 3; the defaults are the paper's model):

    * ``semi_cross=False``: the selected tokens attend only among themselves (keys and values
      gathered too), as in token pruning. Global attention only: refused with ``rel_pos_size``
      (SAM's windowed layers).
    * ``score_scaling=False``: no ``alpha`` parameters (``alpha_attn``/``alpha_mlp`` are None)
      and the updates are not scaled; for a parameter-free selector whose scores carry no
      gradient ([`ClsAttentionScorer`][]).

    ``forward(x, routes)`` is the P-only variant (no efficiency path): selected tokens get
    both residual updates, the others pass through unchanged. ``(B, N, C) -> (B, N, C)``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        rel_pos_size: tuple[int, int] | None = None,
        *,
        semi_cross: bool = True,
        score_scaling: bool = True,
    ) -> None:
        super().__init__()
        _check_flag(semi_cross, "semi_cross")
        _check_flag(score_scaling, "score_scaling")
        if not semi_cross and rel_pos_size is not None:
            raise ValueError(
                "semi_cross=False (selected tokens attend only among themselves) is implemented "
                "for global attention without relative positions; SAM's windowed layers "
                "(rel_pos_size) need semi_cross=True"
            )
        self.dim = dim
        self.semi_cross = semi_cross
        self.score_scaling = score_scaling
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SemiCrossAttention(dim, num_heads, qkv_bias=qkv_bias, rel_pos_size=rel_pos_size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        if score_scaling:
            self.alpha_attn = nn.Parameter(torch.zeros(()))
            self.alpha_mlp = nn.Parameter(torch.zeros(()))
        else:  # no parameter that would never get a gradient
            self.register_parameter("alpha_attn", None)
            self.register_parameter("alpha_mlp", None)
        self.drop_path = DropPath(drop_path)

    def _scale(self, update: torch.Tensor, alpha: torch.Tensor | None, routes: Routes) -> torch.Tensor:
        """``(alpha * s + 1) * update``, or ``update`` itself when built with score_scaling=False."""
        return update if alpha is None else _score_scale(update, alpha, routes.selected_scores)

    def attn_branch(self, x: torch.Tensor, routes: Routes, grid: WindowGrid | None = None) -> torch.Tensor:
        """Scaled semi-cross attention update of the selected tokens: ``(B, N, C) -> (B, K, C)``.

        With a windowed ``grid`` the routes must be per-window (window-major, same k per window).
        With ``semi_cross=False`` keys and values come from the selected tokens only.
        """
        if self.semi_cross:
            normed = self.norm1(x)
            update = self.attn(routes.gather(normed), normed, grid=grid, q_pos=routes.indices)
        else:
            if grid is not None:
                raise ValueError("semi_cross=False supports global attention only (grid must be None)")
            selected = self.norm1(routes.gather(x))  # LayerNorm is per token: gather first
            update = self.attn(selected, selected)
        return self.drop_path(self._scale(update, self.alpha_attn, routes))

    def mlp_branch(self, selected: torch.Tensor, routes: Routes) -> torch.Tensor:
        """Scaled FFN update of the already gathered selected tokens: ``(B, K, C) -> (B, K, C)``."""
        normed = self.norm2(selected)
        rows = normed.numel() // self.dim
        # W @ x^T reads the weights directly: only for plain ones (not a quantized tensor subclass)
        plain = type(self.mlp.fc1.weight) is nn.Parameter and type(self.mlp.fc2.weight) is nn.Parameter
        few = plain and runtime.transposed_mlp(rows, normed.device)
        update = self.mlp.forward_transposed(normed) if few else self.mlp(normed)
        return self.drop_path(self._scale(update, self.alpha_mlp, routes))

    def forward(
        self, x: torch.Tensor, routes: Routes | None = None, grid: WindowGrid | None = None
    ) -> torch.Tensor:
        routes = _need_routes(routes, self)
        check_last_dim(x, "x", self.dim)
        x = routes.scatter_add(x, self.attn_branch(x, routes, grid))
        return routes.scatter_add(x, self.mlp_branch(routes.gather(x), routes), inplace=True)


class GatedFuse(nn.Module):
    """Fuse one sub-layer's two updates into the residual stream.

    ``out = x + fused`` with ``fused_i = primary_i + gamma * secondary_i`` for selected tokens
    and ``fused_i = secondary_i`` for the others; ``gamma`` is learnable, initialised to 1e-5.

    Shapes: ``x (B, N, C)``, ``primary (B, K, C)``, ``secondary (B, N, C)`` -> ``(B, N, C)``.
    """

    def __init__(self, gamma_init: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.tensor(float(gamma_init)))

    def forward(
        self, x: torch.Tensor, primary: torch.Tensor, secondary: torch.Tensor, routes: Routes
    ) -> torch.Tensor:
        if secondary.shape != x.shape:
            raise ValueError(
                f"secondary must have the shape of x {tuple(x.shape)}, got {tuple(secondary.shape)}"
            )
        # x + secondary everywhere, then the selected rows get primary + (gamma - 1) * secondary:
        # one full-size add and one index_add instead of building a fused copy. The correction is
        # computed on the K gathered rows in the residual's dtype, at least fp32: in bf16/fp16,
        # gamma - 1 = -0.99999 rounds to -1.0 and the E path's share of the selected tokens
        # vanishes (and |primary - secondary| is rounded to 8 bits).
        dtype = torch.promote_types(x.dtype, torch.float32)
        gathered = routes.gather(secondary).to(dtype)
        correction = primary.to(dtype) + (self.gamma.to(dtype) - 1.0) * gathered
        return routes.scatter_add(x + secondary, correction, inplace=True)


class BigLittleBlock(nn.Module):
    """One big.LITTLE module: P path on the selected tokens, E path on all tokens, gated fusion
    per sub-layer (attention, then FFN), each with its own residual.

    Args:
        dim: width of the P path (the vanilla model's).
        num_heads: attention heads of the P path.
        little_dim: inner width of the E path.
        little_heads: attention heads of the E path.
        semi_cross: the P path's queries see all tokens (False: only the selected ones; see
            [`PerformanceBlock`][]).
        score_scaling: scale the P path's outputs by ``(alpha * s + 1)`` (an ablation switch).
        efficiency: your own E block instead of a [`DimMatchedBlock`][] (the size arguments
            ``little_dim``/``little_heads`` are then unused); it provides ``attn_branch(x, grid)``
            and ``mlp_branch(x)``, each ``(B, N, C) -> (B, N, C)``.

    Forward: ``x (B, N, C)``, ``routes`` -> ``(B, N, C)``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        little_dim: int,
        little_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        gamma_init: float = 1e-5,
        rel_pos_size: tuple[int, int] | None = None,
        *,
        semi_cross: bool = True,
        score_scaling: bool = True,
        efficiency: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.performance = PerformanceBlock(
            dim, num_heads, mlp_ratio, qkv_bias, drop_path, rel_pos_size,
            semi_cross=semi_cross, score_scaling=score_scaling,
        )
        if efficiency is None:
            efficiency = DimMatchedBlock(
                dim, little_dim, little_heads, mlp_ratio, qkv_bias, drop_path, rel_pos_size
            )
        elif not all(callable(getattr(efficiency, m, None)) for m in ("attn_branch", "mlp_branch")):
            raise TypeError(
                "efficiency must provide attn_branch(x, grid) and mlp_branch(x), got "
                f"{type(efficiency).__name__}"
            )
        self.efficiency = efficiency
        self.fuse_attn = GatedFuse(gamma_init)
        self.fuse_mlp = GatedFuse(gamma_init)

    def forward(
        self, x: torch.Tensor, routes: Routes | None = None, grid: WindowGrid | None = None
    ) -> torch.Tensor:
        routes = _need_routes(routes, self)
        check_last_dim(x, "x", self.dim)
        p, e = self.performance, self.efficiency
        x = self.fuse_attn(x, p.attn_branch(x, routes, grid), e.attn_branch(x, grid), routes)
        return self.fuse_mlp(x, p.mlp_branch(routes.gather(x), routes), e.mlp_branch(x), routes)
