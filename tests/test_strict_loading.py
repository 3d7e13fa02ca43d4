"""One loader, strict by default: every path that reads weights fills what the model needs or
refuses with one short line; only the parts a vanilla checkpoint cannot have (E path, routers,
alpha, gamma) and what the caller names in ``allow_missing`` may stay fresh.

Checkpoints are tiny random models saved to files and read back through the real loaders.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

timm = pytest.importorskip("timm")
pytest.importorskip("safetensors")

from _vit_helpers import save_checkpoint  # noqa: E402

import routevit  # noqa: E402
from routevit.interop.weights import CheckpointMismatchError, group_keys, load_exact  # noqa: E402

VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2)
BLVIT = dict(VIT, little_dim=16, little_heads=1, num_classes=5)


def _vanilla(num_classes: int = 5) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", num_classes=num_classes, **VIT).state_dict()


def _resnet() -> dict[str, torch.Tensor]:
    return timm.create_model("resnet10t", num_classes=5).state_dict()


def test_a_checkpoint_of_another_model_is_refused_in_one_short_line(tmp_path: Path) -> None:
    path = save_checkpoint(_resnet(), tmp_path / "resnet.pth")
    with pytest.raises(CheckpointMismatchError, match="fills none of the BigLittleViT's parameters") as err:
        routevit.create_model("blvit_deit_s_t", pretrained=path, **BLVIT)
    message = str(err.value)
    assert "\n" not in message and len(message) < 600, message
    assert "resnet.pth" in message and "conv1" in message  # what came
    assert "patch_embed" in message or "cls_token" in message  # what was expected


def test_half_a_checkpoint_is_refused_and_the_missing_half_is_listed_by_pattern(tmp_path: Path) -> None:
    state = {k: v for k, v in _vanilla().items() if not k.startswith(("blocks.1.", "blocks.2."))}
    path = save_checkpoint(state, tmp_path / "half.safetensors")
    expected = r"missing keys \[encoder\.blocks\.1\.performance\.\* \(12\), encoder\.blocks\.2\."
    with pytest.raises(CheckpointMismatchError, match=expected) as err:
        routevit.create_model("blvit_deit_s_t", pretrained=path, **BLVIT)
    assert "\n" not in str(err.value) and len(str(err.value)) < 600


def test_a_vanilla_checkpoint_fills_all_but_the_big_little_parts(tmp_path: Path) -> None:
    state = _vanilla()
    path = save_checkpoint(state, tmp_path / "vit.pth")
    model = routevit.create_model("blvit_deit_s_t", pretrained=path, **BLVIT)
    assert torch.equal(model.encoder.blocks[2].performance.attn.qkv.weight, state["blocks.2.attn.qkv.weight"])
    assert torch.equal(model.head.weight, state["head.weight"])


def test_a_head_for_other_classes_loads_only_when_allowed(tmp_path: Path) -> None:
    path = save_checkpoint(_vanilla(num_classes=7), tmp_path / "vit7.pth")
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \[head\.bias, head\.weight\]"):
        routevit.create_model("blvit_deit_s_t", pretrained=path, **BLVIT)
    torch.manual_seed(1)
    model = routevit.create_model("blvit_deit_s_t", pretrained=path, allow_missing=("head.*",), **BLVIT)
    assert model.head.weight.shape == (5, 32)
    with pytest.raises(TypeError, match=r"sequence of name patterns"):
        routevit.create_model("blvit_deit_s_t", pretrained=path, allow_missing="head.*", **BLVIT)


def test_a_blvit_checkpoint_loads_by_name_exactly(tmp_path: Path) -> None:
    torch.manual_seed(2)
    trained = routevit.create_model("blvit_deit_s_t", **BLVIT)
    path = save_checkpoint(trained.state_dict(), tmp_path / "blvit.safetensors")
    model = routevit.create_model("blvit_deit_s_t", pretrained=path, **BLVIT)
    for key, value in trained.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    state = trained.state_dict()
    del state["encoder.routers.1.proj.weight"]
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \[encoder\.routers\.1\.proj\.weight\]"):
        load_exact(model, state)


def test_a_refused_load_leaves_the_model_untouched() -> None:
    model = routevit.create_model("blvit_deit_s_t", **BLVIT)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys \[extra\.weight\]"):
        load_exact(model, state)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_the_sam_loaders_agree(tmp_path: Path) -> None:
    pytest.importorskip("segment_anything")
    from routevit.interop.sam import build_sam

    sam_small = dict(img_size=64, window_size=2, depth=2, embed_dim=32, num_heads=2, global_attn_indexes=(1,))
    path = save_checkpoint(_resnet(), tmp_path / "resnet.pth")
    with pytest.raises(CheckpointMismatchError, match="fills none of the BigLittleSamEncoder's parameters"):
        routevit.create_model("sam_vit_b", pretrained=path, **sam_small)
    with pytest.raises(CheckpointMismatchError, match="fills none"):
        build_sam("sam_vit_b", checkpoint=path, **sam_small)


def test_group_keys_is_short_and_exact_for_few_keys() -> None:
    keys = [f"blocks.{i}.mlp.fc{j}.weight" for i in range(12) for j in (1, 2)] + ["head.weight"]
    expected = "[blocks.*.mlp.fc1.weight (12), blocks.*.mlp.fc2.weight (12), head.weight; 25 keys]"
    assert group_keys(keys) == expected
    assert group_keys(["a.b"]) == "[a.b]"
    many = [f"m{i}.layer{j}.w" for i in range(40) for j in range(5)]
    assert len(group_keys(many)) < 200


# --- the trainer's paths: model.pretrained, the teacher, checkpoints -------------------------


def _tiny_cfg(**fields: object):
    from routevit.train.config import ModelConfig

    kwargs = {"patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2}
    return ModelConfig(**{"name": "vit_tiny_patch16_224", "num_classes": 5, "img_size": 32,
                          "drop_path_rate": 0.0, "kwargs": kwargs, **fields})  # fmt: skip


def test_a_timm_student_loads_its_whole_file_head_included(tmp_path: Path) -> None:
    """timm's own loader drops the head of a file whose class count is not the model's default
    (1000): a 5-class file of a 5-class recipe came back with a random head."""
    from routevit.train.build import build_student

    state = _vanilla(num_classes=5)
    path = save_checkpoint(state, tmp_path / "teacher.safetensors")
    model = build_student(_tiny_cfg(pretrained=str(path)))
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_recipe_pretrained_of_another_model_or_other_classes_is_refused(tmp_path: Path) -> None:
    from routevit.train.build import build_student

    resnet = save_checkpoint(_resnet(), tmp_path / "resnet.pth")
    with pytest.raises(CheckpointMismatchError, match="fills none"):
        build_student(_tiny_cfg(pretrained=str(resnet)))
    blvit = dict(name="blvit_deit_s_t", kwargs={**VIT, "little_dim": 16, "little_heads": 1})
    blvit["kwargs"].pop("img_size")
    with pytest.raises(CheckpointMismatchError, match="fills none"):
        build_student(_tiny_cfg(pretrained=str(resnet), **blvit))
    other = save_checkpoint(_vanilla(num_classes=7), tmp_path / "seven.pth")
    with pytest.raises(CheckpointMismatchError, match="head.weight"):
        build_student(_tiny_cfg(pretrained=str(other)))
    model = build_student(_tiny_cfg(pretrained=str(other), allow_missing=("head.*",)))
    assert torch.equal(model.blocks[0].attn.qkv.weight, _vanilla(7)["blocks.0.attn.qkv.weight"])


def test_a_teacher_file_of_another_model_is_refused(tmp_path: Path) -> None:
    from routevit.train.build import build_teacher
    from routevit.train.config import recipe_from_dict

    half = {k: v for k, v in _vanilla().items() if not k.startswith("blocks.2.")}
    path = save_checkpoint(half, tmp_path / "half.pth")
    recipe = recipe_from_dict({
        "model": {"num_classes": 5, "img_size": 32},
        "distill": {"teacher": "vit_tiny_patch16_224", "teacher_checkpoint": str(path),
                    "teacher_kwargs": {"patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2}},
    })  # fmt: skip
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \[blocks\.2\."):
        build_teacher(recipe)


def test_a_corrupt_checkpoint_directory_is_a_one_line_error(tmp_path: Path) -> None:
    from routevit.train.checkpoint import load_train_state, load_weights

    ckpt = tmp_path / "step-00000001"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{truncated")
    (ckpt / "state.pt").write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(ValueError, match=r"could not read checkpoint .*model\.safetensors") as err:
        load_weights(ckpt)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"could not read checkpoint .*state\.pt") as err:
        load_train_state(ckpt)
    assert "\n" not in str(err.value) and "weights_only=False" not in str(err.value)


def test_a_ddp_wrapped_sam_state_dict_loads(tmp_path: Path) -> None:
    """torch's DistributedDataParallel prefixes every key with ``module.``; the one reader strips it
    for the SAM loader as for the others (already so before this change; kept by this test)."""
    sam_small = dict(img_size=64, window_size=2, depth=2, embed_dim=32, num_heads=2, global_attn_indexes=(1,))
    torch.manual_seed(3)
    state = routevit.create_model("sam_vit_b", **sam_small).state_dict()
    path = save_checkpoint({f"module.{k}": v for k, v in state.items()}, tmp_path / "ddp.pth")
    model = routevit.create_model("sam_vit_b", pretrained=path, **sam_small)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
