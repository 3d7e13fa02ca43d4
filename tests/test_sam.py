"""BigLittleSamEncoder: equivalence with segment_anything at keep_ratio 1, per-window routing
at padded geometries (SAM's 1024 one included), the padding rule and input checking."""

from __future__ import annotations

import pytest
import torch
from _sam_testing import check_window_routes, sam_image_encoder, sam_kwargs

from routevit import create_model
from routevit.layers import WindowGrid
from routevit.layers.encoder import Schedule
from routevit.models.sam import BigLittleSamEncoder, LayerNorm2d

pytest.importorskip("segment_anything")

# ViT-B-like trunk at SAM's window 14 on a 28x28 grid (no padding, so keep_ratio 1.0 is legal).
VIT_B_SMALL = dict(
    img_size=448, window_size=14, depth=4, embed_dim=96, num_heads=4, global_attn_indexes=(1, 3),
    out_chans=64, little_dim=48, little_heads=2, schedule=Schedule.big_little_from(4, 2, (1, 3)),
)
# ViT-H width and heads, reduced depth: full, big.LITTLE (global), P-only (global), big.LITTLE.
VIT_H_SMALL = dict(
    img_size=224, window_size=7, depth=4, global_attn_indexes=(1, 2), out_chans=64,
    schedule=Schedule.big_little_from(4, 2, (1,), alternate=True),
)
# Padded: a 10x10 grid in 7x7 windows pads to 14x14; the corner window holds 9 real tokens.
PADDED = dict(
    img_size=160, window_size=7, depth=3, embed_dim=64, num_heads=4, global_attn_indexes=(2,),
    out_chans=32, little_dim=32, little_heads=2, schedule=Schedule.big_little_from(3, 2, (1, 2)),
)


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("name,overrides", [("blvit_sam_b_t", VIT_B_SMALL), ("blvit_sam_h_b", VIT_H_SMALL)])
def test_keep_ratio_one_reproduces_segment_anything(tmp_path, name, overrides):
    kwargs = sam_kwargs(**overrides)
    if name == "blvit_sam_h_b":
        kwargs.update(embed_dim=1280, num_heads=16)
    reference = sam_image_encoder(**kwargs)
    path = tmp_path / "encoder.pth"
    torch.save(reference.state_dict(), path)
    model = create_model(name, pretrained=path, keep_ratio=1.0, **overrides).eval()
    assert model.config.schedule.count("full") < model.config.depth
    x = torch.randn(2, 3, overrides["img_size"], overrides["img_size"])
    with torch.no_grad():
        expected, (out, routes) = reference(x), model.forward_routes(x)
    assert all(r.num_selected == r.num_tokens for r in routes)
    assert out.shape == expected.shape
    assert _relative_error(out, expected) <= 1e-4


def test_padded_geometry_routes_per_window_and_splits_batches():
    torch.manual_seed(0)
    model = BigLittleSamEncoder(**PADDED).eval()
    grid = WindowGrid(10, 10, 7)
    assert model.max_keep_ratio() == pytest.approx(0.36) and model.tokens_per_window == 7  # ceil(25 / 4)
    x = torch.randn(3, 3, 160, 160)
    with torch.no_grad():
        out, routes = model.forward_routes(x)
        parts = [model.forward_routes(chunk) for chunk in (x[:1], x[1:])]
    assert out.shape == (3, 32, 10, 10) and len(routes) == 2
    for r in routes:
        check_window_routes(r, grid, k=7)
    torch.testing.assert_close(torch.cat([p[0] for p in parts]), out, rtol=1e-5, atol=1e-5)
    for layer, r in enumerate(routes):
        assert torch.equal(torch.cat([p[1][layer].indices for p in parts]), r.indices)


def test_sam_1024_geometry_selects_a_quarter_of_the_real_tokens():
    model = create_model(
        "blvit_sam_b_t", embed_dim=32, num_heads=2, little_dim=16, little_heads=1, depth=2,
        global_attn_indexes=(1,), out_chans=16, schedule=Schedule.big_little_from(2, 2, (1,)),
    ).eval()
    assert model.tokens_per_window == 41 and model.max_keep_ratio() == 0.390625
    with torch.no_grad():
        out, (routes,) = model.forward_routes(torch.randn(1, 3, 1024, 1024))
    assert out.shape == (1, 16, 64, 64)
    check_window_routes(routes, WindowGrid(64, 64, 14), k=41)
    assert routes.num_selected == 1025  # 25 windows x 41: 25.0% of the 4096 tokens


def test_keep_ratio_beyond_the_emptiest_window_raises_naming_the_limit():
    model = BigLittleSamEncoder(**PADDED)
    limit = r"emptiest window holds only 9 real tokens.*largest keep_ratio .* 0\.36"
    with pytest.raises(ValueError, match=limit):
        model.set_keep_ratio(0.5)
    with pytest.raises(ValueError, match="0.36"):
        BigLittleSamEncoder(**{**PADDED, "keep_ratio": 1.0})
    model.set_keep_ratio(0.36)
    assert model.tokens_per_window == 9 and model.keep_ratio == 0.36
    with pytest.raises(ValueError, match="keep_ratio must be in"):
        model.set_keep_ratio(0.0)


def test_forward_changes_no_state():
    model = BigLittleSamEncoder(**PADDED).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    buffers = [b.clone() for b in model.buffers()]
    with torch.no_grad():
        model(torch.randn(1, 3, 160, 160))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers(), strict=True))
    assert (model.keep_ratio, model.tokens_per_window) == (0.25, 7)


def test_bad_inputs_and_options_are_named():
    model = BigLittleSamEncoder(**PADDED)
    with pytest.raises(ValueError, match=r"\(B, 3, 160, 160\).*got \(1, 3, 128, 128\)"):
        model(torch.randn(1, 3, 128, 128))
    with pytest.raises(TypeError, match="torch.Tensor"):
        model([1, 2, 3])
    with pytest.raises(ValueError, match=r"unknown SAM encoder option\(s\) \['widht'\]"):
        create_model("blvit_sam_b_t", widht=3)
    with pytest.raises(ValueError, match="schedule has 12 layers but depth=4"):
        create_model("blvit_sam_b_t", depth=4)
    with pytest.raises(ValueError, match="global_attn_indexes"):
        BigLittleSamEncoder(**{**PADDED, "global_attn_indexes": (3,)})


def test_paper_layouts():
    for name, full, big_little, performance in [("blvit_sam_b_t", 1, 11, 0), ("blvit_sam_h_b", 9, 12, 11)]:
        with torch.device("meta"):
            model = create_model(name)
        s = model.config.schedule
        counts = (s.count("full"), s.count("big_little"), s.count("performance"))
        assert counts == (full, big_little, performance)
    assert model.config.little_dim == 768 and model.config.global_attn_indexes == (7, 15, 23, 31)


def test_layer_norm_2d_matches_segment_anything():
    from segment_anything.modeling.common import LayerNorm2d as SamLayerNorm2d

    ours, ref = LayerNorm2d(6), SamLayerNorm2d(6)
    with torch.no_grad():
        ref.weight.normal_()
        ref.bias.normal_()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 6, 3, 4)
    torch.testing.assert_close(ours(x), ref(x))


def test_gradients_reach_every_path_and_the_router_through_the_score_scaling():
    torch.manual_seed(0)
    model = BigLittleSamEncoder(**PADDED).train()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "alpha" in name:
                p.fill_(0.5)  # at the paper's init (0) the router's gradient is exactly zero
    model(torch.randn(2, 3, 160, 160)).square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, no_grad
