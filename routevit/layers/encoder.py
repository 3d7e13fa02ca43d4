"""A stack of full, big.LITTLE and P-only layers driven by a schedule, with prediction layers.

The schedule is data, so the paper's B+T and H+B layouts (and any user's own) are one object::

    Schedule.big_little_from(depth=12, first_routed=2, predict_after=(1, 4, 7, 10))  # B+T
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ._checks import check_last_dim, check_tensor
from .blocks import BigLittleBlock, Block, PerformanceBlock
from .routing import ClsAttentionScorer, Router, Routes, TopKDispatcher

LAYER_KINDS = ("full", "big_little", "performance")
SELECTORS = ("router", "cls_attention")


def check_selector(selector: object) -> str:
    """Raise a ValueError naming :data:`SELECTORS` unless ``selector`` is one of them."""
    if not isinstance(selector, str) or selector not in SELECTORS:
        raise ValueError(f"unknown selector {selector!r}; valid selectors are {SELECTORS}")
    return selector


@dataclass(frozen=True)
class Schedule:
    """What each layer is, and after which layers (1-based) a prediction layer routes tokens.

    ``kinds[i]`` is ``"full"`` (vanilla block, all tokens), ``"big_little"`` (P + E + fusion) or
    ``"performance"`` (P path only; unselected tokens pass through).
    """

    kinds: tuple[str, ...]
    predict_after: tuple[int, ...]

    def __post_init__(self) -> None:
        unknown = sorted(set(self.kinds) - set(LAYER_KINDS))
        if unknown:
            raise ValueError(f"unknown layer kinds {unknown}; valid kinds are {LAYER_KINDS}")
        depth = len(self.kinds)
        if any(not 1 <= p <= depth for p in self.predict_after):
            raise ValueError(f"predict_after {self.predict_after} must lie in 1..{depth}")
        if list(self.predict_after) != sorted(set(self.predict_after)):
            raise ValueError(f"predict_after must be strictly increasing, got {self.predict_after}")
        first_routed = next((i + 1 for i, k in enumerate(self.kinds) if k != "full"), None)
        if first_routed is not None and (not self.predict_after or self.predict_after[0] >= first_routed):
            raise ValueError(
                f"layer {first_routed} is routed but no prediction layer comes before it "
                f"(predict_after={self.predict_after})"
            )

    @classmethod
    def big_little_from(
        cls, depth: int, first_routed: int, predict_after: Sequence[int], alternate: bool = False
    ) -> Schedule:
        """Full layers up to ``first_routed - 1``, then big.LITTLE layers; with ``alternate``,
        big.LITTLE and P-only layers take turns (H+B)."""
        kinds = ["full"] * (first_routed - 1)
        for i in range(depth - first_routed + 1):
            kinds.append("performance" if alternate and i % 2 else "big_little")
        return cls(tuple(kinds), tuple(predict_after))

    def performance_only(self) -> Schedule:
        """The same schedule with every big.LITTLE layer made P-only (no efficiency path): the
        "early prune" row of the paper's Table 3."""
        kinds = tuple("performance" if k == "big_little" else k for k in self.kinds)
        return Schedule(kinds, self.predict_after)

    @property
    def depth(self) -> int:
        return len(self.kinds)

    def count(self, kind: str) -> int:
        return self.kinds.count(kind)


class BigLittleEncoder(nn.Module):
    """The transformer trunk of a bLViT: ``(B, N, C) -> (B, N, C)`` (no final norm).

    Args:
        dim: the performance (vanilla) width.
        num_heads: attention heads of the performance path.
        little_dim: the efficiency path's inner width.
        little_heads: attention heads of the efficiency path.
        schedule: the layer layout and prediction layers.
        keep_ratio: share of tokens routed to the P path.
        always_keep: positions always routed (0 for a CLS token).
        drop_path_rate: stochastic depth, increasing linearly over the layers (as timm).
        selector: how a prediction layer scores tokens. ``"router"`` (the paper's prediction
            layer: a :class:`Router` per prediction layer, P outputs scaled by
            ``(alpha * s + 1)``) or ``"cls_attention"`` (parameter-free
            :class:`ClsAttentionScorer` with the norm1 and qkv weights of the P-block of the
            next routed layer; no routers, and the P-blocks are built without score scaling,
            so no gradient reaches the scores). ``"cls_attention"`` needs ``cls_index`` in
            ``always_keep``.
        semi_cross: False makes the P path attend only among the selected tokens.
        cls_index: position of the CLS token, read by the ``"cls_attention"`` selector.
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
    ) -> None:
        super().__init__()
        self.dim = dim
        self.schedule = schedule
        self.selector = check_selector(selector)
        if not isinstance(semi_cross, bool):
            raise TypeError(f"semi_cross must be a bool, got {semi_cross!r}")
        self.semi_cross = semi_cross
        self.dispatcher = TopKDispatcher(keep_ratio, always_keep)
        score_scaling = selector == "router"  # the CLS-attention scores carry no gradient
        p_args = {"semi_cross": semi_cross, "score_scaling": score_scaling}
        # on the CPU explicitly: under `with torch.device("meta")` a default-device tensor has no data
        rates = torch.linspace(0, drop_path_rate, schedule.depth, device="cpu").tolist()
        blocks: list[nn.Module] = []
        for kind, dp in zip(schedule.kinds, rates, strict=True):
            if kind == "full":
                blocks.append(Block(dim, num_heads, mlp_ratio, qkv_bias, dp))
            elif kind == "performance":
                blocks.append(PerformanceBlock(dim, num_heads, mlp_ratio, qkv_bias, dp, **p_args))
            else:
                blocks.append(
                    BigLittleBlock(
                        dim, num_heads, little_dim, little_heads, mlp_ratio, qkv_bias, dp, gamma_init,
                        **p_args,
                    )
                )
        self.blocks = nn.ModuleList(blocks)
        # Empty with the cls_attention selector, so the state dict has no router keys at all.
        self.routers = nn.ModuleDict(
            {str(p): Router(dim) for p in schedule.predict_after} if selector == "router" else {}
        )
        self.scorer: ClsAttentionScorer | None = None
        self._scored_by: dict[int, int] = {}  # prediction layer -> 0-based index of the P-block
        if selector == "cls_attention":
            if cls_index not in self.dispatcher.always_keep:
                raise ValueError(
                    f"the cls_attention selector keeps the CLS token: cls_index {cls_index} must "
                    f"be in always_keep {self.dispatcher.always_keep}"
                )
            self.scorer = ClsAttentionScorer(cls_index)
            for p in schedule.predict_after:
                routed = [i for i in range(p, schedule.depth) if schedule.kinds[i] != "full"]
                if not routed:
                    raise ValueError(
                        f"the cls_attention selector scores tokens with the next routed layer's "
                        f"attention, but no routed layer follows prediction layer {p} "
                        f"(kinds={schedule.kinds})"
                    )
                self._scored_by[p] = routed[0]

    @property
    def keep_ratio(self) -> float:
        return self.dispatcher.keep_ratio

    def set_keep_ratio(self, keep_ratio: float) -> None:
        """Change the share of tokens routed to the P path, at run time, without retraining."""
        self.dispatcher.set_keep_ratio(keep_ratio)

    def forward_routes(self, x: torch.Tensor) -> tuple[torch.Tensor, list[Routes]]:
        """Like :meth:`forward`, also returning the Routes of every prediction layer in order."""
        check_tensor(x, "x", 3, "(B, N, C)")
        check_last_dim(x, "x", self.dim)
        all_routes: list[Routes] = []
        routes: Routes | None = None
        for layer, (kind, block) in enumerate(zip(self.schedule.kinds, self.blocks, strict=True), start=1):
            x = block(x) if kind == "full" else block(x, routes)
            if layer in self.schedule.predict_after:
                routes = self.dispatcher(self.scores(layer, x))
                all_routes.append(routes)
        return x, all_routes

    def scores(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """Token scores ``(B, N)`` of the prediction layer after ``layer`` (1-based) on ``x``."""
        if self.scorer is None:
            return self.routers[str(layer)](x)
        block = self.blocks[self._scored_by[layer]]
        p_block = block.performance if isinstance(block, BigLittleBlock) else block
        return self.scorer(x, p_block.norm1, p_block.attn.qkv, p_block.attn.num_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_routes(x)[0]
