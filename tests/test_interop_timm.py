"""Loading timm / DeiT checkpoints: equivalence with timm at keep_ratio 1 and the error paths.

timm is the independent reference: its models are built with random weights, saved to a file
and loaded through routevit's real loading code.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

timm = pytest.importorskip("timm")
pytest.importorskip("safetensors")

from _vit_helpers import rel_err, save_checkpoint, single_thread, timm_vit  # noqa: E402, F401

import routevit  # noqa: E402
from routevit.interop.timm import (  # noqa: E402
    big_little_from_timm,
    load_little_weights,
    load_timm_weights,
    resample_pos_embed,
)

pytestmark = pytest.mark.usefixtures("single_thread")

TOL = 1e-4


def _assert_matches_timm(model: torch.nn.Module, vit: torch.nn.Module, x: torch.Tensor) -> None:
    model.eval()
    with torch.no_grad():
        ours, ref = model.forward_features(x), vit.forward_features(x)
        assert ours.shape == ref.shape
        assert rel_err(ours, ref) <= TOL
        assert rel_err(model.forward_head(ours), vit.forward_head(ref)) <= TOL


def test_b_t_reproduces_deit_base_full_config(tmp_path: Path) -> None:
    """The paper's B+T exactly: 12 layers, 768 wide, 224 px, from a DeiT-B safetensors file."""
    vit = timm_vit("deit_base_patch16_224")
    path = save_checkpoint(vit.state_dict(), tmp_path / "deit_b.safetensors")
    model = routevit.create_model("blvit_deit_b_t", pretrained=path, keep_ratio=1.0)
    _assert_matches_timm(model, vit, torch.randn(1, 3, 224, 224))


def test_full_deit_b_checkpoint_loads_strictly_and_leaves_new_parts_fresh(tmp_path: Path) -> None:
    """Every key of a 224 px DeiT-B file lands in the P path (strict: nothing missing or unexpected);
    the E path, routers, alpha and gamma keep exactly their fresh initial values."""
    vit = timm_vit("deit_base_patch16_224")
    path = save_checkpoint(vit.state_dict(), tmp_path / "deit_b.safetensors")
    model = routevit.create_model("blvit_deit_b_t")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_timm_weights(model, path, strict=True)
    assert report.missing == [] and report.unexpected == []
    assert len(report.loaded) == len(vit.state_dict())  # one model key per checkpoint key
    after = model.state_dict()
    new_parts = (".efficiency.", "encoder.routers.", "alpha_", "fuse_")
    fresh = [k for k in after if any(p in k for p in new_parts)]
    assert fresh and all(torch.equal(after[k], before[k]) for k in fresh)
    assert sorted(report.fresh) == sorted(fresh)
    ours = after["encoder.blocks.5.performance.attn.qkv.weight"]
    assert torch.equal(ours, vit.state_dict()["blocks.5.attn.qkv.weight"])


def test_s_t_reproduces_deit_small_from_deit_style_bin(tmp_path: Path) -> None:
    """Official DeiT files wrap the weights as {"model": state_dict}."""
    vit = timm_vit("deit_small_patch16_224", img_size=32)
    path = save_checkpoint({"model": vit.state_dict(), "epoch": 299}, tmp_path / "deit_s.bin")
    model = routevit.create_model("blvit_deit_s_t", pretrained=path, keep_ratio=1.0, img_size=32)
    assert model.config.depth == 12
    _assert_matches_timm(model, vit, torch.randn(2, 3, 32, 32))


def test_reduced_h_b_reproduces_vit_huge(tmp_path: Path) -> None:
    vit = timm_vit("vit_huge_patch14_224", img_size=56, depth=4, num_classes=10)
    path = save_checkpoint(vit.state_dict(), tmp_path / "vit_h.pth")
    model = routevit.create_model(
        "blvit_deit_h_b", pretrained=path, keep_ratio=1.0, img_size=56, depth=4, num_classes=10
    )
    assert set(model.config.schedule.kinds) == {"full", "big_little", "performance"}
    _assert_matches_timm(model, vit, torch.randn(2, 3, 56, 56))


@pytest.mark.parametrize("img_size", [96, 32])
def test_pos_embed_resampled_like_timm(tmp_path: Path, img_size: int) -> None:
    vit = timm_vit("deit_small_patch16_224", img_size=64, depth=2)
    path = save_checkpoint(vit.state_dict(), tmp_path / "deit_s.pth")
    # timm's own loader, resampling for the new size, is the reference
    ref = timm.create_model(
        "deit_small_patch16_224",
        pretrained=True,
        pretrained_cfg_overlay={"file": str(path)},
        img_size=img_size,
        depth=2,
    ).eval()
    model = routevit.create_model("blvit_deit_s_t", img_size=img_size, depth=2, keep_ratio=1.0)
    report = load_timm_weights(model, path)
    assert any("pos_embed resampled" in n for n in report.notes)
    assert rel_err(model.pos_embed.detach(), ref.pos_embed.detach()) <= 1e-6
    _assert_matches_timm(model, ref, torch.randn(1, 3, img_size, img_size))


def test_resample_pos_embed_keeps_cls_and_identity() -> None:
    pos = torch.randn(1, 1 + 16, 8)
    assert resample_pos_embed(pos, 4) is pos
    out = resample_pos_embed(pos, 6)
    assert out.shape == (1, 37, 8)
    assert torch.equal(out[:, :1], pos[:, :1])
    with pytest.raises(ValueError, match="square grid"):
        resample_pos_embed(torch.randn(1, 1 + 15, 8), 4)


def _tiny_state() -> dict[str, torch.Tensor]:
    return timm_vit("deit_tiny_patch16_224", img_size=32, depth=2).state_dict()


def test_report_names_missing_and_unexpected_keys(tmp_path: Path) -> None:
    state = _tiny_state()
    del state["blocks.1.mlp.fc1.weight"]
    state["blocks.7.mlp.fc1.weight"] = torch.zeros(1)
    path = save_checkpoint(state, tmp_path / "t.pth")
    model = routevit.create_model(
        "blvit_deit_b_t", img_size=32, depth=2, embed_dim=192, num_heads=3, little_dim=48, little_heads=1
    )
    expected = r"missing keys \[encoder\.blocks\.1\.performance\.mlp\.fc1\.weight\]; unexpected keys"
    with pytest.raises(ValueError, match=expected):
        load_timm_weights(model, path)  # strict by default
    with pytest.warns(UserWarning, match=r"blocks\.1\.performance\.mlp\.fc1\.weight"):
        report = load_timm_weights(model, path, strict=False)  # a partial load, asked for
    assert report.missing == ["encoder.blocks.1.performance.mlp.fc1.weight"]
    assert report.unexpected == ["blocks.7.mlp.fc1.weight"]
    assert "encoder.routers.1.proj.weight" in report.fresh
    assert any(".efficiency." in n for n in report.fresh)


def test_shape_mismatch_names_key_and_shapes(tmp_path: Path) -> None:
    path = save_checkpoint(_tiny_state(), tmp_path / "t.pth")
    model = routevit.create_model("blvit_deit_s_t", img_size=32, depth=2)
    with pytest.raises(ValueError, match=r"'cls_token'.*\(1, 1, 192\).*\(1, 1, 384\)"):
        load_timm_weights(model, path)


def test_other_class_count_leaves_head_fresh(tmp_path: Path) -> None:
    path = save_checkpoint(_tiny_state(), tmp_path / "t.pth")
    model = routevit.create_model(
        "blvit_deit_b_t", img_size=32, depth=2, embed_dim=192, num_heads=3, little_dim=48,
        little_heads=1, num_classes=10,
    )
    with pytest.raises(ValueError, match=r"missing keys \[head\.bias, head\.weight"):
        load_timm_weights(model, path)  # a head for other classes is not loaded: only if asked
    report = load_timm_weights(model, path, allow_missing=("head.*",))
    assert "head.weight" in report.fresh and "head.weight" not in report.loaded
    assert any("1000 classes" in n for n in report.notes)


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("deit_tiny_distilled_patch16_224", {}, "distilled DeiT"),
        ("vit_tiny_patch16_224", {"init_values": 1e-5}, "LayerScale"),
        ("vit_tiny_patch16_224", {"qk_norm": True}, "q/k normalisation"),
        ("vit_tiny_patch16_224", {"class_token": False, "global_pool": "avg", "fc_norm": False}, "no cls"),
        ("vit_tiny_patch16_224", {"reg_tokens": 2}, "register tokens"),
    ],
)
def test_unsupported_checkpoints_fail_loudly(tmp_path: Path, name: str, kwargs: dict, match: str) -> None:
    vit = timm_vit(name, img_size=32, depth=1, **kwargs)
    path = save_checkpoint(vit.state_dict(), tmp_path / "x.pth")
    model = routevit.create_model(
        "blvit_deit_b_t", img_size=32, depth=2, embed_dim=192, num_heads=3, little_dim=48, little_heads=1
    )
    with pytest.raises(ValueError, match=match):
        load_timm_weights(model, path)
    with pytest.raises(ValueError, match="cannot convert|unsupported"):
        big_little_from_timm(vit, little_dim=48, little_heads=1)


def test_bad_files(tmp_path: Path) -> None:
    model = routevit.create_model("blvit_deit_b_t", img_size=32, depth=2)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_timm_weights(model, tmp_path / "nope.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not read checkpoint"):
        load_timm_weights(model, garbage)
    bad_st = tmp_path / "garbage.safetensors"
    bad_st.write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="could not read checkpoint"):
        load_timm_weights(model, bad_st)
    odd = tmp_path / "weights.npz"
    odd.write_bytes(b"x")
    with pytest.raises(ValueError, match="unsupported checkpoint suffix"):
        load_timm_weights(model, odd)
    not_tensors = save_checkpoint({"model": {"cls_token": [1, 2]}}, tmp_path / "list.pth")
    with pytest.raises(ValueError, match="not tensors"):
        load_timm_weights(model, not_tensors)
    with pytest.raises(TypeError, match="checkpoint path or a state dict"):
        load_timm_weights(model, 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="BigLittleViT"):
        load_timm_weights(torch.nn.Linear(2, 2), garbage)  # type: ignore[arg-type]


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    """weights_only=True: a checkpoint that would run arbitrary code is not unpickled."""
    path = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "args": Path("x")}, path)
    model = routevit.create_model("blvit_deit_b_t", img_size=32, depth=2)
    with pytest.raises(ValueError, match="could not read checkpoint"):
        load_timm_weights(model, path)


def test_little_pretrained_fills_e_path_ffn(tmp_path: Path) -> None:
    big = timm_vit("deit_small_patch16_224", img_size=32, depth=4)
    little = timm_vit("deit_tiny_patch16_224", img_size=32, depth=4)
    big_path = save_checkpoint(big.state_dict(), tmp_path / "s.pth")
    little_path = save_checkpoint(little.state_dict(), tmp_path / "t.safetensors")
    model = routevit.create_model(
        "blvit_deit_s_t", pretrained=big_path, little_pretrained=little_path, img_size=32,
        depth=4, little_dim=192, little_heads=3,
    )
    e = model.encoder.blocks[2].efficiency
    assert torch.equal(e.mlp.fc1.weight, little.blocks[2].mlp.fc1.weight)
    assert torch.equal(e.mlp.fc2.bias, little.blocks[2].mlp.fc2.bias)
    assert torch.equal(e.attn.qkv.bias, little.blocks[2].attn.qkv.bias)
    report = load_little_weights(model, little_path)
    assert "encoder.blocks.1.efficiency.mlp_in.weight" in report.fresh
    assert len(report.loaded) == 3 * 5  # 3 E blocks x (qkv bias, fc1 w/b, fc2 w/b)
    wrong_width = routevit.create_model("blvit_deit_s_t", img_size=32, depth=4)  # little_dim 96
    with pytest.raises(ValueError, match="width 192.*little_dim 96"):
        load_little_weights(wrong_width, little_path)


def test_big_little_from_timm_instance() -> None:
    vit = timm_vit("deit_small_patch16_224", img_size=32, patch_size=8, depth=3, num_classes=7)
    model = big_little_from_timm(vit, little_dim=96, little_heads=2, keep_ratio=1.0)
    assert model.config.num_classes == 7 and model.config.patch_size == 8
    _assert_matches_timm(model, vit, torch.randn(2, 3, 32, 32))
    model.set_keep_ratio(0.25)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_big_little_from_timm_refuses_other_blocks() -> None:
    vit = timm_vit("vit_tiny_patch16_224", img_size=32, depth=1, act_layer="gelu_tanh")
    with pytest.raises(ValueError, match="GELU"):
        big_little_from_timm(vit, little_dim=48, little_heads=1)
    with pytest.raises(TypeError, match="VisionTransformer"):
        big_little_from_timm(torch.nn.Linear(2, 2), little_dim=48, little_heads=1)
