"""Segment Anything image encoders with big.LITTLE layers and window-aware routing.

:class:`BigLittleSamEncoder` is SAM's ``ImageEncoderViT`` (patch 16, absolute position
embedding, windowed attention with global layers, decomposed relative positions, a
conv/LayerNorm neck to 256 channels) whose layers follow a :class:`Schedule`: ``(B, 3, S, S)
-> (B, 256, S / 16, S / 16)``, ``S = img_size`` (1024 for SAM).

Routing is per attention window: a prediction layer scores every token (softmax over the
image), and each window routes its own top-k tokens to the P path, the same k in every
window. Global layers use the same routes; their selected queries attend to all tokens.

Padding rule. SAM pads the token grid to a multiple of the window (64x64 -> 70x70 at 1024,
window 14), so the bottom/right windows hold fewer real tokens (the corner one 8x8 = 64).
``keep_ratio`` is the share of the image's real tokens routed to the P path, spread evenly:
``k = ceil(ceil(keep_ratio * N) / num_windows)`` per window (41 at 1024 and 0.25: 1025 of
4096 tokens, the paper's 25%). Padding slots are never selected, so k may not exceed the real
tokens of the emptiest window; :meth:`BigLittleSamEncoder.set_keep_ratio` raises a
``ValueError`` naming the largest legal ratio (0.390625 at 1024). Without padding (e.g. 448
with window 14) k is ``ceil(keep_ratio * window**2)`` and any ratio up to 1.0 is legal.

Selected indices (``Routes.indices``, raster positions in the ``H x W`` grid) are grouped by
window in window-major order, ascending inside each window.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..layers import (
    BigLittleBlock,
    Block,
    PerformanceBlock,
    Router,
    Routes,
    TopKDispatcher,
    WindowGrid,
    tokens_to_keep,
)
from ..layers._checks import check_keep_ratio, check_tensor
from ..layers.encoder import Schedule
from .registry import register_model

B_T_SCHEDULE = Schedule.big_little_from(depth=12, first_routed=2, predict_after=(1, 4, 7, 10))
H_B_SCHEDULE = Schedule.big_little_from(depth=32, first_routed=10, predict_after=(8, 16, 24), alternate=True)


@dataclass(frozen=True)
class SamEncoderConfig:
    """Architecture of a (big.LITTLE) SAM image encoder; defaults are SAM ViT-B with B+T."""

    img_size: int = 1024
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    out_chans: int = 256
    qkv_bias: bool = True
    use_abs_pos: bool = True
    use_rel_pos: bool = True
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    little_dim: int = 192
    little_heads: int = 3
    schedule: Schedule = field(default=B_T_SCHEDULE)
    keep_ratio: float = 0.25
    drop_path_rate: float = 0.0
    gamma_init: float = 1e-5

    def __post_init__(self) -> None:
        object.__setattr__(self, "global_attn_indexes", tuple(int(i) for i in self.global_attn_indexes))
        if self.img_size % self.patch_size != 0:
            raise ValueError(f"img_size {self.img_size} must be a multiple of patch_size {self.patch_size}")
        if not isinstance(self.schedule, Schedule):
            raise TypeError(f"schedule must be a routevit Schedule, got {type(self.schedule).__name__}")
        if self.schedule.depth != self.depth:
            raise ValueError(
                f"schedule has {self.schedule.depth} layers but depth={self.depth}; pass a matching "
                "schedule, e.g. schedule=Schedule.big_little_from(depth, first_routed, predict_after)"
            )
        bad = [i for i in self.global_attn_indexes if not 0 <= i < self.depth]
        if bad or len(set(self.global_attn_indexes)) != len(self.global_attn_indexes):
            raise ValueError(
                f"global_attn_indexes must be distinct 0-based layer indexes < depth={self.depth}, "
                f"got {self.global_attn_indexes}"
            )
        if self.window_size < 0:
            raise ValueError(f"window_size must be >= 0 (0: all layers global), got {self.window_size}")
        check_keep_ratio(self.keep_ratio)

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size


def sam_encoder_config(base: Mapping[str, Any], **overrides: Any) -> SamEncoderConfig:
    """A :class:`SamEncoderConfig` from ``base`` with ``overrides``; unknown keys are an error."""
    valid = {f.name for f in dataclasses.fields(SamEncoderConfig)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(f"unknown SAM encoder option(s) {unknown}; valid options are {sorted(valid)}")
    return SamEncoderConfig(**{**base, **overrides})


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of ``(B, C, H, W)`` maps (SAM's neck norm, eps 1e-6)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class PatchEmbed(nn.Module):
    """Non-overlapping patches: ``(B, C_in, S, S) -> (B, S/p, S/p, dim)`` (channels last)."""

    def __init__(self, patch_size: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class BigLittleSamEncoder(nn.Module):
    """SAM's image encoder with a big.LITTLE schedule: ``(B, 3, S, S) -> (B, 256, S/16, S/16)``.

    Args:
        config: the architecture (:class:`SamEncoderConfig`); keyword ``overrides`` replace
            its fields (``img_size``, ``depth``, ``embed_dim``, ``window_size``, ...).

    Parameter names follow segment_anything's ``ImageEncoderViT`` (``patch_embed.proj``,
    ``pos_embed``, ``blocks.i.attn.rel_pos_h``, ``neck.0`` ...), except ``mlp.lin1/lin2`` ->
    ``mlp.fc1/fc2`` and, in big.LITTLE layers, the vanilla block under ``blocks.i.performance``.
    """

    def __init__(self, config: SamEncoderConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        cfg = config or SamEncoderConfig()
        if overrides:
            cfg = sam_encoder_config(dataclasses.asdict(cfg) | {"schedule": cfg.schedule}, **overrides)
        self.config = cfg
        self.img_size = cfg.img_size  # read by segment_anything's Sam and SamPredictor
        g, dim = cfg.grid_size, cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, g, g, dim)) if cfg.use_abs_pos else None
        self.grids = tuple(
            WindowGrid(g, g, 0 if i in cfg.global_attn_indexes else cfg.window_size) for i in range(cfg.depth)
        )
        rates = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]  # as timm
        layers = zip(cfg.schedule.kinds, self.grids, rates, strict=True)
        self.blocks = nn.ModuleList(self._make_block(kind, grid, dp) for kind, grid, dp in layers)
        self.routers = nn.ModuleDict({str(p): Router(dim) for p in cfg.schedule.predict_after})
        self.route_grid = WindowGrid(g, g, cfg.window_size)
        self.dispatcher = TopKDispatcher(cfg.keep_ratio, group_size=self.route_grid.window_tokens)
        slots = self.route_grid.slot_to_token()
        self.register_buffer("slot_to_token", slots, persistent=False)
        self.register_buffer("slot_is_padding", slots == self.route_grid.num_tokens, persistent=False)
        self.neck = nn.Sequential(
            nn.Conv2d(dim, cfg.out_chans, kernel_size=1, bias=False),
            LayerNorm2d(cfg.out_chans),
            nn.Conv2d(cfg.out_chans, cfg.out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(cfg.out_chans),
        )
        self.tokens_per_window = 0
        self.set_keep_ratio(cfg.keep_ratio)

    def _make_block(self, kind: str, grid: WindowGrid, drop_path: float) -> nn.Module:
        cfg = self.config
        rel = grid.window_hw if cfg.use_rel_pos else None
        dim, heads, ratio, bias = cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias
        if kind == "full":
            return Block(dim, heads, ratio, bias, drop_path, rel_pos_size=rel)
        if kind == "performance":
            return PerformanceBlock(dim, heads, ratio, bias, drop_path, rel_pos_size=rel)
        return BigLittleBlock(
            dim, heads, cfg.little_dim, cfg.little_heads, ratio, bias, drop_path, cfg.gamma_init, rel
        )

    # --- keep ratio -------------------------------------------------------------------------

    @property
    def keep_ratio(self) -> float:
        return self.dispatcher.keep_ratio

    def max_keep_ratio(self) -> float:
        """The largest keep_ratio whose per-window k fits the emptiest window's real tokens."""
        grid = self.route_grid
        return min(1.0, grid.min_real_tokens() * grid.num_windows / grid.num_tokens)

    def window_k(self, keep_ratio: float) -> int:
        """Tokens routed per window at ``keep_ratio``: ``ceil(ceil(keep_ratio * N) / windows)``."""
        grid = self.route_grid
        return -(-tokens_to_keep(keep_ratio, grid.num_tokens) // grid.num_windows)

    def set_keep_ratio(self, keep_ratio: float) -> None:
        """Change the share of tokens routed to the P path (see the module's padding rule)."""
        keep_ratio = check_keep_ratio(keep_ratio)
        k, grid = self.window_k(keep_ratio), self.route_grid
        if k > grid.min_real_tokens():
            hp, wp = grid.padded_hw
            raise ValueError(
                f"keep_ratio={keep_ratio} needs k={k} tokens in every window, but at img_size "
                f"{self.img_size} the {grid.height}x{grid.width} token grid pads to {hp}x{wp} with "
                f"window {grid.window} and the emptiest window holds only {grid.min_real_tokens()} "
                f"real tokens (padding is never selected); the largest keep_ratio for this "
                f"geometry is {self.max_keep_ratio()}"
            )
        self.dispatcher.set_keep_ratio(keep_ratio)
        self.tokens_per_window = k

    # --- forward ----------------------------------------------------------------------------

    def route(self, x: torch.Tensor, router: nn.Module) -> Routes:
        """Per-window routing of the tokens ``x`` ``(B, N, C)``: Routes with ``(B, nW * k)``
        raster indices (window-major, ascending in each window) and ``(B, N)`` scores."""
        scores = router(x)
        with_pad = torch.cat([scores, scores.new_zeros(scores.shape[0], 1)], dim=1)
        slots = with_pad.index_select(1, self.slot_to_token)  # (B, nW * T), padding slots = 0
        in_windows = self.dispatcher(
            slots, self.slot_is_padding, k=self.tokens_per_window, check_eligible=False
        )  # set_keep_ratio proved that every window has k real tokens
        return Routes(self.slot_to_token[in_windows.indices], scores)

    def forward_routes(self, x: torch.Tensor) -> tuple[torch.Tensor, list[Routes]]:
        """Like :meth:`forward`, also returning the Routes of every prediction layer in order."""
        cfg = self.config
        check_tensor(x, "x", 4, "(B, C, H, W)")
        expected = (cfg.in_chans, self.img_size, self.img_size)
        if tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"x must have shape (B, {cfg.in_chans}, {self.img_size}, {self.img_size}) (SAM resizes "
                f"and pads images to img_size), got {tuple(x.shape)}"
            )
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        b, h, w, c = x.shape
        x = x.reshape(b, h * w, c).contiguous()  # the conv's permuted strides would follow x along
        routes: Routes | None = None
        all_routes: list[Routes] = []
        layers = zip(cfg.schedule.kinds, self.blocks, self.grids, strict=True)
        for layer, (kind, block, grid) in enumerate(layers, start=1):
            x = block(x, grid) if kind == "full" else block(x, routes, grid)
            if str(layer) in self.routers:
                routes = self.route(x, self.routers[str(layer)])
                all_routes.append(routes)
        return self.neck(x.view(b, h, w, c).permute(0, 3, 1, 2)), all_routes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_routes(x)[0]

    def extra_repr(self) -> str:
        return (
            f"img_size={self.img_size}, keep_ratio={self.keep_ratio}, "
            f"tokens_per_window={self.tokens_per_window}"
        )


# --- registered models --------------------------------------------------------------------

_VIT_B: dict[str, Any] = dict(
    embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11), little_dim=192, little_heads=3
)
_VIT_H: dict[str, Any] = dict(
    embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31), little_dim=768,
    little_heads=12,
)
CONFIGS: dict[str, dict[str, Any]] = {
    "blvit_sam_b_t": {**_VIT_B, "schedule": B_T_SCHEDULE},
    "blvit_sam_h_b": {**_VIT_H, "schedule": H_B_SCHEDULE},
    "sam_vit_b": _VIT_B,  # vanilla: the schedule is all full layers, whatever the depth
    "sam_vit_h": _VIT_H,
}


def _build(name: str, pretrained: str | Path | None, overrides: dict[str, Any]) -> BigLittleSamEncoder:
    base = CONFIGS[name]
    if "schedule" not in base:
        depth = overrides.get("depth", base["depth"])
        base = {**base, "schedule": Schedule(("full",) * depth, ())}
    model = BigLittleSamEncoder(sam_encoder_config(base, **overrides))
    if pretrained is not None:
        from ..interop.sam import load_sam_encoder

        load_sam_encoder(model, pretrained)
    return model


@register_model
def blvit_sam_b_t(pretrained: str | Path | None = None, **overrides: Any) -> BigLittleSamEncoder:
    """SAM ViT-B as B+T: layer 1 full, layers 2-12 big.LITTLE (E: 192 wide, 3 heads)."""
    return _build("blvit_sam_b_t", pretrained, overrides)


@register_model
def blvit_sam_h_b(pretrained: str | Path | None = None, **overrides: Any) -> BigLittleSamEncoder:
    """SAM ViT-H as H+B: layers 1-9 full, then big.LITTLE and P-only layers alternate (E: 768/12)."""
    return _build("blvit_sam_h_b", pretrained, overrides)


@register_model
def sam_vit_b(pretrained: str | Path | None = None, **overrides: Any) -> BigLittleSamEncoder:
    """SAM's vanilla ViT-B encoder on routevit's layers (no routing): a teacher and a baseline."""
    return _build("sam_vit_b", pretrained, overrides)


@register_model
def sam_vit_h(pretrained: str | Path | None = None, **overrides: Any) -> BigLittleSamEncoder:
    """SAM's vanilla ViT-H encoder on routevit's layers (no routing)."""
    return _build("sam_vit_h", pretrained, overrides)


def build_sam(name: str, checkpoint: str | Path | None = None, **overrides: Any) -> nn.Module:
    """A ``segment_anything.modeling.Sam`` whose image encoder is ``create_model(name)``; see
    :func:`routevit.interop.sam.build_sam` (needs the ``sam`` extra)."""
    from ..interop.sam import build_sam as _build_sam

    return _build_sam(name, checkpoint=checkpoint, **overrides)
