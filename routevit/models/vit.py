"""BigLittleViT: the paper's classification models (DeiT recipes B+T, H+B and S+T).

Parameter names follow timm's ``VisionTransformer`` (``patch_embed.proj``, ``cls_token``,
``pos_embed``, ``norm``, ``head``; the trunk's blocks under ``encoder.blocks``) so that
[`routevit.interop.timm`][] can load DeiT checkpoints into the performance path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..layers._checks import check_keep_ratio, check_tensor
from ..layers.embed import PatchEmbed
from ..layers.encoder import BigLittleEncoder, BlockFn, check_selector, default_block_fn
from ..layers.routing import Routes
from ..layers.schedule import LAYOUTS, Schedule, b_t_schedule, h_b_schedule, schedule_for
from .registry import load_weights, register_model, save_pretrained

__all__ = [
    "LAYOUTS",
    "BigLittleViT",
    "BigLittleViTConfig",
    "b_t_schedule",
    "blvit_deit_b_t",
    "blvit_deit_h_b",
    "blvit_deit_s_t",
    "h_b_schedule",
    "schedule_for",
]

@dataclass(frozen=True)
class BigLittleViTConfig:
    """Architecture of a [`BigLittleViT`][]; defaults are the paper's B+T on 224px images.

    ``embed_dim``/``num_heads`` are the performance (vanilla) path, ``little_dim``/``little_heads``
    the efficiency path's inner width. ``layout`` names the schedule (``"b_t"`` or ``"h_b"``),
    built for ``depth`` layers, or is a [`Schedule`][] of ``depth`` layers.

    Ablation switches (the paper's Table 3; [`routevit.baselines.ablation.table3_config`][]
    sets them per row): ``selector`` is ``"router"`` (the paper's prediction layers) or
    ``"cls_attention"`` (parameter-free, Evo-ViT-style: the CLS token's attention in the next
    routed layer's P-block ranks the tokens; no routers, no score scaling); ``semi_cross=False``
    makes the P path attend only among the selected tokens.
    """

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    little_dim: int = 192
    little_heads: int = 3
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    layout: str | Schedule = "b_t"
    keep_ratio: float = 0.25
    drop_path_rate: float = 0.0
    gamma_init: float = 1e-5
    selector: str = "router"
    semi_cross: bool = True

    def __post_init__(self) -> None:
        for name in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads",
                     "little_dim", "little_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        n_cls = self.num_classes
        if isinstance(n_cls, bool) or not isinstance(n_cls, int) or n_cls < 0:
            raise ValueError(f"num_classes must be an int >= 0 (0: no head), got {self.num_classes!r}")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} must be a multiple of patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} must be divisible by num_heads {self.num_heads}")
        if self.little_dim % self.little_heads:
            raise ValueError(
                f"little_dim {self.little_dim} must be divisible by little_heads {self.little_heads}"
            )
        if not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        check_keep_ratio(self.keep_ratio)
        check_selector(self.selector)
        if not isinstance(self.semi_cross, bool):
            raise ValueError(f"semi_cross must be a bool, got {self.semi_cross!r}")
        schedule_for(self.layout, self.depth)  # validates layout and depth together

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        """Tokens in the trunk: the patches plus the CLS token."""
        return self.grid_size**2 + 1

    @property
    def schedule(self) -> Schedule:
        return schedule_for(self.layout, self.depth)


class BigLittleViT(nn.Module):
    """big.LITTLE ViT for classification with timm's interface.

    ``forward_features(x)``: ``(B, in_chans, H, W) -> (B, N, C)`` after the final norm, where
    ``N = 1 + (H / patch)^2`` (CLS first). ``forward_head(x)``: ``(B, N, C) -> (B, num_classes)``.
    The CLS token is always routed to the performance path. ``block_fn`` replaces the blocks
    the trunk builds (see [`routevit.layers.default_block_fn`][]), e.g. with your own E block.
    """

    def __init__(
        self, config: BigLittleViTConfig | None = None, block_fn: BlockFn = default_block_fn
    ) -> None:
        super().__init__()
        cfg = config or BigLittleViTConfig()
        if not isinstance(cfg, BigLittleViTConfig):
            raise TypeError(f"config must be a BigLittleViTConfig, got {type(cfg).__name__}")
        self.config = cfg
        self.num_classes = cfg.num_classes
        self.num_features = self.embed_dim = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, cfg.embed_dim)  # (B, N, C) tokens
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_tokens, cfg.embed_dim))
        self.encoder = BigLittleEncoder(
            cfg.embed_dim,
            cfg.num_heads,
            cfg.little_dim,
            cfg.little_heads,
            cfg.schedule,
            keep_ratio=cfg.keep_ratio,
            always_keep=(0,),
            mlp_ratio=cfg.mlp_ratio,
            qkv_bias=cfg.qkv_bias,
            drop_path_rate=cfg.drop_path_rate,
            gamma_init=cfg.gamma_init,
            selector=cfg.selector,
            semi_cross=cfg.semi_cross,
            cls_index=0,
            block_fn=block_fn,
        )
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes) if cfg.num_classes else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        # timm's ViT init, so a fresh model (and the layers that stay fresh after loading a
        # checkpoint: E path, routers) starts in the same regime as the vanilla model. timm's
        # trunc_normal_(std=0.02) cuts at +-2, i.e. 100 sigma: plain normal_ is the same
        # distribution and several times faster on ViT-H sized weights.
        nn.init.normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @property
    def keep_ratio(self) -> float:
        return self.encoder.keep_ratio

    def set_keep_ratio(self, keep_ratio: float) -> None:
        """Change the share of tokens that take the P path, at run time, without retraining."""
        self.encoder.set_keep_ratio(keep_ratio)
        self.config = replace(self.config, keep_ratio=self.encoder.keep_ratio)

    def no_weight_decay(self) -> set[str]:
        """Parameter names that should not get weight decay (timm's optimizer factory reads this)."""
        skip = {"pos_embed", "cls_token"}
        for name, _ in self.named_parameters():
            if name.rsplit(".", 1)[-1].startswith(("alpha", "gamma")):
                skip.add(name)
        return skip

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head with a fresh one for ``num_classes`` (0: no head)."""
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
        self.num_classes = num_classes
        self.config = replace(self.config, num_classes=num_classes)
        ref = self.cls_token
        if num_classes:
            head = nn.Linear(self.embed_dim, num_classes, device=ref.device, dtype=ref.dtype)
            nn.init.normal_(head.weight, std=0.02)
            nn.init.zeros_(head.bias)
            self.head = head
        else:
            self.head = nn.Identity()

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, H, W) -> (B, N, C)``: patches, CLS token, position embedding."""
        cfg = self.config
        check_tensor(x, "x", 4, "(B, C, H, W)")
        expected = (cfg.in_chans, cfg.img_size, cfg.img_size)
        if tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"x must have shape (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}; "
                "build the model with img_size=... for another resolution"
            )
        tokens = self.patch_embed(x)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1) + self.pos_embed

    def forward_features_with_routes(self, x: torch.Tensor) -> tuple[torch.Tensor, list[Routes]]:
        """Features ``(B, N, C)`` and the [`Routes`][] of every prediction layer, in order.

        Route indices count the CLS token as position 0; see [`route_masks`][].
        """
        x, routes = self.encoder.forward_routes(self._embed(x))
        return self.norm(x), routes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, H, W) -> (B, N, C)`` after the final norm."""
        return self.forward_features_with_routes(x)[0]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``(B, N, C) -> (B, num_classes)`` from the CLS token (``(B, C)`` with ``pre_logits``)."""
        check_tensor(x, "x", 3, "(B, N, C)")
        x = x[:, 0]
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, H, W) -> (B, num_classes)``."""
        return self.forward_head(self.forward_features(x))

    def save_pretrained(self, directory: str | PathLike[str], **info: Any) -> Path:
        """Write this model as a portable folder, ``model.safetensors`` + ``config.json``
        (architecture, keep ratio, class names, mean/std, routevit version), that
        ``routevit.create_model(directory)`` rebuilds; see [routevit.hub.save_pretrained][]."""
        return save_pretrained(self, directory, **info)

    def route_masks(self, routes: list[Routes]) -> torch.Tensor:
        """Which patches took the P path: ``(B, len(routes), H/p, W/p)`` bool, CLS dropped."""
        g = self.config.grid_size
        masks = [r.mask()[:, 1:].reshape(-1, g, g) for r in routes]
        return torch.stack(masks, dim=1)


def _build(
    name: str,
    defaults: BigLittleViTConfig,
    pretrained: str | PathLike[str] | None,
    little_pretrained: str | PathLike[str] | None,
    keep_ratio: float | None,
    overrides: dict[str, Any],
    allow_missing: Sequence[str] = (),
) -> BigLittleViT:
    valid = sorted(f.name for f in fields(BigLittleViTConfig) if f.name != "keep_ratio")
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise TypeError(f"{name}() got unknown override(s) {unknown}; valid overrides are {valid}")
    if keep_ratio is not None:
        overrides["keep_ratio"] = keep_ratio
    model = BigLittleViT(replace(defaults, **overrides))
    load_weights(
        model, "classification", allow_missing=allow_missing, pretrained=pretrained,
        little_pretrained=little_pretrained,
    )  # fmt: skip
    return model


# Paper defaults of each recipe; ``overrides`` in the factories replace fields of these.
B_T = BigLittleViTConfig()
H_B = BigLittleViTConfig(
    patch_size=14, embed_dim=1280, depth=32, num_heads=16, little_dim=768, little_heads=12, layout="h_b"
)
S_T = BigLittleViTConfig(embed_dim=384, num_heads=6, little_dim=96, little_heads=2)


_IMAGENET_224 = dict(task="classification", input_size=(3, 224, 224))


@register_model(**_IMAGENET_224, vanilla="deit_base_patch16_224", bench_baseline="deit_base_patch16_224")
def blvit_deit_b_t(
    pretrained: str | PathLike[str] | None = None,
    little_pretrained: str | PathLike[str] | None = None,
    keep_ratio: float | None = None,
    allow_missing: Sequence[str] = (),
    **overrides: Any,
) -> BigLittleViT:
    """B+T: P = ViT-B (768, 12 heads), E = ViT-T width (192, 3 heads); 12 layers, layer 1 full,
    prediction after layers 1, 4, 7, 10. ``pretrained``: a DeiT-B checkpoint file;
    ``little_pretrained``: a DeiT-Ti checkpoint file. Both load strictly (the E path, routers,
    alpha and gamma a vanilla file cannot have stay fresh); ``allow_missing``: shell patterns of
    parameters that may keep their init too, e.g. ``("head.*",)`` for a checkpoint of another
    number of classes (:func:`routevit.interop.timm.load_timm_weights`)."""
    return _build("blvit_deit_b_t", B_T, pretrained, little_pretrained, keep_ratio, overrides, allow_missing)


@register_model(**_IMAGENET_224, vanilla="vit_huge_patch14_224", bench_baseline="vit_huge_patch14_224")
def blvit_deit_h_b(
    pretrained: str | PathLike[str] | None = None,
    little_pretrained: str | PathLike[str] | None = None,
    keep_ratio: float | None = None,
    allow_missing: Sequence[str] = (),
    **overrides: Any,
) -> BigLittleViT:
    """H+B: P = ViT-H/14 (1280, 16 heads, 32 layers), E = ViT-B width (768, 12 heads); layers 1-9
    full, then big.LITTLE and P-only layers alternating (32 P-blocks, 12 E-blocks), prediction
    after layers 8, 16, 24. ``pretrained``: a ViT-H/14 checkpoint; ``little_pretrained``: ViT-B;
    ``allow_missing`` as in :func:`blvit_deit_b_t`."""
    return _build("blvit_deit_h_b", H_B, pretrained, little_pretrained, keep_ratio, overrides, allow_missing)


@register_model(**_IMAGENET_224, vanilla="deit_small_patch16_224", bench_baseline="deit_small_patch16_224")
def blvit_deit_s_t(
    pretrained: str | PathLike[str] | None = None,
    little_pretrained: str | PathLike[str] | None = None,
    keep_ratio: float | None = None,
    allow_missing: Sequence[str] = (),
    **overrides: Any,
) -> BigLittleViT:
    """S+T: P = ViT-S (384, 6 heads), E = width 96 with 2 heads, B+T layout.

    The E width is C/4 as in B+T (768 -> 192). 96 channels split into heads of 48, the closest
    to ViT's 64-channel heads that divides 96: three 32-channel heads would make the E path's
    attention even more bound by small-matrix overhead on CPU. No public vanilla model has width
    96, so ``little_pretrained`` only fits a checkpoint of that width. ``allow_missing`` as in
    :func:`blvit_deit_b_t`.
    """
    return _build("blvit_deit_s_t", S_T, pretrained, little_pretrained, keep_ratio, overrides, allow_missing)

