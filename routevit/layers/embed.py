"""Patch embedding shared by every model family."""

from __future__ import annotations

import torch
from torch import nn


class PatchEmbed(nn.Module):
    """Non-overlapping patches by a strided Conv2d (timm's and SAM's ``patch_embed.proj``).

    ``(B, in_chans, H, W) -> (B, H/p * W/p, dim)`` raster tokens, or ``(B, H/p, W/p, dim)`` with
    ``grid=True`` (SAM adds its ``(1, H/p, W/p, dim)`` position embedding on the grid).
    """

    def __init__(self, patch_size: int, in_chans: int, dim: int, grid: bool = False) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        self.grid = grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        return x.permute(0, 2, 3, 1) if self.grid else x.flatten(2).transpose(1, 2)

    def extra_repr(self) -> str:
        return f"grid={self.grid}"
