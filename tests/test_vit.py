"""BigLittleViT: recipes, schedules, routing behaviour, invariants. No timm needed."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _vit_helpers import single_thread  # noqa: F401 - used by pytestmark

import routevit
from routevit.models.vit import BigLittleViT, BigLittleViTConfig, h_b_schedule

TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "num_heads": 2, "little_dim": 16, "little_heads": 1}

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny(name: str = "blvit_deit_b_t", **kw: object) -> BigLittleViT:
    torch.manual_seed(0)
    return routevit.create_model(name, **{**TINY, "num_classes": 5, **kw}).eval()


def test_registered_recipes() -> None:
    assert routevit.list_models("blvit_deit_*") == ["blvit_deit_b_t", "blvit_deit_h_b", "blvit_deit_s_t"]


def test_paper_schedules() -> None:
    bt = BigLittleViTConfig().schedule
    assert bt.kinds == ("full",) + ("big_little",) * 11
    assert bt.predict_after == (1, 4, 7, 10)
    hb = h_b_schedule(32)
    assert hb.kinds[:9] == ("full",) * 9
    assert all(k == ("big_little" if i % 2 == 0 else "performance") for i, k in enumerate(hb.kinds[9:]))
    p_blocks = hb.depth  # every layer has a P-block (full layers are vanilla P-width layers)
    assert (p_blocks, hb.count("big_little")) == (32, 12)
    assert hb.predict_after == (8, 16, 24)
    with torch.device("meta"):  # the real sizes, without allocating 700M parameters
        hb_model = routevit.create_model("blvit_deit_h_b")
    assert hb_model.config.embed_dim == 1280 and hb_model.pos_embed.shape == (1, 257, 1280)
    assert hb_model.encoder.blocks[9].efficiency.attn.inner_dim == 768


@pytest.mark.parametrize("depth", [4, 5, 8, 16])
def test_reduced_h_b_keeps_its_shape(depth: int) -> None:
    s = h_b_schedule(depth)
    first = s.kinds.index("big_little")
    assert s.kinds[:first] == ("full",) * first and s.predict_after[0] < first + 1
    assert "performance" in s.kinds and len(s.predict_after) == 3


def test_bad_configs_name_what_is_expected() -> None:
    with pytest.raises(TypeError, match=r"unknown override\(s\) \['depht'\].*'depth'"):
        routevit.create_model("blvit_deit_b_t", depht=4)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        routevit.create_model("blvit_deit_b_t", img_size=30)
    with pytest.raises(ValueError, match="depth >= 4"):
        routevit.create_model("blvit_deit_h_b", depth=3)
    with pytest.raises(ValueError, match="keep_ratio"):
        routevit.create_model("blvit_deit_b_t", keep_ratio=0.0)
    with pytest.raises(ValueError, match="unknown layout"):
        BigLittleViTConfig(layout="x_y")


def test_bad_inputs() -> None:
    model = tiny()
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\), got \(1, 3, 64, 64\)"):
        model(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(TypeError, match="torch.Tensor"):
        model([1, 2, 3])


def test_timm_interface_shapes() -> None:
    model = tiny(depth=4)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 17, 64)
        assert model.forward_head(feats, pre_logits=True).shape == (2, 64)
        assert torch.equal(model(x), model.forward_head(feats))
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(x).shape == (2, 64)
    assert {"pos_embed", "cls_token", "encoder.blocks.1.fuse_attn.gamma"} <= model.no_weight_decay()


@pytest.mark.parametrize("keep_ratio", [0.1, 0.25, 0.5, 1.0])
def test_keep_ratio_sets_routed_tokens_and_cls_is_kept(keep_ratio: float) -> None:
    model = tiny(depth=8)
    model.set_keep_ratio(keep_ratio)
    with torch.no_grad():
        _, routes = model.forward_features_with_routes(torch.randn(3, 3, 32, 32))
    assert len(routes) == len(model.config.schedule.predict_after) == 3
    for r in routes:
        assert r.num_selected == math.ceil(keep_ratio * 17)
        assert (r.indices[:, 0] == 0).all()  # sorted ascending, so CLS (position 0) comes first
    masks = model.route_masks(routes)
    assert masks.shape == (3, 3, 4, 4) and int(masks[0, 0].sum()) == math.ceil(keep_ratio * 17) - 1


def test_set_keep_ratio_changes_the_output() -> None:
    model = tiny(depth=4)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        low = model(x)
        model.set_keep_ratio(1.0)
        high = model(x)
    assert not torch.allclose(low, high)


def test_batch_split_invariance() -> None:
    model = tiny("blvit_deit_h_b", depth=6)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        full, routes = model.forward_features_with_routes(x)
        halves = [model.forward_features_with_routes(x[i : i + 2]) for i in (0, 2)]
    torch.testing.assert_close(full, torch.cat([h[0] for h in halves]), rtol=1e-5, atol=1e-5)
    for j, r in enumerate(routes):
        torch.testing.assert_close(r.indices, torch.cat([h[1][j].indices for h in halves]))


def test_gradients_reach_every_router_in_train_mode() -> None:
    model = tiny("blvit_deit_h_b", depth=8).train()
    with torch.no_grad():  # alpha starts at 0, which gives the routers zero gradient
        for name, p in model.named_parameters():
            if ".alpha_" in name:
                p.fill_(0.5)
    model(torch.randn(2, 3, 32, 32)).square().mean().backward()
    for name, router in model.encoder.routers.items():
        grad = router.proj.weight.grad
        assert grad is not None and grad.abs().sum() > 0, f"router after layer {name} got no gradient"


def test_forward_does_not_mutate_state() -> None:
    model = tiny(depth=4, drop_path_rate=0.1).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model(torch.randn(2, 3, 32, 32))
    for k, v in model.state_dict().items():
        assert torch.equal(before[k], v), k


def test_routevit_imports_and_builds_without_timm() -> None:
    """timm and safetensors are optional: block them and use the package in a fresh interpreter."""
    code = (
        "import sys; sys.modules['timm'] = None; sys.modules['safetensors'] = None\n"
        "import routevit\n"
        "m = routevit.create_model('blvit_deit_s_t', img_size=32, depth=2)\n"
        "assert routevit.interop.timm.load_timm_weights is not None\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env=env, timeout=120)
