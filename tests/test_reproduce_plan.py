"""`routevit reproduce cifar10 --plan` and the step timing behind it (`routevit.train.time_steps`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from routevit.cli import main
from routevit.reproduce import Budget
from routevit.reproduce.cifar10 import PRESETS, row_name, row_recipe, rows, training_order
from routevit.train import time_steps, train
from routevit.train.config import replace_fields
from tests.train_util import make_image_folder

QUICK = Budget(**{**PRESETS["quick"], "batch_size": 8, "holdout_per_class": 2})


@pytest.fixture()
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ROUTEVIT_CACHE", str(tmp_path / "cache"))
    return make_image_folder(tmp_path / "data", classes=10, per_class=10, size=32)


def test_plan_lists_every_training_in_order_and_trains_nothing(folder: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    only = ["blvit", "t4_lambda1", "narrow"]
    args = ["reproduce", "cifar10", "--preset", "quick", "--data", str(folder), "--out", str(out),
            "--batch-size", "8", "--holdout-per-class", "2", "--plan", "--only", *only]  # fmt: skip
    assert main(args) == 0
    assert not out.exists()  # nothing trained, nothing written
    table = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    names = [cells[0].strip() for cells in table[1:]]
    assert names == [row_name(row, seed) for row, seed in training_order(only, QUICK)]
    by_name = {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in table[1:]}
    # 80 training images (2 of 10 per class held out) in batches of 8
    assert {cells[1] for cells in by_name.values()} == {"10"}
    # a loss weight does not change a step's work: the Table 4 row reuses the bLViT-mini's timing
    assert by_name["t4_lambda1"][2] == by_name["blvit_seed0"][2]
    assert by_name["narrow_seed0"][2] != by_name["blvit_seed0"][2]


def test_timed_steps_per_epoch_are_the_steps_training_takes(folder: Path, tmp_path: Path):
    teacher = next(r for r in rows() if r.key == "teacher")
    recipe = row_recipe(teacher, 0, str(folder), tmp_path / "out", QUICK)
    cost = time_steps(recipe, steps=2, warmup=1)
    assert cost.seconds_per_step > 0 and cost.validation_seconds > 0
    assert not (tmp_path / "out").exists()  # the timed steps wrote their files elsewhere
    trained = train(replace_fields(recipe, train={"epochs": 2}))
    events = [json.loads(line) for line in (trained.output / "metrics.jsonl").read_text().splitlines()]
    end = next(e for e in events if e["event"] == "end")
    assert end["step"] == 2 * cost.steps_per_epoch == trained.step


def test_timing_refuses_an_epoch_shorter_than_the_steps(folder: Path, tmp_path: Path):
    teacher = next(r for r in rows() if r.key == "teacher")
    recipe = row_recipe(teacher, 0, str(folder), tmp_path / "out", QUICK)
    with pytest.raises(ValueError, match="at least 12 steps, got 10"):
        time_steps(recipe, steps=10, warmup=2)
