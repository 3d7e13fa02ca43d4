"""Recipes: YAML onto frozen dataclasses, overrides with type checks, errors that name the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from routevit.cli import main
from routevit.train import load_recipe, recipe_from_dict
from routevit.train.config import Recipe, recipe_to_dict, replace_fields

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").rglob("*.yaml"))


def _write(tmp_path: Path, values: dict) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_defaults_are_the_papers() -> None:
    r = Recipe()
    assert (r.distill.lambda_fd, r.optim.lr, r.optim.opt, r.train.batch_size) == (2.5, 5e-4, "adamw", 1024)
    assert r.optim.clip_grad_norm is not None  # clipping on by default
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.train.epochs = 1  # type: ignore[misc]


def test_unknown_key_names_it_and_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"unknown recipe key\(s\) \['learning_rate'\] in section 'optim'.*'lr'"
    ):
        load_recipe(_write(tmp_path, {"optim": {"learning_rate": 1e-3}}))
    with pytest.raises(ValueError, match=r"\['optimizer'\] at the top level.*'optim'"):
        recipe_from_dict({"optimizer": {}})


@pytest.mark.parametrize(
    "values, message",
    [
        ({"train": {"epochs": "ten"}}, "train.epochs expects an integer, got 'ten'"),
        ({"train": {"epochs": 0}}, "train.epochs must be an integer >= 1"),
        ({"train": {"amp": "fp8"}}, r"train.amp must be one of \['none', 'bf16', 'fp16'\]"),
        ({"train": {"ema": "yes"}}, "train.ema expects true or false"),
        ({"optim": {"betas": [0.9]}}, "optim.betas expects a list of 2 values"),
        ({"model": {"kwargs": [1]}}, "model.kwargs expects a mapping"),
        ({"data": {"holdout_per_class": 5, "val_dir": "val"}}, "and data.val_dir are exclusive"),
    ],
)
def test_bad_values_name_the_key(values: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        recipe_from_dict(values)


def test_yaml_quirks_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("optim:\n  lr: 5e-4\n  betas: [0.9, 0.95]\n")  # YAML 1.1 reads 5e-4 as a string
    r = load_recipe(path, ["optim.lr=1e-3", "train.epochs=3", "model.pretrained=null", "train.ema=true"])
    assert r.optim.lr == 1e-3 and isinstance(r.optim.lr, float)
    assert r.optim.betas == (0.9, 0.95)
    assert (r.train.epochs, r.model.pretrained, r.train.ema) == (3, None, True)
    with pytest.raises(ValueError, match="train.epochs expects an integer, got 2.5"):
        load_recipe(path, ["train.epochs=2.5"])
    with pytest.raises(ValueError, match="must be section.key"):
        load_recipe(path, ["epochs=2"])
    with pytest.raises(ValueError, match="must look like section.key=value"):
        load_recipe(path, ["train.epochs"])
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_recipe(tmp_path / "nope.yaml")


def test_round_trip_and_replace() -> None:
    r = Recipe()
    assert recipe_from_dict(recipe_to_dict(r)) == r
    assert replace_fields(r, train={"epochs": 2}).train.epochs == 2
    with pytest.raises(ValueError, match="train.epochs must be"):
        replace_fields(r, train={"epochs": 0})


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_bundled_recipes_load(path: Path) -> None:
    r = load_recipe(path)
    if path.parent.name == "recipes" and r.task == "sam":  # the paper's SAM recipes (section 4.2)
        assert (r.train.epochs, r.train.batch_size, r.optim.lr, r.distill.lambda_fd) == (10, 8, 5e-4, 2.5)
        assert r.optim.opt == "adamw" and r.model.pretrained == r.distill.teacher_checkpoint is not None
        pairs = {("blvit_sam_b_t", "sam_vit_b"), ("blvit_sam_h_b", "sam_vit_h")}
        assert (r.model.name, r.distill.teacher) in pairs
    elif path.parent.name == "recipes":  # the paper's ImageNet recipes
        assert (r.train.epochs, r.train.batch_size, r.optim.lr, r.distill.lambda_fd) == (300, 1024, 5e-4, 2.5)
        assert r.distill.teacher is not None and r.model.pretrained is not None


def test_cli_reports_recipe_and_data_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", str(_write(tmp_path, {"train": {"epochz": 1}}))]) == 2
    assert "unknown recipe key(s) ['epochz']" in capsys.readouterr().err
    missing = tmp_path / "no-such-data"
    assert (
        main(["train", str(_write(tmp_path, {})), "--data", str(missing), "--output", str(tmp_path / "o")])
        == 2
    )
    assert f"data folder {str(missing)!r} does not exist" in capsys.readouterr().err
    assert main(["train", str(_write(tmp_path, {})), "--output", str(tmp_path / "o")]) == 2
    assert "pass --data DIR" in capsys.readouterr().err


def test_both_tasks_read_a_schedule_from_the_recipe():
    """A schedule written in YAML reaches the classifier (layout) and the SAM encoder (schedule)."""
    from routevit.layers import Schedule
    from routevit.train.build import build_student
    from routevit.train.config import model_kwargs
    from routevit.train.sam_task import encoder_overrides

    mapping = {"kinds": ["full", "performance", "big_little"], "predict_after": [1]}
    r = recipe_from_dict({"model": {"name": "blvit_deit_s_t", "num_classes": 3, "img_size": 32,
                                    "kwargs": {"depth": 3, "layout": mapping}}})
    model = build_student(r.model, pretrained=False)
    assert model.config.schedule == Schedule(("full", "performance", "big_little"), (1,))
    sam = recipe_from_dict({"task": "sam", "model": {"name": "blvit_sam_b_t", "img_size": 64,
                                                     "kwargs": {"depth": 3, "schedule": mapping}}})
    assert encoder_overrides(sam)["schedule"] == Schedule(("full", "performance", "big_little"), (1,))
    with pytest.raises(ValueError, match="kinds and predict_after"):
        model_kwargs({"layout": {"kind": ["full"]}})
