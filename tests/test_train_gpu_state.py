"""Trainer state that matters on GPUs and across ranks, checked on the CPU with fakes: the CUDA
RNG state of this rank's device only, TF32 for fp32 matmuls, the host barrier around checkpoint
writes, and DDP's find_unused_parameters only where parameters can go unused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from train_util import make_image_folder, tiny_recipe

from routevit.train import checkpoint as ckpt
from routevit.train import engine, train
from routevit.train.distributed import DistInfo
from routevit.train.engine import _gather_rng_states, _set_rng_state


class FakeCudaGenerators:
    """``visible`` GPUs, each with its own RNG state (a byte tensor that names it)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, visible: int) -> None:
        self.states = {i: torch.full((8,), i, dtype=torch.uint8) for i in range(visible)}
        self.visible = visible
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: self.visible)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [self.states[i] for i in range(visible)])
        monkeypatch.setattr(torch.cuda, "get_rng_state", self.get)
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", self.set_all)
        monkeypatch.setattr(torch.cuda, "set_rng_state", self.set)

    def _index(self, device) -> int:  # noqa: ANN001
        index = torch.device(device).index if not isinstance(device, int) else device
        index = 0 if index is None else index
        if index >= self.visible:
            raise RuntimeError(f"CUDA error: invalid device ordinal {index} ({self.visible} visible)")
        return index

    def get(self, device="cuda") -> torch.Tensor:  # noqa: ANN001
        return self.states[self._index(device)].clone()

    def set(self, state: torch.Tensor, device="cuda") -> None:  # noqa: ANN001
        self.states[self._index(device)] = state.clone()

    def set_all(self, states) -> None:  # noqa: ANN001
        for i, state in enumerate(states):
            self.set(state, i)


def test_checkpoint_holds_this_ranks_cuda_rng_state_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 1 of a node with 4 visible GPUs saves the generator of cuda:1, and restores it on a
    machine where each rank sees one GPU (cuda:0), as a resumed job on another layout does."""
    saving = FakeCudaGenerators(monkeypatch, visible=4)
    rank_1 = DistInfo(rank=1, world_size=1, local_rank=1, device=torch.device("cuda", 1))
    (state,) = _gather_rng_states(rank_1)
    assert torch.equal(state["cuda"], saving.states[1]), "the state of this rank's GPU, not of all of them"

    restoring = FakeCudaGenerators(monkeypatch, visible=1)
    _set_rng_state(state, torch.device("cuda", 0))
    assert torch.equal(restoring.states[0], saving.states[1])


def test_a_cpu_run_saves_no_cuda_state(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeCudaGenerators(monkeypatch, visible=2)
    (state,) = _gather_rng_states(DistInfo(0, 1, 0, torch.device("cpu")))
    assert "cuda" not in state


def test_fp32_matmuls_use_tf32_on_cuda() -> None:
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        engine._enable_tf32(torch.device("cpu"))
        assert torch.get_float32_matmul_precision() == "highest"
        engine._enable_tf32(torch.device("cuda", 0))
        assert torch.get_float32_matmul_precision() == "high"  # TF32 (tensor cores) for fp32 matmuls
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.set_float32_matmul_precision(previous)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data"), per_class=10)


def as_rank(monkeypatch: pytest.MonkeyPatch, rank: int, world: int, events: list) -> None:
    """Run train() as one rank of a pretend world (no process group: collectives are local)."""
    info = DistInfo(rank, world, 0, torch.device("cpu"))
    monkeypatch.setattr(engine, "init_distributed", lambda device: info)

    def fake_ddp(module, **kwargs):  # noqa: ANN001, ANN003
        events.append(("ddp", kwargs))
        return module

    def gather(out, obj):  # noqa: ANN001
        out[:] = [obj] * len(out)

    original_save = ckpt.save_checkpoint

    def recorded_save(*args, **kwargs):  # noqa: ANN002, ANN003
        events.append("write start")
        path = original_save(*args, **kwargs)
        events.append("write end")
        return path

    monkeypatch.setattr(engine, "DistributedDataParallel", fake_ddp)
    monkeypatch.setattr(torch.distributed, "all_gather_object", gather)
    monkeypatch.setattr(ckpt, "save_checkpoint", recorded_save)
    monkeypatch.setattr(engine, "host_barrier", lambda: events.append("barrier"), raising=False)


@pytest.mark.parametrize("rank", [0, 1])
def test_ranks_meet_in_a_host_barrier_after_each_checkpoint_write(monkeypatch, data, tmp_path, rank) -> None:
    events: list = []
    as_rank(monkeypatch, rank, 2, events)
    train(tiny_recipe(data, tmp_path / "run", train={"epochs": 1}, run={"checkpoint_every_steps": 1}))
    io = [e for e in events if isinstance(e, str)]
    # 16 images, 2 ranks, a global batch of 4: 4 steps; checkpoints after steps 1, 2, 3 and at the end
    if rank == 0:
        assert io == ["write start", "write end", "barrier"] * 4
    else:
        assert io == ["barrier"] * 4, "rank 1 writes nothing and waits for rank 0 in the host barrier"
    (ddp,) = [e for e in events if isinstance(e, tuple)]
    assert ddp[1]["find_unused_parameters"] is False
