"""Token-reduction peers of bLViT in the same harness: EViT, ToMe, the paper's early prune, and
the architecture rows of the paper's Table 3 ablation.

Each ``patch_*`` function patches a vanilla timm ``VisionTransformer`` in place, in the spirit of
ToMe's ``tome.patch.timm(model)``, and returns it. The blocks keep their submodules and weights, so
``state_dict`` keys are those of timm and a timm checkpoint loads before or after patching.
`token_counts` lists the tokens each block sees (for docs and MAC matching);
``routevit.flops.count`` counts a patched model on its reduced shapes. [`patch`][] picks one
of them by name (what the trainer's ``model.token_reduction`` recipe key calls).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ._common import LayerTokens, token_counts
from .ablation import TABLE3_STEPS, table3_config, table3_overrides
from .early_prune import patch_early_prune
from .evit import patch_evit
from .tome import patch_tome

METHODS = {"evit": patch_evit, "tome": patch_tome, "early_prune": patch_early_prune}


def patch(model: nn.Module, method: str, **kwargs: Any) -> nn.Module:
    """``patch(vit, "evit", keep_rate=0.7, prune_layers=[2, 4])`` = ``patch_evit(vit, ...)``."""
    if method not in METHODS:
        raise ValueError(f"unknown token-reduction method {method!r}; valid methods are {sorted(METHODS)}")
    return METHODS[method](model, **kwargs)


__all__ = [
    "METHODS",
    "TABLE3_STEPS",
    "LayerTokens",
    "patch",
    "patch_early_prune",
    "patch_evit",
    "patch_tome",
    "table3_config",
    "table3_overrides",
    "token_counts",
]
