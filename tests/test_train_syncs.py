"""Training steps read the device back once, after backward; the loss and gradient norm are
read on logging steps only.

A step's host reads are recorded on the CPU: ``_local_scalar_dense`` (``.item()``, ``bool(t)``,
``float(t)``) with a TorchDispatchMode, ``Tensor.tolist`` (which reads without dispatching) by
patching it, and ``lift_fresh`` (a tensor built from Python data: a host-to-device copy on a GPU).
The optimizer is left out: a non-capturable AdamW keeps its step counters on the host and reads
them there, which is no device sync on a GPU either.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from train_util import make_image_folder, tiny_recipe

from routevit.train import engine, train


class _Events(TorchDispatchMode):
    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log
        self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not self.paused and name in ("_local_scalar_dense", "lift_fresh", "nonzero"):
            self.log.append(name)
        return func(*args, **(kwargs or {}))


@pytest.fixture
def step_events(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Per training step, the ordered list of 'backward' and host reads inside ``_Run._step``."""
    steps: list[list[str]] = []
    current: dict[str, _Events | None] = {"mode": None}
    step, backward, tolist = engine._Run._step, torch.Tensor.backward, torch.Tensor.tolist
    scaler_step = torch.amp.GradScaler.step

    def recorded_step(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        steps.append([])
        with _Events(steps[-1]) as mode:
            current["mode"] = mode
            try:
                return step(self, *args, **kwargs)
            finally:
                current["mode"] = None

    def recorded_backward(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        if current["mode"] is not None:
            current["mode"].log.append("backward")
        return backward(self, *args, **kwargs)

    def recorded_tolist(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        if current["mode"] is not None and not current["mode"].paused:
            current["mode"].log.append("tolist")
        return tolist(self, *args, **kwargs)

    def optimizer_unrecorded(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        mode = current["mode"]
        if mode is not None:
            mode.paused = True
        try:
            return scaler_step(self, *args, **kwargs)
        finally:
            if mode is not None:
                mode.paused = False

    monkeypatch.setattr(engine._Run, "_step", recorded_step)
    monkeypatch.setattr(torch.Tensor, "backward", recorded_backward)
    monkeypatch.setattr(torch.Tensor, "tolist", recorded_tolist)
    monkeypatch.setattr(torch.amp.GradScaler, "step", optimizer_unrecorded)
    return steps


def test_one_host_read_per_step_after_backward(tmp_path: Path, step_events: list[list[str]]) -> None:
    data = make_image_folder(tmp_path / "data", per_class=10)  # 16 training images: 4 steps of 4
    out = tmp_path / "run"
    train(tiny_recipe(data, out, train={"epochs": 1}, run={"log_every_steps": 2}))
    assert len(step_events) == 4
    for i, events in enumerate(step_events):
        assert "backward" in events, events
        before = events[: events.index("backward")]
        assert before == [], f"step {i}: host reads between forward and backward: {before}"
        reads = [e for e in events if e != "backward"]
        assert reads == ["tolist"], f"step {i}: expected one read-back after backward, got {reads}"
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in lines if r["event"] == "train"]
    assert [r["step"] for r in logged] == [2, 4]
    for r in logged:  # the values were read back on the logging steps
        assert r["loss"] > 0 and r["grad_norm"] > 0 and r["images"] == 4 and r["lr"] > 0
