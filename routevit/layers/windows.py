"""Geometry of windowed attention on a token grid (ViTDet / SAM style).

A [`WindowGrid`][] describes an ``H x W`` grid of tokens stored in raster order as
``(B, N = H * W, C)`` and cut into non-overlapping ``window x window`` windows. The grid is
padded at the bottom and right to a multiple of the window, as ViTDet and SAM do; padded
slots hold zeros and exist only inside [`WindowGrid.partition`][]. ``window = 0`` means
global attention: one "window" holding the whole grid, no padding.

Windowed order ("slots") is window-major (windows in raster order over the window grid),
then row-major inside each window.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from ._checks import check_tensor


@dataclass(frozen=True)
class WindowGrid:
    """An ``height x width`` token grid attended in ``window x window`` windows (0: global)."""

    height: int
    width: int
    window: int = 0

    def __post_init__(self) -> None:
        for name in ("height", "width", "window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"WindowGrid.{name} must be an int, got {type(value).__name__}")
        if self.height < 1 or self.width < 1 or self.window < 0:
            raise ValueError(
                f"WindowGrid needs height, width >= 1 and window >= 0, got "
                f"({self.height}, {self.width}, {self.window})"
            )

    @property
    def is_global(self) -> bool:
        return self.window == 0

    @property
    def num_tokens(self) -> int:
        return self.height * self.width

    @property
    def window_hw(self) -> tuple[int, int]:
        """The grid one window's attention sees: ``(window, window)``, or ``(H, W)`` if global."""
        return (self.height, self.width) if self.is_global else (self.window, self.window)

    @property
    def padded_hw(self) -> tuple[int, int]:
        if self.is_global:
            return self.height, self.width
        ws = self.window
        return -(-self.height // ws) * ws, -(-self.width // ws) * ws

    @property
    def windows_hw(self) -> tuple[int, int]:
        """Number of windows along each axis."""
        (hp, wp), (wh, ww) = self.padded_hw, self.window_hw
        return hp // wh, wp // ww

    @property
    def num_windows(self) -> int:
        nh, nw = self.windows_hw
        return nh * nw

    @property
    def window_tokens(self) -> int:
        """Slots per window, padding included."""
        wh, ww = self.window_hw
        return wh * ww

    @property
    def has_padding(self) -> bool:
        return self.padded_hw != (self.height, self.width)

    def min_real_tokens(self) -> int:
        """Real (non-padding) tokens in the emptiest window: the bottom-right one."""
        wh, ww = self.window_hw
        last_h = self.height - (self.windows_hw[0] - 1) * wh
        last_w = self.width - (self.windows_hw[1] - 1) * ww
        return last_h * last_w

    def slot_to_token(self, device: torch.device | str | None = None) -> torch.Tensor:
        """``(num_windows * window_tokens,)`` int64: the raster index of the token in each
        slot, or ``num_tokens`` (one past the last token) for a padding slot."""
        hp, wp = self.padded_hw
        wh, ww = self.window_hw
        nh, nw = self.windows_hw
        rows = torch.arange(hp, device=device).view(nh, 1, wh, 1).expand(nh, nw, wh, ww)
        cols = torch.arange(wp, device=device).view(1, nw, 1, ww).expand(nh, nw, wh, ww)
        index = rows * self.width + cols
        index = index.masked_fill((rows >= self.height) | (cols >= self.width), self.num_tokens)
        return index.reshape(-1)

    def token_to_slot(self, device: torch.device | str | None = None) -> torch.Tensor:
        """``(num_tokens,)`` int64: the slot of each raster token (inverse of [`slot_to_token`][])."""
        token = torch.arange(self.num_tokens, device=device)
        if self.is_global:
            return token
        row, col, ws = token // self.width, token % self.width, self.window
        window = (row // ws) * self.windows_hw[1] + col // ws
        return window * self.window_tokens + self.local_position(token)

    def project_windows(
        self, x: torch.Tensor, project: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """``partition(project(x))``: ``(B, N, C) -> (B * num_windows, window_tokens, out)``.

        ``project`` is a per-token affine map ``(..., C) -> (..., out)`` (an ``nn.Linear``, or
        any replacement of one: quantized, pre-packed). Padding slots come out as
        ``project(0)`` (the bias), as when SAM pads the normed tokens with zeros before its
        qkv, but only the real tokens (and one zero token) are projected and the windows are
        laid out by a single gather instead of pad + transpose copies.
        """
        if not self.has_padding:
            return self.partition(project(x))
        check_tensor(x, "x", 3, "(B, N, C)")
        b, n, c = x.shape
        x = torch.cat([x, x.new_zeros(b, 1, c)], dim=1)  # slot index N reads this zero token
        out = project(x)
        slots = _maps(self, out.device)[0]
        return out.index_select(1, slots).view(b * self.num_windows, self.window_tokens, -1)

    def local_position(self, token: torch.Tensor) -> torch.Tensor:
        """Raster token indices -> row-major position inside their own window (same shape)."""
        if self.is_global:
            return token
        ws = self.window
        return (token // self.width % ws) * ws + token % self.width % ws

    def partition(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, C) -> (B * num_windows, window_tokens, C)``, zeros in the padding slots."""
        check_tensor(x, "x", 3, "(B, N, C)")
        b, n, c = x.shape
        if n != self.num_tokens:
            raise ValueError(
                f"x must hold the {self.height}x{self.width} = {self.num_tokens} grid tokens, "
                f"got shape {tuple(x.shape)}"
            )
        if self.is_global:
            return x
        (hp, wp), ws = self.padded_hw, self.window
        grid = x.view(b, self.height, self.width, c)
        if self.has_padding:
            grid = F.pad(grid, (0, 0, 0, wp - self.width, 0, hp - self.height))
        grid = grid.view(b, hp // ws, ws, wp // ws, ws, c).transpose(2, 3)
        return grid.reshape(b * self.num_windows, ws * ws, c)

    def unpartition(self, windows: torch.Tensor) -> torch.Tensor:
        """Inverse of [`partition`][], dropping the padding: ``(B * nW, T, C) -> (B, N, C)``."""
        check_tensor(windows, "windows", 3, "(B * num_windows, window_tokens, C)")
        bw, t, c = windows.shape
        if bw % self.num_windows != 0 or t != self.window_tokens:
            raise ValueError(
                f"windows must have shape (B * {self.num_windows}, {self.window_tokens}, C), "
                f"got {tuple(windows.shape)}"
            )
        if self.is_global:
            return windows
        (hp, wp), ws = self.padded_hw, self.window
        b = bw // self.num_windows
        if self.has_padding:  # one gather of the real slots, no transpose copy then crop
            tokens = _maps(self, windows.device)[1]
            return windows.view(b, -1, c).index_select(1, tokens)
        grid = windows.view(b, hp // ws, wp // ws, ws, ws, c).transpose(2, 3).reshape(b, hp, wp, c)
        if self.has_padding:
            grid = grid[:, : self.height, : self.width]
        return grid.reshape(b, self.num_tokens, c)


@lru_cache(maxsize=64)
def _maps(grid: WindowGrid, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(slot_to_token, token_to_slot) of a grid on a device, built once (they are constants)."""
    return grid.slot_to_token(device), grid.token_to_slot(device)
