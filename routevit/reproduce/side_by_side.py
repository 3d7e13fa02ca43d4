"""Train several rows of the miniature at once, each in its own ``routevit train`` process.

The miniature's models are small (width 96, 65 tokens): one training run does not keep two
cores busy. Two runs side by side with one intra-op thread each trained 1.21x more steps per
second in total than one run with two threads on the 2-core machine of docs/results.md
(``docs/scripts/ab_side_by_side.sh``; 1.29x in a first, ad-hoc run). Each child is a resumable
``routevit train --resume`` run with its output in ``<run folder>/train.log``; a SIGTERM or
SIGINT to this process is passed on once to every child, which saves a checkpoint at its step
like a sequential run, and no further row is started.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import torch

from ..errors import Stopped
from ..train.checkpoint import atomic_write_text, latest_checkpoint
from ..train.config import Recipe, recipe_yaml

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass
class _Child:
    name: str
    process: subprocess.Popen[bytes]
    started: float
    log: IO[bytes]
    run_dir: Path


def _child_command(recipe_path: Path) -> list[str]:
    """The command line of one row's training process."""
    return [sys.executable, "-m", "routevit.cli", "train", str(recipe_path), "--resume"]


def train_side_by_side(
    recipes: Sequence[tuple[str, Recipe]], jobs: int, record: Callable[[str, float], None]
) -> float:
    """Train ``recipes`` (row name, recipe) ``jobs`` at a time, in the given order; returns the
    wall-clock seconds of the call. ``record(name, seconds)`` gets each row's own wall-clock
    (shared with the rows beside it) when its process ends with a checkpoint written.

    Raises RuntimeError when a row failed (the others are stopped at their step) and
    :class:`routevit.errors.Stopped` when a signal stopped the call; a rerun continues every row
    from its checkpoint."""
    if jobs < 1:
        raise ValueError(f"jobs: expected an integer >= 1, got {jobs}")
    threads = max(1, torch.get_num_threads() // jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    pending, running = list(recipes), []
    stopped: list[int] = []  # the signal that stopped this call
    failed: list[tuple[str, int, Path]] = []

    def stop_children(signum: int) -> None:
        for child in running:
            if child.process.poll() is None:
                child.process.send_signal(signum)

    def on_signal(signum: int, _frame: object) -> None:
        if not stopped:
            stopped.append(signum)
            stop_children(signum)

    def starting() -> bool:  # no row starts after a signal or a failure
        return bool(pending) and not stopped and not failed

    previous = {s: signal.signal(s, on_signal) for s in STOP_SIGNALS}
    started = time.perf_counter()
    try:
        while running or starting():
            while starting() and len(running) < jobs:
                running.append(_launch(*pending.pop(0), env))
            for child in [c for c in running if c.process.poll() is not None]:
                running.remove(child)
                failure = _finish(child, record)
                if failure is not None and not stopped and not failed:
                    failed.append(failure)
                    stop_children(signal.SIGTERM)
            time.sleep(0.2)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for child in running:  # only on an exception in this loop: leave no process behind
            child.process.terminate()
            child.process.wait()
            child.log.close()
    if failed:
        name, status, log = failed[0]
        raise RuntimeError(f"training {name} failed (exit status {status}); see {log}")
    if stopped:
        logger.warning("stopped by signal %d; run the same command again to continue", stopped[0])
        raise Stopped(stopped[0])
    return time.perf_counter() - started


def _launch(name: str, recipe: Recipe, env: dict[str, str]) -> _Child:
    run_dir = Path(recipe.run.output)
    run_dir.mkdir(parents=True, exist_ok=True)
    recipe_path = run_dir / "recipe.yaml"  # the trainer writes the same file when it starts
    atomic_write_text(recipe_path, recipe_yaml(recipe))
    log = (run_dir / "train.log").open("ab")
    # a session of its own: a Ctrl-C reaches only this process, which passes it on exactly once
    # (a second SIGINT would stop a trainer without its checkpoint)
    process = subprocess.Popen(
        _child_command(recipe_path), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    threads = env["OMP_NUM_THREADS"]
    logger.info("%s: training in process %d (%s intra-op thread%s; log %s)", name, process.pid, threads,
                "" if threads == "1" else "s", run_dir / "train.log")  # fmt: skip
    return _Child(name, process, time.perf_counter(), log, run_dir)


def _finish(child: _Child, record: Callable[[str, float], None]) -> tuple[str, int, Path] | None:
    """Record an ended child's seconds; returns (name, exit status, log) unless it finished."""
    seconds = time.perf_counter() - child.started
    child.log.close()
    status = child.process.returncode
    if status == 0 or latest_checkpoint(child.run_dir / "checkpoints") is not None:
        record(child.name, seconds)
    if status == 0:
        logger.info("%s: trained in %.0f s", child.name, seconds)
        return None
    return child.name, status, child.run_dir / "train.log"


__all__ = ["train_side_by_side"]
