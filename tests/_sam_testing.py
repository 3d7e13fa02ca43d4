"""Shared helpers for the SAM tests: random segment_anything encoders and routing checks."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn

from routevit.layers import Routes, WindowGrid


def sam_image_encoder(seed: int = 0, **kwargs: Any) -> nn.Module:
    """segment_anything's ImageEncoderViT (SAM's build settings) with random weights, including
    the relative-position tables and the position embedding that SAM initialises to zeros."""
    from segment_anything.modeling import ImageEncoderViT

    torch.manual_seed(seed)
    settings = dict(
        use_rel_pos=True, qkv_bias=True, mlp_ratio=4.0, norm_layer=partial(nn.LayerNorm, eps=1e-6)
    )
    encoder = ImageEncoderViT(**{**settings, **kwargs})
    with torch.no_grad():
        for name, p in encoder.named_parameters():
            if "rel_pos" in name or name == "pos_embed":
                p.normal_(0.0, 0.5)
            elif "norm" in name and name.endswith("weight"):
                p.normal_(1.0, 0.1)
    return encoder.eval()


def sam_kwargs(**overrides: Any) -> dict[str, Any]:
    """The ImageEncoderViT arguments matching routevit overrides (same names where they exist)."""
    keys = ("img_size", "embed_dim", "depth", "num_heads", "global_attn_indexes", "window_size", "out_chans")
    return {k: v for k, v in overrides.items() if k in keys}


def window_of(index: torch.Tensor, grid: WindowGrid) -> torch.Tensor:
    ws = grid.window
    return (index // grid.width // ws) * grid.windows_hw[1] + index % grid.width // ws


def check_window_routes(routes: Routes, grid: WindowGrid, k: int) -> None:
    """Per-window routing invariants: k tokens in every window, window-major, ascending and
    unique inside each window, real tokens only."""
    batch = routes.batch_size
    assert routes.indices.shape == (batch, grid.num_windows * k)
    idx = routes.indices.view(batch, grid.num_windows, k)
    assert (idx >= 0).all() and (idx < grid.num_tokens).all(), "padding slots are never selected"
    expected = torch.arange(grid.num_windows).view(1, -1, 1).expand_as(idx)
    assert torch.equal(window_of(idx, grid), expected), "k per window, grouped window-major"
    assert (idx[..., 1:] > idx[..., :-1]).all(), "ascending and unique inside each window"
