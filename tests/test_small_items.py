"""The smaller items of "trust every input": each one a behaviour a user can check."""

from __future__ import annotations

import torch

import routevit
from routevit.layers import Schedule

TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, little_dim=16, little_heads=1)
TINY_SAM = dict(
    img_size=64, window_size=2, depth=2, embed_dim=32, num_heads=2, global_attn_indexes=(1,), out_chans=16,
    little_dim=16, little_heads=1,
)


def test_an_empty_batch_gives_empty_outputs_like_timm() -> None:
    """timm returns ``(0, num_classes)`` for a batch of 0 images; so do the routed models."""
    vit = routevit.create_model("blvit_deit_s_t", num_classes=3, **TINY_VIT).eval()
    sam = routevit.create_model(
        "blvit_sam_b_t", schedule=Schedule(("full", "big_little"), (1,)), **TINY_SAM
    ).eval()
    with torch.no_grad():
        assert vit(torch.empty(0, 3, 32, 32)).shape == (0, 3)
        assert sam(torch.empty(0, 3, 64, 64)).shape == (0, 16, 4, 4)
