"""Routing policies: how a trunk turns a prediction layer's token scores into [`Routes`][].

A policy owns the keep ratio and every rule of *which* tokens may be chosen; the trunk calls
``policy(scores)`` after each prediction layer and hands the Routes to the blocks.

* [`GlobalTopK`][]: the top ``k = ceil(keep_ratio * N)`` tokens of the whole sequence, some
  positions (a CLS token) always kept. The DeiT classifiers use it.
* [`WindowTopK`][]: the same k in every attention window of a [`WindowGrid`][], padding
  slots never chosen (SAM). ``keep_ratio`` is the share of the image's real tokens, spread
  evenly: ``k = ceil(ceil(keep_ratio * N) / num_windows)``; k may not exceed the real tokens of
  the emptiest window, so `WindowTopK.set_keep_ratio` refuses larger ratios, naming the
  largest legal one.

Both return indices sorted ascending (per window for [`WindowTopK`][], window-major).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import torch
from torch import nn

from ._checks import check_keep_ratio, check_tensor
from .routing import Routes, TopKDispatcher, tokens_to_keep
from .windows import WindowGrid


class RoutingPolicy(nn.Module, abc.ABC):
    """Interface of a routing policy: ``forward(scores (B, N)) -> Routes`` plus the keep-ratio dial.

    An abstract base class: a subclass that leaves one of the abstract members out cannot be built.
    """

    @property
    @abc.abstractmethod
    def keep_ratio(self) -> float:
        """The share of tokens routed to the P path."""

    @abc.abstractmethod
    def set_keep_ratio(self, keep_ratio: float) -> None:
        """Change the keep ratio (a ValueError names the largest legal one when it is too large)."""

    def max_keep_ratio(self) -> float:
        """The largest keep ratio this policy accepts."""
        return 1.0

    @abc.abstractmethod
    def forward(self, scores: torch.Tensor) -> Routes:
        """``(B, N)`` token scores -> the Routes of this prediction layer."""


class GlobalTopK(RoutingPolicy):
    """Top ``ceil(keep_ratio * N)`` tokens of each sample; ``always_keep`` positions included."""

    def __init__(self, keep_ratio: float = 0.25, always_keep: Sequence[int] = ()) -> None:
        super().__init__()
        self.dispatcher = TopKDispatcher(keep_ratio, always_keep)

    @property
    def keep_ratio(self) -> float:
        return self.dispatcher.keep_ratio

    @property
    def always_keep(self) -> tuple[int, ...]:
        return self.dispatcher.always_keep

    def set_keep_ratio(self, keep_ratio: float) -> None:
        self.dispatcher.set_keep_ratio(keep_ratio)

    def forward(self, scores: torch.Tensor) -> Routes:
        return self.dispatcher(scores)


class WindowTopK(RoutingPolicy):
    """The same k tokens in every window of ``grid``; padding slots are never selected.

    Forward: ``scores (B, N)`` over the grid's raster tokens -> Routes with ``(B, nW * k)`` raster
    indices (window-major, ascending inside each window) and the ``(B, N)`` scores.
    """

    def __init__(self, grid: WindowGrid, keep_ratio: float = 0.25) -> None:
        super().__init__()
        if not isinstance(grid, WindowGrid):
            raise TypeError(f"grid must be a WindowGrid, got {type(grid).__name__}")
        self.grid = grid
        self.dispatcher = TopKDispatcher(keep_ratio, group_size=grid.window_tokens)
        slots = grid.slot_to_token()
        self.register_buffer("slot_to_token", slots, persistent=False)
        self.register_buffer("slot_is_padding", slots == grid.num_tokens, persistent=False)
        self.tokens_per_window = 0
        self.set_keep_ratio(keep_ratio)

    @property
    def keep_ratio(self) -> float:
        return self.dispatcher.keep_ratio

    def max_keep_ratio(self) -> float:
        """The largest keep_ratio whose per-window k fits the emptiest window's real tokens."""
        grid = self.grid
        return min(1.0, grid.min_real_tokens() * grid.num_windows / grid.num_tokens)

    def window_k(self, keep_ratio: float) -> int:
        """Tokens routed per window at ``keep_ratio``: ``ceil(ceil(keep_ratio * N) / windows)``."""
        grid = self.grid
        return -(-tokens_to_keep(keep_ratio, grid.num_tokens) // grid.num_windows)

    def set_keep_ratio(self, keep_ratio: float) -> None:
        keep_ratio = check_keep_ratio(keep_ratio)
        k, grid = self.window_k(keep_ratio), self.grid
        if k > grid.min_real_tokens():
            hp, wp = grid.padded_hw
            raise ValueError(
                f"keep_ratio={keep_ratio} needs k={k} tokens in every window, but the "
                f"{grid.height}x{grid.width} token grid pads to {hp}x{wp} with window {grid.window} "
                f"and the emptiest window holds only {grid.min_real_tokens()} real tokens (padding "
                f"is never selected); the largest keep_ratio for this geometry is {self.max_keep_ratio()}"
            )
        self.dispatcher.set_keep_ratio(keep_ratio)
        self.tokens_per_window = k

    def forward(self, scores: torch.Tensor) -> Routes:
        check_tensor(scores, "scores", 2, "(B, N)")
        with_pad = torch.cat([scores, scores.new_zeros(scores.shape[0], 1)], dim=1)
        slots = with_pad.index_select(1, self.slot_to_token)  # (B, nW * T), padding slots = 0
        in_windows = self.dispatcher(
            slots, self.slot_is_padding, k=self.tokens_per_window, check_eligible=False
        )  # set_keep_ratio proved that every window has k real tokens
        return Routes(self.slot_to_token[in_windows.indices], scores)

    def extra_repr(self) -> str:
        return f"keep_ratio={self.keep_ratio}, tokens_per_window={self.tokens_per_window}"
