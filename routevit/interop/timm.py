"""Load timm / official DeiT ViT checkpoints into a :class:`~routevit.models.vit.BigLittleViT`.

* :func:`load_timm_weights` fills the performance (P) path, patch embedding, CLS token,
  position embedding (resampled when the grid differs), final norm and head from a vanilla
  checkpoint. The layers the vanilla model lacks (E path, routers, alpha, gamma) stay fresh.
* :func:`load_little_weights` fills what fits of the efficiency (E) path from a smaller vanilla
  checkpoint whose width is the E path's inner width (e.g. DeiT-Ti for B+T). Only tensors that
  act on the inner width fit: per E block ``attn.qkv.bias``, ``mlp.fc1.{weight,bias}`` and
  ``mlp.fc2.{weight,bias}``. ``norm1``/``norm2``, ``attn.qkv.weight`` and ``attn.proj`` act on the
  trunk's width C, and ``mlp_in``/``mlp_out`` are new dimension-matching layers: they stay fresh.
  E block in layer ``i`` (0-based) of a ``depth``-layer model takes block
  ``i * little_depth // depth`` of the checkpoint (the same relative depth).
* :func:`big_little_from_timm` converts a timm ``VisionTransformer`` instance.

Both loaders are strict (see :mod:`routevit.interop.weights`): what the checkpoint should fill
and does not is an error unless ``allow_missing`` names it, e.g. ``allow_missing=("head.*",)``
for a checkpoint trained on another number of classes (the head then keeps its init). The
parts a vanilla checkpoint cannot have (E path, routers, alpha, gamma) are expected to stay
fresh and are reported as ``fresh``, not as an error. A state dict in routevit's own layout
(``encoder.blocks.*``: a bLViT checkpoint or run) is loaded by name, exactly.

timm itself is not imported here: checkpoints are plain state dicts, and the converter only reads
the instance's attributes. Architectures bLViT cannot represent (distilled DeiT, LayerScale, q/k
norm, no CLS token, register tokens, ...) are refused with a message, never silently dropped.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.schedule import Schedule
from ..models.registry import register_weights_loader
from ..models.vit import BigLittleViT, BigLittleViTConfig
from .weights import (
    LoadReport,
    Source,
    StateDict,
    check_patterns,
    copy_into,
    describe,
    finish_load,
    is_allowed,
    load_exact,
    read_state_dict,
)

log = logging.getLogger(__name__)



# Checkpoint keys of ViT features bLViT's blocks do not implement -> what they are.
_UNSUPPORTED = (
    (r"^neck\.\d|\.attn\.rel_pos_[hw]$", "a SAM image encoder (neck, relative positions), not a ViT "
     "classifier: load it into a SAM encoder model such as blvit_sam_b_t"),
    (r"^dist_token$|^head_dist\.", "a distilled DeiT (dist_token / head_dist); bLViT has one CLS "
     "token and one head: use the non-distilled deit_*_patch16_224 checkpoint"),
    (r"\.ls[12]\.gamma$", "LayerScale (blocks.*.ls1/ls2.gamma)"),
    (r"\.attn\.[qk]_norm\.", "q/k normalisation (blocks.*.attn.q_norm/k_norm)"),
    (r"\.attn\.norm\.", "a norm inside attention (blocks.*.attn.norm, timm's scale_attn_norm)"),
    (r"\.mlp\.norm\.", "a norm inside the MLP (blocks.*.mlp.norm, timm's scale_mlp_norm)"),
    (r"\.mlp\.fc1_[gx]\.|\.mlp\.w12\.", "a gated (SwiGLU) MLP"),
    (r"^reg_token$", "register tokens (reg_token)"),
    (r"^norm_pre\.", "a pre-trunk norm (norm_pre, CLIP-style)"),
    (r"^fc_norm\.", "average pooling with fc_norm instead of the CLS token"),
    (r"^patch_embed\.norm\.", "a norm in the patch embedding"),
    (r"^attn_pool\.", "attention pooling (attn_pool)"),
)


def check_supported(state: StateDict) -> None:
    """Raise ValueError when the checkpoint uses a ViT feature bLViT does not implement."""
    for pattern, what in _UNSUPPORTED:
        hits = sorted(k for k in state if re.search(pattern, k))
        if hits:
            raise ValueError(f"unsupported checkpoint: it has {what}; keys such as {hits[:3]}")
    if "pos_embed" in state and "cls_token" not in state:
        raise ValueError(
            "unsupported checkpoint: it has pos_embed but no cls_token (a model pooled without a "
            "CLS token); bLViT classifies from the CLS token, which is always routed"
        )
    if "pos_embed" in state:
        n = state["pos_embed"].shape[-2]
        if not _is_square(n - 1) and _is_square(n):
            raise ValueError(
                f"unsupported checkpoint: pos_embed has {n} positions, a square grid without the "
                "CLS position (timm's no_embed_class); bLViT adds a position to the CLS token"
            )


def _is_square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


def resample_pos_embed(
    pos_embed: torch.Tensor, grid: int, num_prefix_tokens: int = 1, antialias: bool = True
) -> torch.Tensor:
    """Resize a learned position embedding ``(1, P + g0*g0, C) -> (1, P + grid*grid, C)``.

    The ``P`` prefix (CLS) positions are kept; the grid part is resized bicubically in float32
    (with antialiasing, which matters only when shrinking), as timm does for a new image size.
    """
    if pos_embed.dim() != 3 or pos_embed.shape[0] != 1:
        raise ValueError(f"pos_embed must have shape (1, L, C), got {tuple(pos_embed.shape)}")
    prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    old = math.isqrt(patches.shape[1])
    if old * old != patches.shape[1]:
        raise ValueError(
            f"pos_embed has {patches.shape[1]} grid positions after {num_prefix_tokens} prefix "
            "token(s); expected a square grid"
        )
    if old == grid:
        return pos_embed
    dim = pos_embed.shape[2]
    image = patches.float().reshape(1, old, old, dim).permute(0, 3, 1, 2)
    image = F.interpolate(image, size=(grid, grid), mode="bicubic", align_corners=False, antialias=antialias)
    patches = image.permute(0, 2, 3, 1).reshape(1, grid * grid, dim).to(pos_embed.dtype)
    return torch.cat([prefix, patches], dim=1)


def _timm_name(name: str, kinds: tuple[str, ...]) -> str | None:
    """The vanilla-ViT key of one of our parameter names; None for layers only bLViT has."""
    m = re.match(r"encoder\.blocks\.(\d+)\.(.*)$", name)
    if m is None:
        return None if name.startswith("encoder.") else name  # encoder.routers.*
    i, rest = int(m.group(1)), m.group(2)
    if kinds[i] == "big_little":
        if not rest.startswith("performance."):
            return None  # efficiency.*, fuse_*
        rest = rest[len("performance."):]
    if rest.startswith("alpha_"):
        return None
    return f"blocks.{i}.{rest}"


def _check_model(model: object) -> BigLittleViT:
    if not isinstance(model, BigLittleViT):
        raise TypeError(f"model must be a routevit BigLittleViT, got {type(model).__name__}")
    return model


def _finish(
    model: nn.Module, report: LoadReport, what: str, strict: bool, allow_missing: Sequence[str]
) -> LoadReport:
    finish_load(report, what, model, allow_missing=allow_missing, strict=strict)
    if report.ok:
        log.info("%s: %s", what, report.summary())
        return report
    message = f"{what}: {report.summary()}"  # strict=False: the caller asked for a partial load
    warnings.warn(message, stacklevel=3)
    log.warning(message)
    return report


def _is_routevit_layout(state: StateDict) -> bool:
    return any(k.startswith("encoder.blocks.") for k in state)


def load_timm_weights(
    model: BigLittleViT, source: Source, *, strict: bool = True, allow_missing: Sequence[str] = ()
) -> LoadReport:
    """Fill the P path, patch embedding, tokens, norm and head from a vanilla ViT/DeiT checkpoint.

    ``source``: a checkpoint file or a state dict (a routevit bLViT state dict is loaded by name
    instead, exactly). A shape mismatch raises ValueError naming the key and both shapes, except
    ``pos_embed`` (resampled to the model's grid). Model entries the checkpoint does not fill
    (a head trained for another number of classes counts as not filled) and checkpoint entries
    the model has no place for raise :class:`~routevit.interop.weights.CheckpointMismatchError`,
    except those ``allow_missing`` names (shell patterns on the model's names, e.g. ``"head.*"``),
    which keep their init; ``strict=False`` only warns (a partial load the caller asked for).
    """
    model = _check_model(model)
    allow = check_patterns(allow_missing)
    state = read_state_dict(source)
    if _is_routevit_layout(state):
        return load_exact(model, state, allow_missing=allow, strict=strict, what=describe(source))
    kinds = model.config.schedule.kinds
    own = model.state_dict()
    wanted = [n for n in own if _timm_name(n, kinds) is not None]
    if not {_timm_name(n, kinds) for n in wanted} & set(state):  # another model's file: say so first
        finish_load(LoadReport(missing=wanted, unexpected=sorted(state), layout="timm"),
                    describe(source, "timm "), model)  # fmt: skip
    check_supported(state)
    report = LoadReport(layout="timm")
    updates: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for name, target in own.items():
        key = _timm_name(name, kinds)
        if key is None:
            report.fresh.append(name)
            continue
        if key not in state:
            report.missing.append(name)
            continue
        used.add(key)
        tensor = state[key]
        if name == "pos_embed" and tensor.shape != target.shape and tensor.shape[-1] == target.shape[-1]:
            tensor = resample_pos_embed(tensor, model.config.grid_size)
            report.notes.append(
                f"pos_embed resampled from {tuple(state[key].shape)} to {tuple(tensor.shape)}"
            )
        elif name.startswith("head.") and _other_class_count(tensor, target):
            report.missing.append(name)  # fresh if allow_missing names it, else an error
            report.notes.append(
                f"{name} not loaded: the checkpoint has {tensor.shape[0]} classes, the model "
                f"{target.shape[0]}"
            )
            continue
        if tensor.shape != target.shape and is_allowed(name, allow):
            report.missing.append(name)
            shapes = f"checkpoint {tuple(tensor.shape)}, model {tuple(target.shape)}"
            report.notes.append(f"{name} not loaded: {shapes}")
            continue
        if tensor.shape != target.shape:
            raise ValueError(
                f"shape mismatch for {key!r} (model parameter {name!r}): checkpoint "
                f"{tuple(tensor.shape)}, model {tuple(target.shape)}"
            )
        updates[name] = tensor
        report.loaded.append(name)
    report.unexpected = sorted(set(state) - used)
    _finish(model, report, describe(source, "timm "), strict, allow)
    copy_into(model, updates)
    return report


def _other_class_count(tensor: torch.Tensor, target: torch.Tensor) -> bool:
    """True for a head tensor that differs from the model's only in the number of classes."""
    return tensor.shape != target.shape and tensor.shape[1:] == target.shape[1:]


def load_little_weights(
    model: BigLittleViT, source: Source, *, strict: bool = True, allow_missing: Sequence[str] = ()
) -> LoadReport:
    """Fill the E path's inner-width tensors from a vanilla checkpoint of width ``little_dim``.

    See the module docstring for which tensors fit. Checkpoint keys outside the blocks are not
    applicable and are not reported; block tensors that do not fit are not reported either.
    ``missing`` lists the fitting E tensors the checkpoint lacks: an error unless
    ``allow_missing`` names them (or ``strict=False``).
    """
    model = _check_model(model)
    allow = check_patterns(allow_missing)
    state = read_state_dict(source)
    check_supported({k: v for k, v in state.items() if k.startswith("blocks.")})
    cfg = model.config
    little_depth = len({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    if little_depth == 0:
        raise ValueError("the little checkpoint has no blocks.<i>.* keys; expected a vanilla ViT")
    width = state.get("blocks.0.mlp.fc1.weight")
    if width is not None and width.shape[1] != cfg.little_dim:
        raise ValueError(
            f"the little checkpoint has width {width.shape[1]} but the model's E path has "
            f"little_dim {cfg.little_dim}"
        )
    fitting = ("attn.qkv.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias")
    report = LoadReport(layout="timm")
    own = model.state_dict()
    updates: dict[str, torch.Tensor] = {}
    for i, kind in enumerate(cfg.schedule.kinds):
        if kind != "big_little":
            continue
        j = i * little_depth // cfg.depth
        for rest in fitting:
            name, key = f"encoder.blocks.{i}.efficiency.{rest}", f"blocks.{j}.{rest}"
            if name not in own:
                continue  # e.g. qkv_bias=False
            if key not in state:
                report.missing.append(name)
                continue
            if state[key].shape != own[name].shape:
                raise ValueError(
                    f"shape mismatch for {key!r} (model parameter {name!r}): checkpoint "
                    f"{tuple(state[key].shape)}, model {tuple(own[name].shape)}"
                )
            updates[name] = state[key]
            report.loaded.append(name)
    loaded = set(report.loaded)
    report.fresh = [n for n in own if ".efficiency." in n and n not in loaded and n not in report.missing]
    _finish(model, report, describe(source, "little "), strict, allow)
    copy_into(model, updates)
    return report


def _check_timm_vit(vit: nn.Module) -> None:
    """Refuse timm VisionTransformer variants whose computation bLViT's blocks do not reproduce."""
    name = type(vit).__name__
    for attr in ("patch_embed", "blocks", "norm", "head"):
        if not hasattr(vit, attr):
            raise TypeError(f"expected a timm VisionTransformer, got {name} without .{attr}")
    problems = []
    if getattr(vit, "cls_token", None) is None:
        problems.append("no CLS token (class_token=False)")
    if getattr(vit, "global_pool", "token") != "token":
        problems.append(f"global_pool={vit.global_pool!r} (bLViT pools the CLS token)")
    if getattr(vit, "dist_token", None) is not None:
        problems.append("a distillation token (distilled DeiT)")
    if getattr(vit, "no_embed_class", False):
        problems.append("no_embed_class=True")
    if getattr(vit, "dynamic_img_size", False):
        problems.append("dynamic_img_size=True")
    if getattr(vit, "pos_embed", None) is None:
        problems.append("no learned pos_embed")
    for i, block in enumerate(vit.blocks):
        if type(block).__name__ != "Block" or type(getattr(block, "attn", None)).__name__ != "Attention":
            problems.append(f"blocks[{i}] is {type(block).__name__}, not timm's plain Block/Attention")
            break
        mlp_act = getattr(block.mlp, "act", None)
        if not isinstance(mlp_act, nn.GELU) or mlp_act.approximate != "none":
            problems.append(f"blocks[{i}].mlp.act is {mlp_act!r}, bLViT uses exact nn.GELU()")
            break
    eps = sorted({m.eps for m in vit.modules() if isinstance(m, nn.LayerNorm)} - {1e-6})
    if eps:
        problems.append(f"LayerNorm eps {eps} (bLViT uses 1e-6)")
    if problems:
        raise ValueError(f"cannot convert this {name} to big.LITTLE: " + "; ".join(problems))
    check_supported(vit.state_dict())


def big_little_from_timm(
    vit: nn.Module,
    *,
    little_dim: int,
    little_heads: int,
    schedule: str | Schedule = "b_t",
    keep_ratio: float = 0.25,
    **overrides: Any,
) -> BigLittleViT:
    """Build the big.LITTLE model of a timm ``VisionTransformer`` and load its weights.

    The P path, embedding, norm and head take ``vit``'s weights; the E path (``little_dim``
    channels in ``little_heads`` heads), routers, alpha and gamma are fresh. ``schedule``:
    ``"b_t"`` / ``"h_b"`` (scaled to ``vit``'s depth) or a :class:`Schedule` of that depth.
    ``overrides`` go to :class:`BigLittleViTConfig` (e.g. ``drop_path_rate``).
    """
    _check_timm_vit(vit)
    pe = vit.patch_embed
    img, patch = tuple(pe.img_size), tuple(pe.patch_size)
    if img[0] != img[1] or patch[0] != patch[1]:
        raise ValueError(f"only square images and patches are supported, got img {img}, patch {patch}")
    attn = vit.blocks[0].attn
    fc1 = vit.blocks[0].mlp.fc1
    config = BigLittleViTConfig(
        img_size=img[0],
        patch_size=patch[0],
        in_chans=pe.proj.in_channels,
        num_classes=vit.num_classes,
        embed_dim=vit.embed_dim,
        depth=len(vit.blocks),
        num_heads=attn.num_heads,
        little_dim=little_dim,
        little_heads=little_heads,
        mlp_ratio=fc1.out_features / fc1.in_features,
        qkv_bias=attn.qkv.bias is not None,
        keep_ratio=keep_ratio,
        layout=schedule,
        **overrides,
    )
    model = BigLittleViT(config)
    param = next(vit.parameters())
    model.to(device=param.device, dtype=param.dtype)
    load_timm_weights(model, vit.state_dict())
    return model


register_weights_loader("classification", "pretrained", load_timm_weights)
register_weights_loader("classification", "little_pretrained", load_little_weights)
