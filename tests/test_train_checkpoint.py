"""Checkpoints are atomic: a crash mid-write leaves the previous checkpoint complete and readable."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from routevit.train import checkpoint as ckpt
from routevit.train.config import Recipe


def _save(root: Path, step: int, value: float) -> Path:
    state = {
        "step": step,
        "optimizer": {"state": {0: {"exp_avg": torch.full((3,), value)}}},
        "rng": [torch.ones(2)],
    }
    return ckpt.save_checkpoint(root, step, {"w": torch.full((2, 2), value)}, state, Recipe(), {"step": step})


def test_crash_mid_write_keeps_previous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _save(tmp_path, 10, 1.0)

    def dies_halfway(obj: object, f: object, *args: object, **kwargs: object) -> None:
        Path(f).write_bytes(b"\x80partial")  # a torn file, then the "crash"
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(OSError, match="disk full"):
        _save(tmp_path, 20, 2.0)
    monkeypatch.undo()

    assert ckpt.list_checkpoints(tmp_path) == [first]
    assert ckpt.latest_checkpoint(tmp_path) == first
    assert torch.equal(ckpt.load_weights(first)["w"], torch.full((2, 2), 1.0))
    assert ckpt.load_train_state(first)["step"] == 10  # loads with weights_only=True
    assert any(".tmp-" in p.name for p in tmp_path.iterdir())  # the torn attempt is not a checkpoint

    second = _save(tmp_path, 20, 2.0)  # the next save clears the leftovers
    assert not any(".tmp-" in p.name for p in tmp_path.iterdir())
    assert ckpt.list_checkpoints(tmp_path) == [first, second]


def test_keep_last_never_deletes_best(tmp_path: Path) -> None:
    paths = [_save(tmp_path, s, float(s)) for s in (1, 2, 3, 4, 5)]
    ckpt.write_best(tmp_path, paths[1].name, 99.0, epoch=2)
    deleted = ckpt.prune(tmp_path, keep_last=2)
    assert [p.name for p in deleted] == [paths[0].name, paths[2].name]
    assert ckpt.list_checkpoints(tmp_path) == [paths[1], paths[3], paths[4]]
    # a run folder or its checkpoints/ folder resolves to the best checkpoint
    assert ckpt.resolve_checkpoint(tmp_path) == paths[1]
    assert ckpt.resolve_checkpoint(paths[4]) == paths[4]
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        ckpt.resolve_checkpoint(tmp_path / "elsewhere")


def test_resave_same_step_replaces(tmp_path: Path) -> None:
    _save(tmp_path, 7, 1.0)
    again = _save(tmp_path, 7, 3.0)
    assert torch.equal(ckpt.load_weights(again)["w"], torch.full((2, 2), 3.0))
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [again.name]
