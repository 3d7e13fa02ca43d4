"""Pictures of which patches the performance path receives (the paper's Figure 3).

One panel per prediction layer: routed patches keep their pixels and get a coloured
outline, the other patches are dimmed. A non-square image is never stretched: its longest
side is resized to the model's input size and the rest padded (SAM's preprocessing; the same
for classifiers), and the padding is hatched in grey. SAM encoders also get their attention
windows drawn and the window padding of their token grid hatched: that padding is never
routed, while the zero padding of a non-square image is made of real tokens and may be.
Needs Pillow (installed with torchvision).

:func:`draw_routes` draws given masks; :func:`route_picture` runs a model on an image and
draws its routes; :func:`load_model` reads what ``routevit visualize`` is given (a ``routevit
train`` run folder or checkpoint, or a weights file and a model name).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .hub import load_pretrained, pretrained_folder
from .interop.weights import model_from_file
from .models import list_models, model_info
from .models.registry import IMAGENET_MEAN, IMAGENET_STD, SAM_PIXEL_MEAN, SAM_PIXEL_STD
from .models.sam import BigLittleSamEncoder
from .models.vit import BigLittleViT

if TYPE_CHECKING:
    import PIL.Image

DIM = 0.3  # brightness kept by the patches that the P path does not receive
OUTLINE = (255, 196, 0)  # routed patches
WINDOW = (0, 150, 255)  # attention window borders (SAM)
PADDING = (205, 205, 205)  # padding cells (SAM), hatched in PADDING_HATCH
PADDING_HATCH = (150, 150, 150)
HEADER = 14  # pixels above each panel for its title


def _pillow():
    try:
        from PIL import Image, ImageDraw
    except ImportError as error:  # pragma: no cover - pillow ships with torchvision
        raise ImportError("routevit.visualize needs Pillow: pip install pillow") from error
    return Image, ImageDraw


def draw_routes(
    image: torch.Tensor,
    masks: Sequence[torch.Tensor],
    titles: Sequence[str] | None = None,
    cell: int = 16,
    *,
    window: int = 0,
    padding: torch.Tensor | None = None,
) -> PIL.Image.Image:
    """Draw the routed patches of each prediction layer over ``image``.

    Args:
        image: ``(3, H, W)`` uint8 (or float in [0, 1]) image whose grid the masks index.
        masks: one ``(gh, gw)`` bool tensor per prediction layer, True where the patch is routed.
        titles: a caption per panel (default: "routes 1", "routes 2", ...).
        cell: pixels per patch in the picture (the image is resized so a patch is ``cell`` wide).
        window: draw attention window borders every ``window`` patches (0: none).
        padding: ``(gh, gw)`` bool, True for padding cells (drawn hatched grey, outlined if routed).

    Returns:
        A picture of width ``len(masks) * gw * cell`` and height ``gh * cell + 14``. The
        top-left pixel of a cell has the colour :data:`OUTLINE` exactly when it is routed.
    """
    Image, ImageDraw = _pillow()
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must have shape (3, H, W), got {tuple(image.shape)}")
    if not masks:
        raise ValueError("masks must hold at least one (gh, gw) mask")
    grid = tuple(masks[0].shape)
    if any(m.dim() != 2 or tuple(m.shape) != grid or m.dtype != torch.bool for m in masks):
        shapes = [(tuple(m.shape), m.dtype) for m in masks]
        raise ValueError(f"every mask must be a bool tensor of one shape (gh, gw), got {shapes}")
    titles = list(titles) if titles is not None else [f"routes {i + 1}" for i in range(len(masks))]
    if len(titles) != len(masks):
        raise ValueError(f"got {len(titles)} titles for {len(masks)} masks")
    if padding is not None:
        if tuple(padding.shape) != grid or padding.dtype != torch.bool:
            raise ValueError(
                f"padding must be a bool tensor of the masks' shape {grid}, got "
                f"{tuple(padding.shape)} {padding.dtype}"
            )
    if isinstance(cell, bool) or not isinstance(cell, int) or cell < 2:
        raise ValueError(f"cell must be an int >= 2 (pixels per patch), got {cell!r}")
    if image.is_floating_point():
        image = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    gh, gw = grid
    height, width, header = gh * cell, gw * cell, HEADER
    base = torch.nn.functional.interpolate(image[None].float(), size=(height, width), mode="nearest")[0]
    if padding is not None:
        pad_px = padding.repeat_interleave(cell, 0).repeat_interleave(cell, 1)
        base = torch.where(pad_px, torch.tensor(PADDING, dtype=base.dtype)[:, None, None], base)
    canvas = Image.new("RGB", (width * len(masks), height + header), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for panel, (mask, title) in enumerate(zip(masks, titles, strict=True)):
        keep = mask.repeat_interleave(cell, 0).repeat_interleave(cell, 1)
        if padding is not None:
            keep = keep | pad_px  # padding keeps its flat grey
        pixels = torch.where(keep, base, base * DIM).round().to(torch.uint8)
        left = panel * width
        canvas.paste(Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy()), (left, header))
        draw.text((left + 2, 1), title, fill=(0, 0, 0))
        if padding is not None:
            for r, c in padding.nonzero().tolist():
                x0, y0 = left + c * cell, header + r * cell
                draw.line((x0 + 1, y0 + cell - 1, x0 + cell - 1, y0 + 1), fill=PADDING_HATCH)
        if window:
            for c in range(window, gw, window):
                draw.line((left + c * cell, header, left + c * cell, header + height - 1), fill=WINDOW)
            for r in range(window, gh, window):
                draw.line((left, header + r * cell, left + width - 1, header + r * cell), fill=WINDOW)
        for r, c in mask.nonzero().tolist():
            x0, y0 = left + c * cell, header + r * cell
            draw.rectangle((x0, y0, x0 + cell - 1, y0 + cell - 1), outline=OUTLINE)
    return canvas



# --- models and images ---------------------------------------------------------------------



@dataclass
class LoadedModel:
    """What :func:`load_model` returns: the model in eval mode and the normalisation its
    inputs had in training (``mean``/``std`` in [0, 1] units; unused for SAM encoders)."""

    model: nn.Module
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    source: str = ""


def load_model(
    checkpoint: str | Path,
    model: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    ema: bool = False,
) -> LoadedModel:
    """The model that ``routevit visualize`` draws, in eval mode on the CPU.

    Args:
        checkpoint: a ``routevit train`` run folder, its ``checkpoints/`` folder or one
            checkpoint directory (the model is rebuilt from the saved recipe, exactly as
            ``routevit eval`` does); a ``save_pretrained`` folder (rebuilt from its
            ``config.json``; ``model`` and ``overrides`` are checked against it / applied); or a
            weights file (``.safetensors``, or a ``torch.save``d
            state dict, optionally under ``"model"``/``"state_dict"``), which needs ``model``.
        model: a registered routevit model name for a weights file, e.g. ``"blvit_deit_s_t"``;
            the file is loaded strictly, as ``create_model(model, pretrained=checkpoint)``
            would: a routevit state dict by name, or a vanilla checkpoint (timm / DeiT, SAM's
            official ``sam_vit_b_01ec64.pth``) into the P path, whose routers then keep their
            init (a warning says so: the routes drawn are an untrained router's).
        overrides: keyword arguments for the model factory (``num_classes``, ``img_size``, ...).
        ema: load a checkpoint's EMA weights.
    """
    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if pretrained_folder(path) is not None:  # save_pretrained: its config.json names the model
        if ema:
            raise ValueError(f"--ema applies to routevit train checkpoints, not to {str(path)!r}")
        net = load_pretrained(path, name=model, **dict(overrides or {}))
        cfg = net.pretrained_cfg
        return LoadedModel(net.eval(), tuple(cfg["mean"]), tuple(cfg["std"]), str(pretrained_folder(path)))
    if path.is_dir():
        if model is not None or overrides:
            raise ValueError(
                f"{str(path)!r} is a routevit run or checkpoint folder: its recipe names the model, "
                "so --model/--set apply only to weights files"
            )
        from .train import load_checkpoint_model

        net, recipe, ckpt = load_checkpoint_model(path, ema=ema)
        return LoadedModel(net, tuple(recipe.augment.mean), tuple(recipe.augment.std), str(ckpt))
    if model is None:
        raise ValueError(
            f"{str(path)!r} is a weights file: name its architecture with --model NAME (one of "
            f"{list_models()}), or pass a routevit run folder, whose recipe names it"
        )
    info = model_info(model) if model in list_models() else None
    net = model_from_file(path, model, overrides)
    mean, std = (info.mean, info.std) if info is not None else (IMAGENET_MEAN, IMAGENET_STD)
    return LoadedModel(net, tuple(mean), tuple(std), source=str(path))


def read_image(path: str | Path) -> PIL.Image.Image:
    """An image file as an RGB PIL image, with a clear error for a missing or unreadable file."""
    Image, _ = _pillow()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {str(path)!r} does not exist")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Image.UnidentifiedImageError:
        raise ValueError(f"{str(path)!r} is not an image file Pillow can read") from None


def _to_tensor(image: PIL.Image.Image) -> torch.Tensor:
    """``(3, H, W)`` uint8 of an RGB PIL image."""
    import numpy as np

    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)


def classifier_input(
    image: PIL.Image.Image, img_size: int, mean: Sequence[float], std: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """The whole image (no crop, no stretch): its longest side resized (bicubic) to
    ``img_size``, normalised by ``mean``/``std``, zero-padded bottom/right to ``img_size``
    squared (the padding is the mean colour), as SAM pads.

    Returns the model input ``(1, 3, S, S)`` float, the shown pixels ``(3, S, S)`` uint8
    (padding 0) and the resized image's ``(height, width)``.
    """
    Image, _ = _pillow()
    w, h = image.size
    scale = img_size / max(h, w)
    new_h, new_w = max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))
    resized = _to_tensor(image.convert("RGB").resize((new_w, new_h), Image.Resampling.BICUBIC))
    m = torch.tensor(mean).view(3, 1, 1)
    s = torch.tensor(std).view(3, 1, 1)
    pad = (0, img_size - new_w, 0, img_size - new_h)
    x = torch.nn.functional.pad((resized.float() / 255 - m) / s, pad)[None]
    return x, torch.nn.functional.pad(resized, pad), (new_h, new_w)


def sam_input(
    image: PIL.Image.Image, img_size: int = 1024
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """SAM's preprocessing: the longest side resized to ``img_size`` (``ResizeLongestSide``),
    normalised by SAM's pixel mean/std, zero-padded bottom/right to ``img_size`` squared.

    Returns the model input ``(1, 3, S, S)``, the shown pixels ``(3, S, S)`` uint8 (padding 0)
    and the resized image's ``(height, width)``.
    """
    Image, _ = _pillow()
    w, h = image.size
    scale = img_size / max(h, w)
    new_h, new_w = int(h * scale + 0.5), int(w * scale + 0.5)
    resized = _to_tensor(image.convert("RGB").resize((new_w, new_h), Image.Resampling.BILINEAR))
    m = torch.tensor(SAM_PIXEL_MEAN).view(3, 1, 1)
    s = torch.tensor(SAM_PIXEL_STD).view(3, 1, 1)
    pad = (0, img_size - new_w, 0, img_size - new_h)
    x = torch.nn.functional.pad((resized.float() - m) / s, pad)[None]
    shown = torch.nn.functional.pad(resized, pad)
    return x, shown, (new_h, new_w)


@dataclass
class RoutePicture:
    """What :func:`route_picture` drew: the ``picture``, the ``(gh, gw)`` bool ``masks`` of the
    routed patches (one per prediction layer, on the drawn grid), the ``padding`` cells (None
    for a square image on a classifier), the drawn ``window`` size (0: none), ``cell`` and the panel
    ``titles``. For SAM the drawn grid is the window-padded token grid (70 x 70 at 1024)."""

    picture: PIL.Image.Image
    masks: list[torch.Tensor]
    padding: torch.Tensor | None
    window: int
    cell: int
    titles: list[str]


def _default_cell(grid: int) -> int:
    return max(6, 384 // grid)


@torch.no_grad()
def route_picture(
    model: nn.Module,
    image: PIL.Image.Image,
    *,
    keep_ratio: float | None = None,
    cell: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> RoutePicture:
    """Run ``model`` on ``image`` and draw, per prediction layer, the patches routed to its P path.

    ``model``: a :class:`~routevit.models.vit.BigLittleViT` (the image's longest side is
    resized to its ``img_size``, the rest padded, and normalised by ``mean``/``std``) or a
    :class:`~routevit.models.sam.BigLittleSamEncoder` (SAM's longest-side resize and padding;
    window borders drawn, padding hatched). ``keep_ratio`` replaces the model's own first.
    """
    if keep_ratio is not None and hasattr(model, "set_keep_ratio"):
        model.set_keep_ratio(keep_ratio)
    model.eval()
    if isinstance(model, BigLittleSamEncoder):
        return _sam_picture(model, image, cell)
    if not isinstance(model, BigLittleViT):
        raise TypeError(
            f"{type(model).__name__} has no token routing to draw: expected a routevit big.LITTLE model "
            "(BigLittleViT, e.g. blvit_deit_s_t, or BigLittleSamEncoder, e.g. blvit_sam_b_t)"
        )
    cfg = model.config
    x, shown, (h, w) = classifier_input(image, cfg.img_size, mean, std)
    _, routes = model.forward_features_with_routes(x)
    if not routes:
        raise ValueError(f"{type(model).__name__} has no prediction layers: nothing is routed")
    masks = list(model.route_masks(routes)[0])
    layers = cfg.schedule.predict_after
    k = routes[0].num_selected
    titles = [f"after layer {p}: {k} of {routes[0].num_tokens} tokens" for p in layers]
    g, p = cfg.grid_size, cfg.patch_size
    padding = torch.ones(g, g, dtype=torch.bool)
    padding[: -(-h // p), : -(-w // p)] = False  # patches with at least one image pixel
    padding = padding if padding.any() else None  # a square image: nothing to hatch
    cell = cell or _default_cell(g)
    picture = draw_routes(shown, masks, titles, cell, padding=padding)
    return RoutePicture(picture, masks, padding, 0, cell, titles)


def _sam_picture(model: BigLittleSamEncoder, image: PIL.Image.Image, cell: int | None) -> RoutePicture:
    cfg = model.config
    x, shown, (h, w) = sam_input(image, model.img_size)
    _, routes = model.forward_routes(x)
    if not routes:
        raise ValueError(
            "this SAM encoder's schedule has no prediction layers (a vanilla encoder such as "
            "sam_vit_b?): nothing is routed"
        )
    grid, p = model.route_grid, cfg.patch_size
    hp, wp = grid.padded_hw
    g = cfg.grid_size
    masks = []
    for r in routes:
        m = torch.zeros(hp, wp, dtype=torch.bool)
        m[:g, :g] = r.mask()[0].view(g, g)
        masks.append(m)
    padding = torch.ones(hp, wp, dtype=torch.bool)
    padding[: -(-h // p), : -(-w // p)] = False  # patches with at least one image pixel
    shown = torch.nn.functional.pad(shown, (0, wp * p - shown.shape[2], 0, hp * p - shown.shape[1]))
    window = 0 if grid.is_global else grid.window
    k = model.tokens_per_window
    titles = [f"after layer {q}: {k} per window" for q in cfg.schedule.predict_after]
    cell = cell or _default_cell(hp)
    picture = draw_routes(shown, masks, titles, cell, window=window, padding=padding)
    return RoutePicture(picture, masks, padding, window, cell, titles)
