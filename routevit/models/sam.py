"""Segment Anything image encoders with big.LITTLE layers and window-aware routing.

[`BigLittleSamEncoder`][] is SAM's ``ImageEncoderViT`` (patch 16, absolute position
embedding, windowed attention with global layers, decomposed relative positions, a
conv/LayerNorm neck to 256 channels) whose layers follow a [`Schedule`][]: ``(B, 3, S, S)
-> (B, 256, S / 16, S / 16)``, ``S = img_size`` (1024 for SAM).

Routing is per attention window: a prediction layer scores every token (softmax over the
image), and each window routes its own top-k tokens to the P path, the same k in every
window. Global layers use the same routes; their selected queries attend to all tokens.

Padding rule. SAM pads the token grid to a multiple of the window (64x64 -> 70x70 at 1024,
window 14), so the bottom/right windows hold fewer real tokens (the corner one 8x8 = 64).
``keep_ratio`` is the share of the image's real tokens routed to the P path, spread evenly:
``k = ceil(ceil(keep_ratio * N) / num_windows)`` per window (41 at 1024 and 0.25: 1025 of
4096 tokens, the paper's 25%). Padding slots are never selected, so k may not exceed the real
tokens of the emptiest window; [`BigLittleSamEncoder.set_keep_ratio`][] raises a
``ValueError`` naming the largest legal ratio (0.390625 at 1024). Without padding (e.g. 448
with window 14) k is ``ceil(keep_ratio * window**2)`` and any ratio up to 1.0 is legal.

Selected indices (``Routes.indices``, raster positions in the ``H x W`` grid) are grouped by
window in window-major order, ascending inside each window.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..layers._checks import check_keep_ratio, check_tensor
from ..layers.embed import PatchEmbed
from ..layers.encoder import BigLittleEncoder, BlockFn, default_block_fn
from ..layers.policies import WindowTopK
from ..layers.routing import Routes
from ..layers.schedule import Schedule, b_t_schedule, h_b_schedule
from ..layers.windows import WindowGrid
from .registry import load_weights, register_model, save_pretrained

B_T_SCHEDULE = b_t_schedule(12)
H_B_SCHEDULE = h_b_schedule(32)


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
    """A [`SamEncoderConfig`][] from ``base`` with ``overrides``; unknown keys are an error."""
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


class BigLittleSamEncoder(BigLittleEncoder):
    """SAM's image encoder with a big.LITTLE schedule: ``(B, 3, S, S) -> (B, 256, S/16, S/16)``.

    Patch embedding + the trunk ([`BigLittleEncoder`][], here with one
    [`WindowGrid`][] per layer, SAM's relative positions and the [`WindowTopK`][] policy) +
    SAM's neck. The trunk is the base class rather than a child module so that the parameter
    names stay segment_anything's.

    Args:
        config: the architecture ([`SamEncoderConfig`][]); keyword ``overrides`` replace
            its fields (``img_size``, ``depth``, ``embed_dim``, ``window_size``, ...).
        block_fn: the trunk's block factory (see [`routevit.layers.default_block_fn`][]).

    Parameter names follow segment_anything's ``ImageEncoderViT`` (``patch_embed.proj``,
    ``pos_embed``, ``blocks.i.attn.rel_pos_h``, ``neck.0`` ...), except ``mlp.lin1/lin2`` ->
    ``mlp.fc1/fc2`` and, in big.LITTLE layers, the vanilla block under ``blocks.i.performance``.
    """

    def __init__(
        self, config: SamEncoderConfig | None = None, block_fn: BlockFn = default_block_fn, **overrides: Any
    ) -> None:
        cfg = config or SamEncoderConfig()
        if overrides:
            cfg = sam_encoder_config(dataclasses.asdict(cfg) | {"schedule": cfg.schedule}, **overrides)
        g, dim = cfg.grid_size, cfg.embed_dim
        # built before the trunk so that a seeded init draws the weights in SAM's module order
        patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, dim, grid=True)
        super().__init__(
            dim, cfg.num_heads, cfg.little_dim, cfg.little_heads, cfg.schedule,
            mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias, drop_path_rate=cfg.drop_path_rate,
            gamma_init=cfg.gamma_init,
            grids=[WindowGrid(g, g, 0 if i in cfg.global_attn_indexes else cfg.window_size)
                   for i in range(cfg.depth)],
            rel_pos=cfg.use_rel_pos,
            policy=WindowTopK(WindowGrid(g, g, cfg.window_size), cfg.keep_ratio),
            block_fn=block_fn,
        )
        self.config = cfg
        self.img_size = cfg.img_size  # read by segment_anything's Sam and SamPredictor
        self.patch_embed = patch_embed
        self.pos_embed = nn.Parameter(torch.zeros(1, g, g, dim)) if cfg.use_abs_pos else None
        self.neck = nn.Sequential(
            nn.Conv2d(dim, cfg.out_chans, kernel_size=1, bias=False),
            LayerNorm2d(cfg.out_chans),
            nn.Conv2d(cfg.out_chans, cfg.out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(cfg.out_chans),
        )

    # --- keep ratio (the policy's padding rule, see the module docstring) --------------------

    @property
    def route_grid(self) -> WindowGrid:
        """The windows routing happens in (the windowed layers' grid)."""
        return self.policy.grid

    @property
    def tokens_per_window(self) -> int:
        return self.policy.tokens_per_window

    def set_keep_ratio(self, keep_ratio: float) -> None:
        """Change the share of tokens routed to the P path (see the module's padding rule)."""
        super().set_keep_ratio(keep_ratio)
        self.config = dataclasses.replace(self.config, keep_ratio=self.keep_ratio)

    # --- forward ----------------------------------------------------------------------------

    def forward_routes(self, x: torch.Tensor) -> tuple[torch.Tensor, list[Routes]]:
        """Like `forward`, also returning the Routes of every prediction layer in order."""
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
        x, routes = super().forward_routes(x)
        return self.neck(x.view(b, h, w, c).permute(0, 3, 1, 2)), routes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_routes(x)[0]

    def save_pretrained(self, directory: str | Path, **info: Any) -> Path:
        """Write this encoder as a portable folder, ``model.safetensors`` + ``config.json``, that
        ``routevit.create_model(directory)`` rebuilds; see [routevit.hub.save_pretrained][]."""
        return save_pretrained(self, directory, **info)

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


def _build(
    name: str, pretrained: str | Path | None, overrides: dict[str, Any], allow_missing: Sequence[str] = ()
) -> BigLittleSamEncoder:
    base = CONFIGS[name]
    if "schedule" not in base:
        if overrides.get("keep_ratio") is not None:
            raise ValueError(
                f"{name} routes no tokens (no prediction layers), so keep_ratio does not apply; got "
                f"keep_ratio={overrides['keep_ratio']!r}"
            )
        depth = overrides.get("depth", base["depth"])
        base = {**base, "schedule": Schedule(("full",) * depth, ())}
    model = BigLittleSamEncoder(sam_encoder_config(base, **overrides))
    load_weights(model, "sam", allow_missing=allow_missing, pretrained=pretrained)
    return model


# mean/std: ImageNet's, as SAM; the whole image is resized (SAM's longest side), no classifier
_SAM_1024 = dict(task="sam", input_size=(3, 1024, 1024), crop_pct=1.0, classifier=None)
_TIMM_SAM_B = "samvit_base_patch16"
_TIMM_SAM_H = "samvit_huge_patch16"


@register_model(**_SAM_1024, vanilla="sam_vit_b", bench_baseline=_TIMM_SAM_B)
def blvit_sam_b_t(
    pretrained: str | Path | None = None, allow_missing: Sequence[str] = (), **overrides: Any
) -> BigLittleSamEncoder:
    """SAM ViT-B as B+T: layer 1 full, layers 2-12 big.LITTLE (E: 192 wide, 3 heads)."""
    return _build("blvit_sam_b_t", pretrained, overrides, allow_missing)


@register_model(**_SAM_1024, vanilla="sam_vit_h", bench_baseline=_TIMM_SAM_H)
def blvit_sam_h_b(
    pretrained: str | Path | None = None, allow_missing: Sequence[str] = (), **overrides: Any
) -> BigLittleSamEncoder:
    """SAM ViT-H as H+B: layers 1-9 full, then big.LITTLE and P-only layers alternate (E: 768/12)."""
    return _build("blvit_sam_h_b", pretrained, overrides, allow_missing)


@register_model(**_SAM_1024)
def sam_vit_b(
    pretrained: str | Path | None = None, allow_missing: Sequence[str] = (), **overrides: Any
) -> BigLittleSamEncoder:
    """SAM's vanilla ViT-B encoder on routevit's layers (no routing): a teacher and a baseline."""
    return _build("sam_vit_b", pretrained, overrides, allow_missing)


@register_model(**_SAM_1024)
def sam_vit_h(
    pretrained: str | Path | None = None, allow_missing: Sequence[str] = (), **overrides: Any
) -> BigLittleSamEncoder:
    """SAM's vanilla ViT-H encoder on routevit's layers (no routing)."""
    return _build("sam_vit_h", pretrained, overrides, allow_missing)
