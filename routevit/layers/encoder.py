"""THE trunk of every bLViT: full, big.LITTLE and P-only layers driven by a [`Schedule`][],
with prediction layers, per-layer attention grids, a routing policy and a block factory.

Every model family builds on [`BigLittleEncoder`][]: the DeiT classifiers (global attention,
[`GlobalTopK`][] keeping the CLS token) and the SAM encoders
(windowed and global layers on a token grid, [`WindowTopK`][]).

Extension points:

* ``block_fn(kind, spec) -> nn.Module`` builds each layer (``kind`` from the schedule, ``spec`` a
  [`BlockSpec`][]); [`default_block_fn`][] gives routevit's blocks. Every block has the
  call signature ``forward(x, routes=None, grid=None)``.
* ``policy``: any [`RoutingPolicy`][].
* ``selector``: ``"router"`` (a [`Router`][] per prediction layer) or ``"cls_attention"``
  (one parameter-free [`ClsAttentionScorer`][]); both answer ``score(x, next_block)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ._checks import check_last_dim, check_tensor
from .blocks import BigLittleBlock, Block, PerformanceBlock
from .policies import GlobalTopK, RoutingPolicy
from .routing import ClsAttentionScorer, Router, Routes
from .schedule import LAYER_KINDS, Schedule
from .windows import WindowGrid

__all__ = [
    "LAYER_KINDS",
    "SELECTORS",
    "BigLittleEncoder",
    "BlockFn",
    "BlockSpec",
    "Schedule",
    "check_selector",
    "default_block_fn",
    "drop_path_rates",
]

SELECTORS = ("router", "cls_attention")


def check_selector(selector: object) -> str:
    """Raise a ValueError naming `SELECTORS` unless ``selector`` is one of them."""
    if not isinstance(selector, str) or selector not in SELECTORS:
        raise ValueError(f"unknown selector {selector!r}; valid selectors are {SELECTORS}")
    return selector


@dataclass(frozen=True)
class BlockSpec:
    """Everything a block factory needs to build the layer at ``index`` (0-based).

    ``rel_pos_size`` is the attention grid of SAM's relative positions (None: no relative
    positions); ``semi_cross`` and ``score_scaling`` are the P path's ablation switches.
    """

    index: int
    dim: int
    num_heads: int
    little_dim: int
    little_heads: int
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path: float = 0.0
    gamma_init: float = 1e-5
    rel_pos_size: tuple[int, int] | None = None
    semi_cross: bool = True
    score_scaling: bool = True


BlockFn = Callable[[str, BlockSpec], nn.Module]


def default_block_fn(kind: str, spec: BlockSpec) -> nn.Module:
    """routevit's block for a schedule ``kind``: [`Block`][], [`PerformanceBlock`][] or
    [`BigLittleBlock`][]."""
    common = (spec.dim, spec.num_heads, spec.mlp_ratio, spec.qkv_bias, spec.drop_path)
    p_args = {"semi_cross": spec.semi_cross, "score_scaling": spec.score_scaling}
    if kind == "full":
        return Block(*common, rel_pos_size=spec.rel_pos_size)
    if kind == "performance":
        return PerformanceBlock(*common, spec.rel_pos_size, **p_args)
    if kind == "big_little":
        return BigLittleBlock(
            spec.dim, spec.num_heads, spec.little_dim, spec.little_heads, spec.mlp_ratio, spec.qkv_bias,
            spec.drop_path, spec.gamma_init, spec.rel_pos_size, **p_args,
        )
    raise ValueError(f"unknown layer kind {kind!r}; valid kinds are {LAYER_KINDS}")


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """Stochastic depth per layer, increasing linearly from 0 to ``rate`` (as timm)."""
    return [rate * i / max(depth - 1, 1) for i in range(depth)]


class BigLittleEncoder(nn.Module):
    """The transformer trunk of a bLViT: ``(B, N, C) -> (B, N, C)`` (no final norm).

    Args:
        dim: the performance (vanilla) width.
        num_heads: attention heads of the performance path.
        little_dim: the efficiency path's inner width.
        little_heads: attention heads of the efficiency path.
        schedule: the layer layout and prediction layers.
        keep_ratio: share of tokens routed to the P path (for the default policy).
        always_keep: positions always routed (0 for a CLS token), for the default policy.
        drop_path_rate: stochastic depth, increasing linearly over the layers (as timm).
        selector: how a prediction layer scores tokens. ``"router"`` (the paper's prediction
            layer: a [`Router`][] per prediction layer, P outputs scaled by
            ``(alpha * s + 1)``) or ``"cls_attention"`` (parameter-free
            [`ClsAttentionScorer`][] with the norm1 and qkv weights of the P-block of the
            next routed layer; no routers, and the P-blocks are built without score scaling,
            so no gradient reaches the scores). ``"cls_attention"`` needs ``cls_index`` in
            ``always_keep``.
        semi_cross: False makes the P path attend only among the selected tokens.
        cls_index: position of the CLS token, read by the ``"cls_attention"`` selector.
        grids: one [`WindowGrid`][] per layer (windowed or global attention on a token
            grid), or None for a plain token sequence.
        rel_pos: give each layer SAM's relative position tables for its grid (needs ``grids``).
        policy: the routing policy; default [`GlobalTopK`][] (``keep_ratio``, ``always_keep``).
        block_fn: the block factory (see [`default_block_fn`][]).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        little_dim: int,
        little_heads: int,
        schedule: Schedule,
        keep_ratio: float = 0.25,
        always_keep: Sequence[int] = (),
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        gamma_init: float = 1e-5,
        selector: str = "router",
        semi_cross: bool = True,
        cls_index: int = 0,
        *,
        grids: Sequence[WindowGrid] | None = None,
        rel_pos: bool = False,
        policy: RoutingPolicy | None = None,
        block_fn: BlockFn = default_block_fn,
    ) -> None:
        super().__init__()
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a routevit Schedule, got {type(schedule).__name__}")
        self.dim = dim
        self.schedule = schedule
        self.selector = check_selector(selector)
        if not isinstance(semi_cross, bool):
            raise TypeError(f"semi_cross must be a bool, got {semi_cross!r}")
        self.semi_cross = semi_cross
        if grids is not None and len(grids) != schedule.depth:
            raise ValueError(f"grids must give one WindowGrid per layer ({schedule.depth}), got {len(grids)}")
        if rel_pos and grids is None:
            raise ValueError("rel_pos=True needs grids: relative positions live on a token grid")
        self.grids: tuple[WindowGrid | None, ...] = (
            tuple(grids) if grids is not None else (None,) * schedule.depth
        )
        self.policy = policy if policy is not None else GlobalTopK(keep_ratio, always_keep)
        rates = drop_path_rates(drop_path_rate, schedule.depth)
        blocks = []
        for i, (kind, grid) in enumerate(zip(schedule.kinds, self.grids, strict=True)):
            spec = BlockSpec(
                i, dim, num_heads, little_dim, little_heads, mlp_ratio, qkv_bias, rates[i], gamma_init,
                rel_pos_size=grid.window_hw if rel_pos and grid is not None else None,
                semi_cross=semi_cross, score_scaling=selector == "router",  # CLS scores carry no gradient
            )
            blocks.append(block_fn(kind, spec))
        self.blocks = nn.ModuleList(blocks)
        # Empty with the cls_attention selector, so the state dict has no router keys at all.
        self.routers = nn.ModuleDict(
            {str(p): Router(dim) for p in schedule.predict_after} if selector == "router" else {}
        )
        self.scorer: ClsAttentionScorer | None = None
        self._next_routed: dict[int, int] = {}  # prediction layer -> 0-based index of the next routed layer
        for p in schedule.predict_after:
            routed = [i for i in range(p, schedule.depth) if schedule.kinds[i] != "full"]
            if routed:
                self._next_routed[p] = routed[0]
        if selector == "cls_attention":
            self.scorer = self._cls_attention_scorer(cls_index)

    def _cls_attention_scorer(self, cls_index: int) -> ClsAttentionScorer:
        always_keep = getattr(self.policy, "always_keep", ())
        if cls_index not in always_keep:
            raise ValueError(
                f"the cls_attention selector keeps the CLS token: cls_index {cls_index} must "
                f"be in always_keep {always_keep}"
            )
        for p in self.schedule.predict_after:
            if p not in self._next_routed:
                raise ValueError(
                    f"the cls_attention selector scores tokens with the next routed layer's "
                    f"attention, but no routed layer follows prediction layer {p} "
                    f"(kinds={self.schedule.kinds})"
                )
        return ClsAttentionScorer(cls_index)

    @property
    def keep_ratio(self) -> float:
        return self.policy.keep_ratio

    def max_keep_ratio(self) -> float:
        return self.policy.max_keep_ratio()

    def set_keep_ratio(self, keep_ratio: float) -> None:
        """Change the share of tokens routed to the P path, at run time, without retraining.
        A trunk without prediction layers (an unrouted model such as ``sam_vit_b``) routes no
        tokens and refuses: the ratio would be reported and not used."""
        if not self.schedule.predict_after:
            raise ValueError(
                f"set_keep_ratio({keep_ratio!r}) needs a routed model, got one whose schedule has no "
                "prediction layers (an unrouted encoder such as sam_vit_b): every token takes every layer"
            )
        self.policy.set_keep_ratio(keep_ratio)

    def forward_routes(self, x: torch.Tensor) -> tuple[torch.Tensor, list[Routes]]:
        """Like `forward`, also returning the Routes of every prediction layer in order."""
        check_tensor(x, "x", 3, "(B, N, C)")
        check_last_dim(x, "x", self.dim)
        all_routes: list[Routes] = []
        routes: Routes | None = None
        for layer, (block, grid) in enumerate(zip(self.blocks, self.grids, strict=True), start=1):
            x = block(x, routes, grid)
            if layer in self.schedule.predict_after:
                routes = self.policy(self.scores(layer, x))
                all_routes.append(routes)
        return x, all_routes

    def scores(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """Token scores ``(B, N)`` of the prediction layer after ``layer`` (1-based) on ``x``."""
        scorer = self.scorer if self.scorer is not None else self.routers[str(layer)]
        following = self._next_routed.get(layer)
        return scorer.score(x, None if following is None else self.blocks[following])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_routes(x)[0]
