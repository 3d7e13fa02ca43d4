"""Segment Anything interop: load SAM checkpoints into routevit's SAM encoders, assemble a
``segment_anything`` ``Sam`` around them, and build same-weight vanilla encoders to compare with.

segment_anything (the ``sam`` extra) and timm are imported only inside the functions that
need them; loading checkpoints needs neither.

Key mapping from a SAM checkpoint (``image_encoder.*`` of ``sam_vit_b_01ec64.pth``, or a bare
encoder state dict): ``mlp.lin1/lin2 -> mlp.fc1/fc2``; in big.LITTLE layers the vanilla block's
weights go to ``blocks.i.performance.*``. The E path, routers, alpha and gamma are new.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models.registry import SAM_PIXEL_MEAN, SAM_PIXEL_STD, model_info, register_weights_loader
from ..models.sam import BigLittleSamEncoder
from .weights import (
    CheckpointMismatchError,
    LoadReport,
    StateDict,
    check_patterns,
    describe,
    finish_load,
    group_keys,
    is_allowed,
    read_state_dict,
)

logger = logging.getLogger(__name__)

_ENCODER_PREFIX = "image_encoder."
_DECODER_PREFIXES = ("prompt_encoder.", "mask_decoder.")
# Parameters a vanilla SAM checkpoint cannot provide: they start fresh (alpha 0, gamma 1e-5).
_NEW_IN_BLVIT = re.compile(r"^routers\.|\.efficiency\.|\.alpha_(attn|mlp)$|\.fuse_(attn|mlp)\.gamma$")
_ROUTEVIT_MARKS = re.compile(r"^routers\.|\.performance\.|\.efficiency\.|\.mlp\.fc[12]\.")


def encoder_entries(state: StateDict) -> dict[str, torch.Tensor]:
    """The image encoder's entries of a full SAM state dict (``image_encoder.`` stripped), or
    ``state`` itself when it is a bare encoder state dict."""
    if any(k.startswith(_ENCODER_PREFIX) for k in state):
        return {k[len(_ENCODER_PREFIX) :]: v for k, v in state.items() if k.startswith(_ENCODER_PREFIX)}
    return dict(state)


def sam_to_routevit(state: StateDict, model: BigLittleSamEncoder) -> dict[str, torch.Tensor]:
    """Rename a segment_anything encoder state dict to ``model``'s parameter names."""
    kinds = model.config.schedule.kinds
    out = {}
    for key, value in state.items():
        key = key.replace(".mlp.lin1.", ".mlp.fc1.").replace(".mlp.lin2.", ".mlp.fc2.")
        match = re.match(r"blocks\.(\d+)\.(.*)", key)
        if match and int(match[1]) < len(kinds) and kinds[int(match[1])] == "big_little":
            key = f"blocks.{match[1]}.performance.{match[2]}"
        out[key] = value
    return out


def _names(keys: list[str] | tuple[str, ...]) -> str:
    return group_keys(keys)[1:-1]


def load_sam_encoder(
    model: BigLittleSamEncoder,
    source: str | Path | StateDict,
    strict: bool = True,
    *,
    allow_missing: Sequence[str] = (),
) -> LoadReport:
    """Load a SAM image encoder checkpoint into ``model``.

    ``source``: a path or a state dict, in the official SAM layout (``image_encoder.*`` keys,
    other keys ignored), a bare segment_anything encoder state dict, or a routevit SAM encoder
    state dict. A shape mismatch always raises, naming the key and both shapes, unless
    ``allow_missing`` names the key (it then keeps its init). With ``strict`` (default), so do
    checkpoint entries the model has no place for and model parameters the checkpoint lacks,
    except the bLViT-only ones of a vanilla checkpoint (E path, routers, alpha, gamma: reported
    as ``fresh``) and those ``allow_missing`` names (shell patterns on the model's names).
    A checkpoint that fills none of the model's parameters is always an error.
    """
    allow = check_patterns(allow_missing)
    what = describe(source, "SAM ")
    state = encoder_entries(read_state_dict(source))
    layout = "routevit" if any(_ROUTEVIT_MARKS.search(k) for k in state) else "segment_anything"
    if layout == "segment_anything":
        state = sam_to_routevit(state, model)
    own = model.state_dict()
    skipped = []
    for key, value in state.items():
        if key in own and tuple(value.shape) != tuple(own[key].shape):
            if is_allowed(key, allow):
                skipped.append(key)
                continue
            raise CheckpointMismatchError(
                f"{key}: the checkpoint has shape {tuple(value.shape)} but the model expects "
                f"{tuple(own[key].shape)} (img_size, embed_dim, depth or window_size differ?)"
            )
    state = {k: v for k, v in state.items() if k not in skipped}
    unexpected = [k for k in state if k not in own]
    absent = [k for k in own if k not in state]
    new = [k for k in absent if layout == "segment_anything" and _NEW_IN_BLVIT.search(k)]
    missing = [k for k in absent if k not in new]
    loaded = [k for k in own if k in state]
    report = LoadReport(loaded, new, missing, unexpected, layout=layout)
    finish_load(report, what, model, allow_missing=allow, strict=strict)
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    if new:
        logger.info("initialised %d bLViT-only parameters fresh: %s", len(new), _names(new))
    return report


def _segment_anything() -> Any:
    try:
        import segment_anything.modeling as modeling
    except ImportError as err:
        raise ImportError(
            "this needs segment_anything: pip install 'routevit[sam]' (or segment-anything)"
        ) from err
    return modeling


def build_sam(
    name: str, checkpoint: str | Path | None = None, *, allow_missing: Sequence[str] = (), **overrides: Any
) -> nn.Module:
    """A ``segment_anything.modeling.Sam`` whose image encoder is ``create_model(name, **overrides)``.

    The prompt encoder and mask decoder are SAM's, sized for the encoder (``img_size``,
    ``out_chans``); with a ``checkpoint`` (a full SAM checkpoint, official layout) they and the
    encoder's trunk are loaded from it, strictly (:func:`load_sam_encoder`; ``allow_missing``
    names encoder parameters that may keep their init). ``SamPredictor(build_sam(...))`` works
    unchanged. Returned in eval mode.
    """
    from ..models import create_model

    modeling = _segment_anything()
    if model_info(name).task != "sam":
        raise TypeError(f"{name!r} is not a SAM encoder model (its task is {model_info(name).task})")
    encoder = create_model(name, **overrides)
    dim, size, grid = encoder.config.out_chans, encoder.img_size, encoder.config.grid_size
    sam = modeling.Sam(
        image_encoder=encoder,
        prompt_encoder=modeling.PromptEncoder(
            embed_dim=dim, image_embedding_size=(grid, grid), input_image_size=(size, size), mask_in_chans=16
        ),
        mask_decoder=modeling.MaskDecoder(
            num_multimask_outputs=3,
            transformer=modeling.TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=2048, num_heads=8),
            transformer_dim=dim,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=list(SAM_PIXEL_MEAN),
        pixel_std=list(SAM_PIXEL_STD),
    )
    if checkpoint is not None:
        state = read_state_dict(checkpoint)
        load_sam_encoder(encoder, state, allow_missing=allow_missing)
        _load_prompt_and_decoder(sam, state, checkpoint)
    return sam.eval()


def _load_prompt_and_decoder(sam: nn.Module, state: StateDict, source: object) -> None:
    rest = {k: v for k, v in state.items() if k.startswith(_DECODER_PREFIXES)}
    if not rest:
        raise CheckpointMismatchError(
            f"{source} has no prompt_encoder.* / mask_decoder.* entries; build_sam needs a full SAM "
            "checkpoint (the sam_vit_b_01ec64.pth layout); load a bare encoder with create_model(pretrained=)"
        )
    own = {k: v for k, v in sam.state_dict().items() if k.startswith(_DECODER_PREFIXES)}
    for key, value in rest.items():
        if key in own and value.shape != own[key].shape:
            raise CheckpointMismatchError(
                f"{key}: the checkpoint has shape {tuple(value.shape)} but the model expects "
                f"{tuple(own[key].shape)}"
            )
    missing, unexpected = sorted(set(own) - set(rest)), sorted(set(rest) - set(own))
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"{source}: prompt encoder / mask decoder keys do not match SAM's: missing "
            f"[{_names(missing)}]; unexpected [{_names(unexpected)}]"
        )
    sam.load_state_dict(rest, strict=False)


class _ForwardFeatures(nn.Module):
    """A timm SAM ViT whose forward is ``forward_features`` (the neck's ``(B, 256, h, w)``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def build_benchmark_encoders(
    name: str = "blvit_sam_b_t",
    checkpoint: str | Path | None = None,
    seed: int = 0,
    **overrides: Any,
) -> dict[str, nn.Module]:
    """Encoders that share one set of trunk weights, for same-run speed comparisons.

    Returns (all in eval mode) ``"blvit"`` (``create_model(name, **overrides)``),
    ``"routevit_vanilla"`` (the same network with no routing, on routevit's layers),
    ``"segment_anything"`` (SAM's original ``ImageEncoderViT``) and ``"timm"`` (timm's
    ``VisionTransformerSAM``, fused attention, returning the neck's output). The weights come
    from ``checkpoint`` (a SAM checkpoint) or, without one, from a seeded random SAM encoder
    whose relative-position tables are random too. Everything random (that encoder, the
    parts of ``"blvit"`` a vanilla checkpoint lacks) is drawn from ``seed`` in a forked RNG:
    the caller's random stream is left as it was.
    """
    with torch.random.fork_rng(devices=[]):  # the CPU generator only: the models are built there
        torch.random.default_generator.manual_seed(seed)
        return _benchmark_encoders(name, checkpoint, **overrides)


def _benchmark_encoders(name: str, checkpoint: str | Path | None, **overrides: Any) -> dict[str, nn.Module]:
    import timm

    from ..models import create_model

    modeling = _segment_anything()
    blvit = create_model(name, **overrides)
    cfg = blvit.config
    vanilla_name = model_info(name).vanilla or name
    size_overrides = {k: v for k, v in overrides.items() if k not in {"schedule", "keep_ratio"}}
    vanilla = create_model(vanilla_name, **size_overrides)
    sam_kwargs = dict(
        img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans, embed_dim=cfg.embed_dim,
        depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, qkv_bias=cfg.qkv_bias,
        use_abs_pos=cfg.use_abs_pos, use_rel_pos=cfg.use_rel_pos, window_size=cfg.window_size,
        global_attn_indexes=cfg.global_attn_indexes,
    )
    sam = modeling.ImageEncoderViT(
        out_chans=cfg.out_chans, norm_layer=partial(nn.LayerNorm, eps=1e-6), **sam_kwargs
    )
    if checkpoint is not None:
        state = encoder_entries(read_state_dict(checkpoint))
    else:
        with torch.no_grad():
            for key, p in sam.named_parameters():
                if "rel_pos" in key or key == "pos_embed":
                    p.normal_(0.0, 0.02)
        state = sam.state_dict()
    sam.load_state_dict(state)
    load_sam_encoder(blvit, state)
    load_sam_encoder(vanilla, state)
    fused = timm.models.vision_transformer_sam.VisionTransformerSAM(
        num_classes=0, neck_chans=cfg.out_chans, norm_layer=partial(nn.LayerNorm, eps=1e-6), **sam_kwargs
    )
    fused.load_state_dict(timm_state_dict(state, fused))
    encoders = {
        "blvit": blvit, "routevit_vanilla": vanilla, "segment_anything": sam, "timm": _ForwardFeatures(fused)
    }
    return {k: m.eval() for k, m in encoders.items()}


def timm_state_dict(state: StateDict, model: nn.Module) -> dict[str, torch.Tensor]:
    """A segment_anything encoder state dict renamed for timm's ``VisionTransformerSAM``
    (``mlp.lin -> mlp.fc``); timm's own extra entries (e.g. an empty head) are kept."""
    out = {k.replace(".mlp.lin", ".mlp.fc"): v for k, v in state.items()}
    own = model.state_dict()
    unknown = sorted(set(out) - set(own))
    lacking = sorted(set(own) - set(out))
    if unknown or any(not k.startswith("head") for k in lacking):
        raise ValueError(
            f"timm SAM model does not fit: unexpected [{_names(unknown)}], missing [{_names(lacking)}]"
        )
    return {**{k: own[k] for k in lacking}, **out}


register_weights_loader("sam", "pretrained", load_sam_encoder)
