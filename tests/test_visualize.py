"""The routing pictures: size, and the outlined cells are exactly the routed patches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from routevit.visualize import OUTLINE, draw_routes


def outlined_cells(picture, num_panels: int, grid: tuple[int, int], cell: int) -> list[torch.Tensor]:
    """Read a picture back: which cells have the outline colour in their top-left corner."""
    pixels = torch.from_numpy(np.array(picture.convert("RGB")))
    gh, gw = grid
    header = picture.height - gh * cell
    corners = pixels[header::cell, ::cell][:gh]  # (gh, num_panels * gw, 3)
    hit = (corners == torch.tensor(OUTLINE, dtype=torch.uint8)).all(-1)
    return [hit[:, p * gw:(p + 1) * gw] for p in range(num_panels)]


def test_outlined_cells_are_the_routed_patches():
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 40, 56), dtype=torch.uint8)
    masks = [torch.rand(5, 7) < 0.3, torch.rand(5, 7) < 0.5]
    picture = draw_routes(image, masks, cell=8)
    assert picture.size == (2 * 7 * 8, 5 * 8 + 14)
    for drawn, mask in zip(outlined_cells(picture, 2, (5, 7), 8), masks, strict=True):
        assert torch.equal(drawn, mask)


def test_routed_patches_keep_their_pixels_and_others_are_dimmed():
    image = torch.full((3, 8, 8), 200, dtype=torch.uint8)
    mask = torch.tensor([[True, False], [False, False]])
    picture = draw_routes(image, [mask], cell=4)
    px = picture.load()
    assert px[1 + 0, 14 + 1] == (200, 200, 200)  # inside the routed cell
    assert px[4 + 1, 14 + 1] == (60, 60, 60)    # dimmed to 30%


def test_bad_input():
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        draw_routes(torch.zeros(8, 8, 3), [torch.zeros(2, 2, dtype=torch.bool)])
    with pytest.raises(ValueError, match="one shape"):
        masks = [torch.zeros(2, 2, dtype=torch.bool), torch.zeros(3, 2, dtype=torch.bool)]
        draw_routes(torch.zeros(3, 8, 8), masks)
    with pytest.raises(ValueError, match="at least one"):
        draw_routes(torch.zeros(3, 8, 8), [])
