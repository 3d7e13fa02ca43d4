"""Separate processes: a run killed with SIGKILL and resumed ends at the uninterrupted run's
weights bit for bit; a two-process gloo DDP run keeps identical replicas and matches one process
with the same global batch."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from train_util import ROOT, make_image_folder, run_cli, subprocess_env, tiny_recipe_dict

from routevit.train import checkpoint as ckpt
from routevit.train import load_recipe, train

# Runs the CLI, but SIGKILLs itself right after the checkpoint of step KILL_STEP is on disk.
KILLER = """
import os, signal, sys
from routevit.train import checkpoint
original = checkpoint.save_checkpoint
def save_then_die(root, step, *args, **kwargs):
    path = original(root, step, *args, **kwargs)
    if step == {kill_step}:
        os.kill(os.getpid(), signal.SIGKILL)
    return path
checkpoint.save_checkpoint = save_then_die
from routevit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _recipe(tmp_path: Path, name: str, **sections: dict) -> Path:
    data = tmp_path / "data"
    if not data.exists():
        make_image_folder(data, per_class=10)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe_dict(data, tmp_path / name, **sections)))
    return path


def _train_in_process(recipe: Path, output: Path) -> None:
    """The reference run, in this process but on one thread like the subprocesses (CPU kernels
    may sum in a different order on another thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(load_recipe(recipe, [f"run.output={output}"]))
    finally:
        torch.set_num_threads(threads)


def _end(out: Path) -> dict:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    ends = [r for r in lines if r["event"] == "end"]
    assert len(ends) == 1, "exactly one process writes the metrics"
    return ends[0]


def test_sigkill_after_checkpoint_then_resume_matches_uninterrupted(tmp_path: Path) -> None:
    # Mixup, drop path, random erasing, EMA all on; a mid-epoch kill (4 steps/epoch, killed at 6).
    sections = {"train": {"epochs": 3, "ema": True}, "run": {"checkpoint_every_steps": 3, "keep_last": 2}}
    recipe = _recipe(tmp_path, "run", **sections)
    _train_in_process(recipe, tmp_path / "full")

    killer = tmp_path / "killer.py"
    killer.write_text(KILLER.format(kill_step=6))
    cmd = [sys.executable, str(killer), "train", str(recipe)]
    killed = subprocess.run(cmd, env=subprocess_env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert ckpt.latest_checkpoint(tmp_path / "run" / "checkpoints").name == "step-00000006"

    resumed = run_cli("train", str(recipe), "--resume", "--set", "data.num_workers=1")  # workers don't matter
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr and "step 6" in resumed.stderr
    assert _end(tmp_path / "run")["replica_digests"] == _end(tmp_path / "full")["replica_digests"]
    a = ckpt.latest_checkpoint(tmp_path / "full" / "checkpoints")
    b = ckpt.latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert a.name == b.name == "step-00000012"
    for ema in (False, True):
        wa, wb = ckpt.load_weights(a, ema), ckpt.load_weights(b, ema)
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
    sa, sb = ckpt.load_train_state(a)["optimizer"]["state"], ckpt.load_train_state(b)["optimizer"]["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)


DDP_TOLERANCE = 1e-4  # max |w_ddp - w_single| after 8 AdamW steps; measured ~4e-6 (summation order)


def test_two_process_gloo_ddp_matches_single_process(tmp_path: Path) -> None:
    # Drop path and Mixup draw per-batch random numbers whose split over ranks cannot match one
    # process, so they are off here; augmentation is per sample and stays on.
    recipe = _recipe(tmp_path, "run", model={"drop_path_rate": 0.0}, augment={"mixup": 0.0, "cutmix": 0.0})
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "routevit.cli", "train", str(recipe), "--output", str(tmp_path / "ddp")],
        env=subprocess_env(), cwd=ROOT, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr
    _train_in_process(recipe, tmp_path / "single")

    digests = _end(tmp_path / "ddp")["replica_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]  # both ranks, bit-identical weights
    a = ckpt.load_weights(ckpt.latest_checkpoint(tmp_path / "ddp" / "checkpoints"))
    b = ckpt.load_weights(ckpt.latest_checkpoint(tmp_path / "single" / "checkpoints"))
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < DDP_TOLERANCE, f"DDP and single-process weights differ by {worst}"
    assert not any(".tmp-" in p.name for p in (tmp_path / "ddp" / "checkpoints").iterdir())
