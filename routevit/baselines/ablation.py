"""The architecture rows of the paper's Table 3 (ablation on ImageNet classification).

Table 3 starts from Evo-ViT at a 75% prune ratio and adds one design choice per row::

    step            Early Prune  E-Block  Predictor  Semi-CA   paper GFLOPs (B+T)
    "early_prune"        x                                          5.4
    "e_block"            x          x                               7.9
    "predictor"          x          x         x                     8.0
    "semi_ca"            x          x         x         x           9.9   (= bLViT)

[`table3_config`][] maps a step onto a [`BigLittleViTConfig`][]:

* ``"early_prune"``: every big.LITTLE layer of ``base`` becomes P-only (no efficiency path:
  layout ``"<layout>_p_only"``, or [`Schedule.performance_only`][] for a custom schedule), so
  the unselected tokens pass through the routed layers unchanged, i.e. they are pruned from
  layer 2 on (earlier than Evo-ViT's first pruning layer, hence the row's name); tokens are
  ranked by the parameter-free Evo-ViT-style CLS attention (``selector="cls_attention"``: the
  CLS query's attention in the next routed layer's P-block, no routers, no score scaling) and
  the kept tokens attend only among themselves (``semi_cross=False``). Evo-ViT's slow-fast
  update of the pruned tokens is not reproduced: here they are left as they are.
* ``"e_block"``: ``base``'s own layout (big.LITTLE layers: the efficiency path updates every
  token, the gated fusion merges the two), still CLS-attention selection and no semi-cross.
* ``"predictor"``: the paper's prediction layers (``selector="router"``: ``Linear(C -> 1)``,
  softmax over tokens, P outputs scaled by ``(alpha * s + 1)``), still no semi-cross.
* ``"semi_ca"``: semi-cross attention (``semi_cross=True``): the P path's selected queries see
  the keys and values of all tokens. This is the paper's bLViT, ``base`` with the defaults.

The last two rows of the table ("+ Pretrain", "+ Feat. Dis.") are training choices on the
``"semi_ca"`` architecture: load the vanilla checkpoint into the P path
([`routevit.interop.timm.load_timm_weights`][], which works for every step: the CLS-attention
steps simply have no routers to leave fresh) and train with feature distillation
([`routevit.train.losses`][]).

Example::

    from routevit.baselines.ablation import table3_config
    from routevit.models.vit import BigLittleViT, S_T

    models = {step: BigLittleViT(table3_config(step, S_T)) for step in TABLE3_STEPS}

or through the factories: ``create_model("blvit_deit_b_t", **table3_overrides("early_prune"))``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..layers.encoder import Schedule
from ..models.vit import BigLittleViTConfig

TABLE3_STEPS = ("early_prune", "e_block", "predictor", "semi_ca")

# step -> (P-only layout, selector, semi_cross)
_STEPS: dict[str, tuple[bool, str, bool]] = {
    "early_prune": (True, "cls_attention", False),
    "e_block": (False, "cls_attention", False),
    "predictor": (False, "router", False),
    "semi_ca": (False, "router", True),
}


def _check_step(step: object) -> str:
    if not isinstance(step, str) or step not in _STEPS:
        raise ValueError(f"unknown Table 3 step {step!r}; valid steps are {TABLE3_STEPS}")
    return step


def _p_only_layout(layout: str | Schedule) -> str | Schedule:
    if isinstance(layout, Schedule):
        return layout.performance_only()
    return layout if layout.endswith("_p_only") else f"{layout}_p_only"


def table3_overrides(step: str, layout: str | Schedule = "b_t") -> dict[str, Any]:
    """The [`BigLittleViTConfig`][] fields of one Table 3 ``step`` for a model whose full
    (``"semi_ca"``) layout is ``layout``; pass them to ``create_model(name, **...)``.
    ``layout`` must be the model's own (``"b_t"`` for the B+T and S+T factories, ``"h_b"``
    for H+B)."""
    p_only, selector, semi_cross = _STEPS[_check_step(step)]
    return {
        "layout": _p_only_layout(layout) if p_only else layout,
        "selector": selector,
        "semi_cross": semi_cross,
    }


def table3_config(step: str, base: BigLittleViTConfig | None = None) -> BigLittleViTConfig:
    """The architecture of one row of the paper's Table 3, built on ``base`` (the full bLViT
    of that size; default: the paper's B+T). See the module docstring for the rows.

    Only ``layout``, ``selector`` and ``semi_cross`` change; every other field (sizes,
    keep_ratio, ...) is ``base``'s. ``base.layout`` must be the full model's layout (not P-only).
    """
    base = BigLittleViTConfig() if base is None else base
    if not isinstance(base, BigLittleViTConfig):
        raise TypeError(f"base must be a BigLittleViTConfig, got {type(base).__name__}")
    return replace(base, **table3_overrides(step, base.layout))
