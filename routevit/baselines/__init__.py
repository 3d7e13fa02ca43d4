"""Token-reduction peers of bLViT in the same harness: EViT, ToMe and the paper's early prune.

Each ``patch_*`` function patches a vanilla timm ``VisionTransformer`` in place, in the spirit of
ToMe's ``tome.patch.timm(model)``, and returns it. The blocks keep their submodules and weights, so
``state_dict`` keys are those of timm and a timm checkpoint loads before or after patching.
:func:`token_counts` lists the tokens each block sees (for docs and MAC matching);
``routevit.flops.count`` counts a patched model on its reduced shapes.
"""

from ._common import LayerTokens, token_counts
from .early_prune import patch_early_prune
from .evit import patch_evit
from .tome import patch_tome

__all__ = ["LayerTokens", "patch_early_prune", "patch_evit", "patch_tome", "token_counts"]
