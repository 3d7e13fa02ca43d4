"""The routing pictures: size, and the outlined cells are exactly the routed patches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from routevit.visualize import HEADER, OUTLINE, PADDING, draw_routes


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


def test_window_borders_and_padding_do_not_hide_the_routed_cells():
    torch.manual_seed(1)
    image = torch.randint(0, 256, (3, 36, 36), dtype=torch.uint8)
    padding = torch.zeros(6, 6, dtype=torch.bool)
    padding[4:, :] = True
    masks = [(torch.rand(6, 6) < 0.4) & ~padding, torch.rand(6, 6) < 0.4]  # the 2nd routes padding
    picture = draw_routes(image, masks, cell=6, window=3, padding=padding)
    for drawn, mask in zip(outlined_cells(picture, 2, (6, 6), 6), masks, strict=True):
        assert torch.equal(drawn, mask)
    px = picture.load()
    assert px[6 * 2 + 1, 14 + 6 * 5 + 1] == PADDING  # an unrouted padding cell is grey
    with pytest.raises(ValueError, match="padding must be"):
        draw_routes(image, masks, cell=6, padding=padding[:5])


# --- routevit visualize: a model saved the way users have it, drawn through the CLI -------------

TINY_BLVIT = {"patch_size": 4, "embed_dim": 32, "num_heads": 2, "little_dim": 16, "little_heads": 2,
              "depth": 5}  # fmt: skip  (prediction after layers 1 and 4)
TINY_SAM = {"img_size": 128, "embed_dim": 32, "num_heads": 2, "little_dim": 16, "little_heads": 2,
            "window_size": 3, "out_chans": 16}  # fmt: skip  (8x8 tokens in 3x3 windows: padded to 9x9)


def write_image(path, width: int, height: int, seed: int = 0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def tiny_run_folder(tmp_path, name: str, kwargs: dict, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3)):
    """A run folder written by the trainer's own checkpoint code, for a model with random weights."""
    from routevit.train import recipe_from_dict
    from routevit.train.build import build_student
    from routevit.train.checkpoint import save_checkpoint

    recipe = recipe_from_dict({
        "model": {"name": name, "num_classes": 3, "img_size": 32, "drop_path_rate": 0.0, "kwargs": kwargs},
        "data": {"root": str(tmp_path), "train_dir": ".", "val_dir": None, "holdout_per_class": 1},
        "augment": {"mean": list(mean), "std": list(std)},
        "run": {"output": str(tmp_path / "run")},
    })  # fmt: skip
    torch.manual_seed(0)
    model = build_student(recipe.model, pretrained=False).eval()
    save_checkpoint(tmp_path / "run" / "checkpoints", 10, model.state_dict(), {}, recipe, {"epoch": 1})
    return tmp_path / "run", model


def expected_vit_masks(model, image_path, mean, std) -> list[torch.Tensor]:
    """Routes recomputed independently: PIL bicubic resize of the longest side (the aspect ratio
    kept), normalise, zero-pad bottom/right to a square, forward."""
    from PIL import Image

    size = model.config.img_size
    image = Image.open(image_path).convert("RGB")
    scale = size / max(image.size)
    w, h = round(image.width * scale), round(image.height * scale)
    pixels = np.asarray(image.resize((w, h), Image.Resampling.BICUBIC))
    x = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255
    x = (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    x = torch.nn.functional.pad(x, (0, size - w, 0, size - h))
    with torch.no_grad():
        _, routes = model.forward_features_with_routes(x[None])
    return list(model.route_masks(routes)[0])


def read_png(path):
    from PIL import Image

    with Image.open(path) as img:
        return img.convert("RGB")


def test_cli_draws_the_routes_of_a_run_folder(tmp_path, capsys):
    from routevit.cli import main

    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    run, model = tiny_run_folder(tmp_path, "blvit_deit_s_t", TINY_BLVIT, mean, std)
    image = write_image(tmp_path / "photo.jpg", 50, 37)
    out = tmp_path / "routes.png"
    assert main(["visualize", str(run), str(image), "--out", str(out), "--cell", "10"]) == 0
    assert "2 prediction layers" in capsys.readouterr().out
    expected = expected_vit_masks(model, image, mean, std)  # the recipe's normalisation
    picture = read_png(out)
    assert picture.size == (2 * 8 * 10, 8 * 10 + HEADER)
    drawn = outlined_cells(picture, 2, (8, 8), 10)
    for got, want in zip(drawn, expected, strict=True):
        assert torch.equal(got, want)
    assert all(int(m.sum()) == 16 for m in drawn)  # ceil(0.25 * 65) = 17 tokens, CLS not drawn


def test_cli_weights_file_with_model_and_keep_ratio(tmp_path):
    from safetensors.torch import save_file

    from routevit import create_model
    from routevit.cli import main

    torch.manual_seed(3)
    model = create_model("blvit_deit_s_t", num_classes=3, img_size=32, **TINY_BLVIT).eval()
    weights = tmp_path / "weights.safetensors"
    save_file(model.state_dict(), str(weights))
    image = write_image(tmp_path / "photo.png", 32, 32, seed=1)
    out = tmp_path / "routes.png"
    args = ["visualize", str(weights), str(image), "--out", str(out), "--model", "blvit_deit_s_t",
            "--set", "num_classes=3", "--set", "img_size=32", "--keep-ratio=0.5", "--cell=8"]  # fmt: skip
    args += [f"--set={k}={v}" for k, v in TINY_BLVIT.items()]
    assert main(args) == 0
    model.set_keep_ratio(0.5)
    from routevit.visualize import IMAGENET_MEAN, IMAGENET_STD

    expected = expected_vit_masks(model, image, IMAGENET_MEAN, IMAGENET_STD)
    drawn = outlined_cells(read_png(out), 2, (8, 8), 8)
    for got, want in zip(drawn, expected, strict=True):
        assert torch.equal(got, want)
    assert all(int(m.sum()) == 32 for m in drawn)  # ceil(0.5 * 65) = 33 with the CLS token


def test_cli_draws_a_sam_encoder_per_window(tmp_path):
    from segment_anything.utils.transforms import ResizeLongestSide

    from routevit import create_model
    from routevit.cli import main
    from routevit.visualize import SAM_PIXEL_MEAN, SAM_PIXEL_STD

    torch.manual_seed(0)
    encoder = create_model("blvit_sam_b_t", **TINY_SAM).eval()
    weights = tmp_path / "encoder.pth"
    torch.save(encoder.state_dict(), weights)
    image = write_image(tmp_path / "wide.png", 90, 50, seed=2)  # resized to 128x71: padded rows
    out = tmp_path / "sam.png"
    args = ["visualize", str(weights), str(image), "--out", str(out), "--model=blvit_sam_b_t", "--cell=6"]
    args += [f"--set={k}={v}" for k, v in TINY_SAM.items()]
    assert main(args) == 0

    # SAM's own preprocessing (segment_anything's ResizeLongestSide and Sam.preprocess)
    from PIL import Image

    pixels = ResizeLongestSide(128).apply_image(np.asarray(Image.open(image).convert("RGB")))
    assert pixels.shape[:2] == (71, 128)
    x = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float()
    x = (x - torch.tensor(SAM_PIXEL_MEAN).view(3, 1, 1)) / torch.tensor(SAM_PIXEL_STD).view(3, 1, 1)
    x = torch.nn.functional.pad(x, (0, 0, 0, 128 - 71))[None]
    with torch.no_grad():
        _, routes = encoder.forward_routes(x)
    picture = read_png(out)
    assert picture.size == (4 * 9 * 6, 9 * 6 + HEADER)  # 4 prediction layers, 9x9 padded grid
    drawn = outlined_cells(picture, 4, (9, 9), 6)
    k = encoder.tokens_per_window
    for got, r in zip(drawn, routes, strict=True):
        assert torch.equal(got[:8, :8], r.mask()[0].view(8, 8))  # exactly the routed tokens
        assert not got[8].any() and not got[:, 8].any()  # window padding is never routed
        per_window = got.view(3, 3, 3, 3).sum((1, 3))
        assert (per_window == k).all()  # the same k in every window
    px = picture.load()
    assert px[8 * 6 + 2, HEADER + 1] in {PADDING, OUTLINE}  # window padding column hatched grey


def test_cli_errors(tmp_path, capsys):
    from routevit import create_model
    from routevit.cli import main

    image = write_image(tmp_path / "photo.png", 32, 32)
    out = str(tmp_path / "x.png")
    assert main(["visualize", str(tmp_path / "nope"), str(image), "--out", out]) == 2
    assert "does not exist" in capsys.readouterr().err
    run, _ = tiny_run_folder(tmp_path, "blvit_deit_s_t", TINY_BLVIT)
    assert main(["visualize", str(run), str(tmp_path / "nope.jpg"), "--out", out]) == 2
    assert "image" in capsys.readouterr().err
    weights = tmp_path / "w.pth"
    torch.save(create_model("sam_vit_b", **TINY_SAM).state_dict(), weights)
    assert main(["visualize", str(weights), str(image), "--out", out]) == 2
    assert "--model NAME" in capsys.readouterr().err
    args = ["visualize", str(weights), str(image), "--out", out, "--model", "sam_vit_b"]
    assert main(args + [f"--set={k}={v}" for k, v in TINY_SAM.items()]) == 2
    assert "no prediction layers" in capsys.readouterr().err
    assert main(["visualize", str(weights), str(image), "--out", out, "--model", "blvit_deit_s_t"]) == 2
    assert "it has a SAM image encoder" in capsys.readouterr().err  # the wrong family, said so


def test_a_vanilla_run_folder_has_nothing_to_draw(tmp_path, capsys):
    from routevit.cli import main

    kwargs = {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
    run, _ = tiny_run_folder(tmp_path, "vit_tiny_patch16_224", kwargs)
    image = write_image(tmp_path / "photo.png", 32, 32)
    assert main(["visualize", str(run), str(image), "--out", str(tmp_path / "x.png")]) == 2
    assert "no token routing" in capsys.readouterr().err


def test_a_non_square_image_is_padded_not_stretched(tmp_path):
    """A 2:1 image keeps its shape: the top half of the grid is the image, the bottom half is
    padding, hatched; a stretched image would fill the whole grid."""
    from PIL import Image

    from routevit import create_model
    from routevit.visualize import route_picture

    torch.manual_seed(0)
    model = create_model("blvit_deit_s_t", num_classes=3, img_size=32, **TINY_BLVIT).eval()
    wide = Image.new("RGB", (64, 32), (255, 0, 0))
    wide.paste((0, 0, 255), (32, 0, 64, 32))  # left red, right blue
    drawn = route_picture(model, wide, cell=4)
    assert drawn.padding is not None and drawn.padding.shape == (8, 8)
    assert not drawn.padding[:4].any() and drawn.padding[4:].all()  # rows 0-3 image, 4-7 padding
    px = drawn.picture.load()
    inside = lambda r, c: px[c * 4 + 1, HEADER + r * 4 + 1]  # noqa: E731  (off outline and hatch)
    routed = drawn.masks[0]
    for r, c, channel in ((1, 1, 0), (1, 6, 2), (3, 0, 0), (3, 7, 2)):  # red left, blue right
        value = inside(r, c)
        bright = value if routed[r, c] else tuple(round(v / 0.3) for v in value)
        assert bright[channel] > 200 and bright[2 - channel] < 60, (r, c, value)
    assert all(inside(r, c) == PADDING for r in range(4, 8) for c in range(8))  # flat grey padding
    square = route_picture(model, Image.new("RGB", (40, 40), (0, 255, 0)), cell=4)
    assert square.padding is None
