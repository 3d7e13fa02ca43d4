"""Portable weights: save_pretrained writes model.safetensors + config.json atomically, and every
way of naming a model (create_model, pretrained=, visualize, eval) reads such a folder back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _vit_helpers import single_thread  # noqa: F401 - used by pytestmark

import routevit
from routevit import hub
from routevit.layers import Schedule
from routevit.models.vit import BigLittleViT, BigLittleViTConfig

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "num_heads": 2, "little_dim": 16, "little_heads": 1}
TINY_SAM = {"img_size": 64, "embed_dim": 32, "num_heads": 2, "little_dim": 16, "little_heads": 2,
            "window_size": 3, "out_chans": 16}  # fmt: skip
CLASSES = ["cat", "dog", "ship", "truck", "plane"]


def tiny(**kw: object) -> torch.nn.Module:
    torch.manual_seed(0)
    kwargs = {"depth": 4, "num_classes": 5, "keep_ratio": 0.5, **TINY, **kw}
    return routevit.create_model("blvit_deit_b_t", **kwargs)


def same_outputs(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> bool:
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    model = tiny()
    out = model.save_pretrained(tmp_path / "blvit", class_names=CLASSES, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["model_name"] == "blvit_deit_b_t" and config["routevit_version"] == routevit.__version__
    assert config["keep_ratio"] == 0.5 and config["class_names"] == CLASSES
    assert config["architecture"]["depth"] == 4 and config["mean"] == [0.5] * 3
    x = torch.randn(2, 3, 32, 32)
    sources = (out, out / "model.safetensors")
    loads = [routevit.create_model(out)]
    loads += [routevit.create_model("blvit_deit_b_t", pretrained=source) for source in sources]
    for loaded in loads:
        assert same_outputs(model, loaded, x)
        assert loaded.keep_ratio == 0.5
        cfg = loaded.pretrained_cfg
        assert cfg["label_names"] == tuple(CLASSES) and cfg["mean"] == (0.5, 0.5, 0.5)
        assert cfg["input_size"] == (3, 32, 32) and cfg["num_classes"] == 5
    assert routevit.create_model(out, keep_ratio=0.25).keep_ratio == 0.25  # the run-time dial still applies


def test_a_saved_model_saved_again_keeps_its_facts(tmp_path: Path) -> None:
    first = tiny().save_pretrained(tmp_path / "a", class_names=CLASSES, mean=(0.5, 0.5, 0.5), std=(0.2,) * 3)
    second = routevit.create_model(first).save_pretrained(tmp_path / "b")
    a, b = (json.loads((p / "config.json").read_text()) for p in (first, second))
    assert a == b


def test_a_model_built_from_its_class_round_trips_with_its_schedule(tmp_path: Path) -> None:
    schedule = Schedule(("full", "big_little", "performance", "big_little"), (1, 3))
    torch.manual_seed(0)
    model = BigLittleViT(BigLittleViTConfig(num_classes=3, depth=4, layout=schedule, **TINY))
    out = hub.save_pretrained(model, tmp_path / "custom")
    assert json.loads((out / "config.json").read_text())["model_name"] is None
    loaded = routevit.create_model(out)
    assert type(loaded) is BigLittleViT and loaded.config.schedule == schedule
    assert same_outputs(model, loaded, torch.randn(1, 3, 32, 32))


def test_a_sam_encoder_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(0)
    encoder = routevit.create_model("blvit_sam_b_t", **TINY_SAM)
    out = encoder.save_pretrained(tmp_path / "sam")
    config = json.loads((out / "config.json").read_text())
    assert config["task"] == "sam" and config["crop_pct"] == 1.0 and config["num_classes"] == 0
    loaded = routevit.create_model("blvit_sam_b_t", pretrained=out)
    assert same_outputs(encoder, loaded, torch.randn(1, 3, 64, 64))
    assert loaded.config.schedule == encoder.config.schedule


def test_loading_is_strict_and_names_what_does_not_fit(tmp_path: Path) -> None:
    out = tiny().save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="holds a blvit_deit_b_t model, not blvit_deit_s_t"):
        routevit.create_model("blvit_deit_s_t", pretrained=out)
    with pytest.raises(ValueError, match=r"shape mismatch.*head\.weight"):
        routevit.create_model(out, num_classes=7)
    from safetensors.torch import load_file, save_file

    state = load_file(str(out / "model.safetensors"))
    state.pop("norm.weight")
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(out / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing \['norm.weight'\].*unexpected \['extra.weight'\]"):
        routevit.create_model(out)


def test_writing_is_atomic_and_never_replaces_foreign_files(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "m"
    tiny(num_classes=5).save_pretrained(target, class_names=CLASSES)
    before = (target / "model.safetensors").read_bytes()

    import safetensors.torch

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        tiny(num_classes=3).save_pretrained(target)
    monkeypatch.undo()
    assert (target / "model.safetensors").read_bytes() == before  # the old folder, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary folder left
    tiny(num_classes=3).save_pretrained(target)  # replacing a folder of this format is fine
    assert json.loads((target / "config.json").read_text())["num_classes"] == 3
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="did not write"):
        tiny().save_pretrained(foreign)
    (foreign / "config.json").write_text('{"model_type": "vit"}')  # another project's config
    assert hub.pretrained_folder(foreign) is None
    with pytest.raises(ValueError, match="neither a registered model name nor a save_pretrained folder"):
        routevit.create_model(foreign)


def test_visualize_takes_a_folder(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    from PIL import Image

    from routevit.cli import main
    from routevit.visualize import load_model

    out = tiny().save_pretrained(tmp_path / "m", mean=(0.5, 0.5, 0.5), std=(0.25,) * 3)
    loaded = load_model(out)
    assert loaded.mean == (0.5, 0.5, 0.5) and not loaded.model.training
    image = tmp_path / "x.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(image)
    assert main(["visualize", str(out), str(image), "--out", str(tmp_path / "r.png")]) == 0
    assert main(["visualize", str(out), str(image), "--out", str(tmp_path / "r.png"), "--model",
                 "blvit_sam_b_t"]) == 2  # fmt: skip


def test_eval_takes_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("timm")
    from train_util import make_image_folder

    from routevit.cli import main

    data = make_image_folder(tmp_path / "val", classes=5, per_class=2, size=32)
    out = tiny().save_pretrained(tmp_path / "m", class_names=CLASSES)
    capsys.readouterr()
    assert main(["eval", str(out), "--data", str(data), "--batch-size", "4", "--workers", "0",
                 "--device", "cpu"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 10
    assert result["gmacs"] == pytest.approx(routevit.flops.count(tiny(), (3, 32, 32)))
    sam = routevit.create_model("blvit_sam_b_t", **TINY_SAM).save_pretrained(tmp_path / "sam")
    assert main(["eval", str(sam), "--data", str(data)]) == 2
    assert "prompt encoder and mask decoder" in capsys.readouterr().err


def test_a_training_run_exports_to_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("timm")
    from train_util import make_image_folder, tiny_recipe

    from routevit.cli import main
    from routevit.train import train
    from routevit.train.export import export_pretrained

    data = make_image_folder(tmp_path / "data", classes=2, per_class=4, size=16)
    model = {"name": "blvit_deit_s_t", "keep_ratio": 0.5, "kwargs": {
        "patch_size": 8, "embed_dim": 32, "num_heads": 2, "little_dim": 16, "little_heads": 1, "depth": 3}}
    augment = {"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2], "crop_pct": 1.0}
    recipe = tiny_recipe(data, tmp_path / "run", model=model, train={"epochs": 1}, augment=augment)
    train(recipe)
    out = export_pretrained(tmp_path / "run", tmp_path / "exported")
    config = json.loads((out / "config.json").read_text())
    assert config["class_names"] == ["class_0", "class_1"] and config["mean"] == [0.5] * 3
    assert config["crop_pct"] == 1.0 and config["keep_ratio"] == 0.5
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--data", str(data), "--holdout-per-class", "2"]) == 0
    from_run = json.loads(capsys.readouterr().out)
    assert main(["eval", str(out), "--data", str(data), "--workers", "0"]) == 0  # all the images
    from_folder = json.loads(capsys.readouterr().out)
    assert (from_run["images"], from_folder["images"]) == (4, 8)  # 2 per class held out, all the images
    assert from_folder["gmacs"] == from_run["gmacs"]
