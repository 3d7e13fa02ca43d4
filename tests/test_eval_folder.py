"""``routevit eval`` scores exactly the folder it is given: every image (a hold-out only when
asked), of the classes the checkpoint was trained on, from a run folder or a weights file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from train_util import make_image_folder, tiny_recipe

from routevit import create_model
from routevit.cli import main
from routevit.train import checkpoint as ckpt
from routevit.train import train

BLVIT = {"patch_size": 8, "embed_dim": 32, "num_heads": 2, "little_dim": 16, "little_heads": 1, "depth": 3}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data"), classes=3, per_class=5)


@pytest.fixture(scope="module")
def run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    recipe = tiny_recipe(data, out, model={"num_classes": 3}, train={"epochs": 1, "batch_size": 3},
                         data={"holdout_per_class": 1})  # fmt: skip
    train(recipe)
    return out


def test_checkpoints_record_the_class_names(run: Path) -> None:
    meta = json.loads((ckpt.resolve_checkpoint(run) / "meta.json").read_text())
    assert meta["classes"] == ["class_0", "class_1", "class_2"]


def test_every_image_of_the_folder_is_scored(run: Path, data: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["eval", str(run), "--data", str(data), "--workers", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 15
    assert main(["eval", str(run), "--data", str(data), "--workers", "0", "--holdout-per-class", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 6


def test_other_classes_are_refused(
    run: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    four = make_image_folder(tmp_path / "four", classes=4, per_class=1)
    assert main(["eval", str(run), "--data", str(four)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "the class folders the checkpoint was trained on, [class_0, class_1, class_2] (3)" in err[0]
    assert "got [class_0, class_1, class_2, class_3] (4)" in err[0]
    renamed = tmp_path / "renamed"
    shutil.copytree(data, renamed)
    (renamed / "class_2").rename(renamed / "dog")
    assert main(["eval", str(run), "--data", str(renamed)]) == 2
    assert "got [class_0, class_1, dog] (3)" in capsys.readouterr().err


def test_a_weights_file_with_model(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch.manual_seed(0)
    model = create_model("blvit_deit_s_t", num_classes=3, img_size=16, **BLVIT).eval()
    weights = tmp_path / "blvit.safetensors"
    save_file(model.state_dict(), str(weights))
    sets = [f"--set={k}={v}" for k, v in {**BLVIT, "num_classes": 3, "img_size": 16}.items()]
    assert main(["eval", str(weights), "--model", "blvit_deit_s_t", "--data", str(data), "--workers", "0",
                 *sets]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 15 and result["checkpoint"] == str(weights)
    assert main(["eval", str(weights), "--data", str(data)]) == 2
    assert "name its architecture with --model NAME" in capsys.readouterr().err
    two = [s for s in sets if "num_classes" not in s] + ["--set=num_classes=2"]
    assert main(["eval", str(weights), "--model", "blvit_deit_s_t", "--data", str(data), *two]) == 2
    assert "head.weight has shape (3, 32) but the BigLittleViT expects (2, 32)" in capsys.readouterr().err
