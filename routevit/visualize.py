"""Pictures of which patches the performance path receives (the paper's Figure 3).

One panel per prediction layer: routed patches keep their pixels and get a coloured
outline, the other patches are dimmed. Needs Pillow (installed with torchvision).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    import PIL.Image

DIM = 0.3  # brightness kept by the patches that the P path does not receive
OUTLINE = (255, 196, 0)


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
) -> PIL.Image.Image:
    """Draw the routed patches of each prediction layer over ``image``.

    Args:
        image: ``(3, H, W)`` uint8 (or float in [0, 1]) image whose grid the masks index.
        masks: one ``(gh, gw)`` bool tensor per prediction layer, True where the patch is routed.
        titles: a caption per panel (default: "routes 1", "routes 2", ...).
        cell: pixels per patch in the picture (the image is resized so a patch is ``cell`` wide).

    Returns:
        A picture of width ``len(masks) * gw * cell`` and height ``gh * cell + 14``.
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
    if image.is_floating_point():
        image = (image.clamp(0, 1) * 255).round().to(torch.uint8)
    gh, gw = grid
    height, width, header = gh * cell, gw * cell, 14
    base = torch.nn.functional.interpolate(image[None].float(), size=(height, width), mode="nearest")[0]
    canvas = Image.new("RGB", (width * len(masks), height + header), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for panel, (mask, title) in enumerate(zip(masks, titles, strict=True)):
        keep = mask.repeat_interleave(cell, 0).repeat_interleave(cell, 1)
        pixels = torch.where(keep, base, base * DIM).round().to(torch.uint8)
        canvas.paste(Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy()), (panel * width, header))
        draw.text((panel * width + 2, 1), title, fill=(0, 0, 0))
        for r, c in mask.nonzero().tolist():
            x0, y0 = panel * width + c * cell, header + r * cell
            draw.rectangle((x0, y0, x0 + cell - 1, y0 + cell - 1), outline=OUTLINE)
    return canvas

