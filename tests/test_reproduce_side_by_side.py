"""`routevit reproduce --jobs N`: rows trained side by side, each in its own process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from routevit.reproduce import Budget, rows
from routevit.reproduce.cifar10 import load_row_model, matched_reductions, row_name, row_recipe, train_row
from routevit.reproduce.side_by_side import train_side_by_side
from routevit.train.config import replace_fields
from tests.train_util import make_image_folder

ROWS = {row.key: row for row in rows()}


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Budget]:
    root = tmp_path_factory.mktemp("side_by_side")
    data = make_image_folder(root / "data", classes=10, per_class=4, size=32)
    budget = Budget(teacher_epochs=1, student_epochs=2, seeds=(0,), batch_size=8, holdout_per_class=1)
    train_row(row_recipe(ROWS["teacher"], 0, str(data), root / "out", budget))
    return data, root / "out", budget


def _recipes(data: Path, out: Path, budget: Budget, keys: list[str]):
    matched = matched_reductions(budget, out)
    return [(row_name(ROWS[k], 0), row_recipe(ROWS[k], 0, str(data), out, budget, matched)) for k in keys]


def test_rows_trained_side_by_side_match_rows_trained_in_this_process(teacher_run, tmp_path: Path):
    """The reference: the same recipes trained one after the other by ``train_row`` (two threads
    here, one per child there: only the summation order differs)."""
    data, out, budget = teacher_run
    keys = ["blvit_seed0", "evit_seed0"]
    side = [(name, replace_fields(r, run={"output": str(tmp_path / "side" / name)}))
            for name, r in _recipes(data, out, budget, ["blvit", "evit"])]  # fmt: skip
    recorded: dict[str, float] = {}
    wall = train_side_by_side(side, jobs=2, record=recorded.__setitem__)
    assert sorted(recorded) == keys and wall > 0
    assert all(0 < s <= wall for s in recorded.values())  # each row's own time, within the call's
    for name, recipe in side:
        assert "epoch 2:" in (Path(recipe.run.output) / "train.log").read_text()
        reference = replace_fields(recipe, run={"output": str(tmp_path / "here" / name)})
        train_row(reference)
        got, expected = load_row_model(recipe).state_dict(), load_row_model(reference).state_dict()
        assert got.keys() == expected.keys()
        for key in got:
            assert torch.allclose(got[key], expected[key], atol=1e-4, rtol=1e-4), (name, key)
    # and the comparison can fail: one more epoch moves the weights far beyond that tolerance
    longer = replace_fields(side[0][1], run={"output": str(tmp_path / "longer")}, train={"epochs": 3})
    train_row(longer)
    moved = load_row_model(longer).state_dict()
    first = load_row_model(side[0][1]).state_dict()
    assert any(not torch.allclose(moved[k], first[k], atol=1e-4, rtol=1e-4) for k in first)


def test_a_failing_row_is_reported_with_its_log(teacher_run, tmp_path: Path):
    data, out, budget = teacher_run
    (name, recipe), = _recipes(data, out, budget, ["blvit"])  # fmt: skip
    broken = replace_fields(
        recipe, run={"output": str(tmp_path / "broken")}, data={"root": str(tmp_path / "nope")}
    )
    recorded: dict[str, float] = {}
    with pytest.raises(RuntimeError, match=r"training blvit_seed0 failed \(exit status 2\); see .*train.log"):
        train_side_by_side([(name, broken)], jobs=2, record=recorded.__setitem__)
    assert recorded == {}  # no checkpoint was written: nothing trained
    assert "nope" in (tmp_path / "broken" / "train.log").read_text()


def test_a_signal_stops_every_row_at_a_checkpoint(teacher_run, tmp_path: Path):
    """SIGTERM to ``routevit reproduce --jobs 2`` reaches both running rows once: each saves a
    checkpoint at its step and keeps its seconds in trained.json, the third row is not started,
    the command ends, and no process is left behind."""
    data, out, budget = teacher_run
    work = tmp_path / "out"
    work.mkdir()
    (work / "teacher").symlink_to(out / "teacher", target_is_directory=True)
    cmd = [sys.executable, "-m", "routevit.cli", "reproduce", "cifar10", "--data", str(data),
           "--out", str(work), "--only", "blvit", "evit", "tome", "--seeds", "0", "--student-epochs", "1000",
           "--teacher-epochs", "1", "--batch-size", "8", "--holdout-per-class", "1", "--jobs", "2"]
    parent = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    logs = [work / "blvit_seed0" / "train.log", work / "evit_seed0" / "train.log"]
    deadline = time.monotonic() + 240
    while not all(p.is_file() and "epoch 1:" in p.read_text() for p in logs):
        assert parent.poll() is None and time.monotonic() < deadline, parent.stdout.read().decode()[-2000:]
        time.sleep(0.5)
    parent.send_signal(signal.SIGTERM)
    try:
        assert parent.wait(timeout=120) == 128 + signal.SIGTERM
    finally:
        parent.kill()  # a no-op once it has ended; a hung parent must not outlive the test
    assert "stopped by signal 15 (SIGTERM)" in parent.stdout.read().decode()
    for log in logs:
        text = log.read_text()
        assert text.count("received signal 15") == 1 and "stopped by signal 15" in text
        assert any((log.parent / "checkpoints").glob("step-*"))
    trained = json.loads((work / "trained.json").read_text())
    assert sorted(trained) == ["blvit_seed0", "evit_seed0"] and min(trained.values()) > 0
    assert not (work / "tome_seed0").exists()
    leftover = subprocess.run(["pgrep", "-f", str(work)], capture_output=True, text=True).stdout.split()
    assert [p for p in leftover if int(p) != os.getpid()] == []
