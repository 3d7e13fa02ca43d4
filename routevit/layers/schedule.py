"""Schedules: what each layer of a big.LITTLE trunk is, and where prediction layers route.

The schedule is data, so the paper's B+T and H+B layouts (and any user's own) are one object::

    Schedule.big_little_from(depth=12, first_routed=2, predict_after=(1, 4, 7, 10))  # B+T
    b_t_schedule(12)                                                                # the same

The named layouts (`LAYOUTS`) serve every model family: DeiT classifiers and SAM encoders
build their trunks from the same functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

LAYER_KINDS = ("full", "big_little", "performance")


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


# "<layout>_p_only": the same layout with every big.LITTLE layer P-only (no E path), the
# "early prune" row of the paper's Table 3.
LAYOUTS = ("b_t", "h_b", "b_t_p_only", "h_b_p_only")


def b_t_schedule(depth: int = 12) -> Schedule:
    """B+T: layer 1 full, then big.LITTLE; a prediction layer after layer 1 and every 3rd after.

    ``depth=12`` gives the paper's layout (prediction after layers 1, 4, 7, 10).
    """
    if depth < 2:
        raise ValueError(f"the B+T layout needs depth >= 2 (one full layer, then routed), got {depth}")
    return Schedule.big_little_from(depth, first_routed=2, predict_after=tuple(range(1, depth, 3)))


def h_b_schedule(depth: int = 32) -> Schedule:
    """H+B: full layers first, then big.LITTLE and P-only layers alternating.

    ``depth=32`` gives the paper's layout: layers 1-9 full, big.LITTLE in layers 10, 12, ..., 32,
    P-only in 11, 13, ..., 31, prediction after layers 8, 16, 24. Other depths keep the shape:
    about 9/32 of the layers full and prediction layers at 1/4, 2/4 and 3/4 of the depth.
    """
    if depth < 4:
        raise ValueError(f"the H+B layout needs depth >= 4 (three prediction layers), got {depth}")
    full = (9 * depth + 16) // 32  # round(9 * depth / 32), halves up
    predict_after = tuple(sorted({max(1, q * depth // 4) for q in (1, 2, 3)}))
    return Schedule.big_little_from(depth, full + 1, predict_after, alternate=True)


def schedule_for(layout: str | Schedule, depth: int) -> Schedule:
    """The named layout (one of `LAYOUTS`) at ``depth`` layers, or ``layout`` itself when
    it is a [`Schedule`][] of that depth. ``"b_t_p_only"`` / ``"h_b_p_only"`` are B+T / H+B
    with every big.LITTLE layer P-only ([`Schedule.performance_only`][])."""
    if isinstance(layout, Schedule):
        if layout.depth != depth:
            raise ValueError(f"the schedule has {layout.depth} layers but depth is {depth}")
        return layout
    if layout in ("b_t_p_only", "h_b_p_only"):
        return schedule_for(layout.removesuffix("_p_only"), depth).performance_only()
    if layout == "b_t":
        return b_t_schedule(depth)
    if layout == "h_b":
        return h_b_schedule(depth)
    raise ValueError(f"unknown layout {layout!r}; valid layouts are {LAYOUTS}")
