"""Atomic, self-contained checkpoints: one directory per checkpoint, published by a rename.

Layout of ``OUTPUT/checkpoints/``::

    step-00000120/          a complete checkpoint (the name is the global step)
        model.safetensors   student weights (unwrapped, float as trained)
        ema.safetensors     EMA weights (when train.ema)
        state.pt            optimizer, scheduler, scaler, epoch/step, sampler position, RNG states
        recipe.yaml         the resolved recipe (enough to rebuild the model for eval)
        meta.json           epoch, step, metrics
    best.json               {"name": "step-...", "metric": ...}, replaced atomically

A checkpoint is written into ``step-NNNNNNNN.tmp-PID``, every file and the directory are
fsynced, then the directory is renamed: a crash at any point leaves either the complete new
checkpoint or none, and the previous ones untouched. Leftover ``.tmp-*`` directories are
removed by the next save. ``state.pt`` holds only tensors and plain Python values, so it loads
with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from .._fs import fsync_path
from ..interop.weights import LoadReport, load_exact, read_file, read_state_dict
from .config import Recipe, save_recipe

_NAME = re.compile(r"^step-(\d{8})$")


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a small file by temp file + fsync + rename (readers see the old or the new content)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def _tensors_for_safetensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses views sharing storage; clone makes every tensor its own.
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def save_checkpoint(
    root: str | Path,
    step: int,
    model_state: Mapping[str, torch.Tensor],
    train_state: dict[str, Any],
    recipe: Recipe,
    meta: dict[str, Any],
    ema_state: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write checkpoint ``step-NNNNNNNN`` under ``root`` atomically; returns its path."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    remove_partial(root)
    final = root / checkpoint_name(step)
    tmp = root / f"{final.name}.tmp-{os.getpid()}"
    tmp.mkdir()
    save_file(_tensors_for_safetensors(model_state), str(tmp / "model.safetensors"))
    if ema_state is not None:
        save_file(_tensors_for_safetensors(ema_state), str(tmp / "ema.safetensors"))
    torch.save(train_state, tmp / "state.pt")
    save_recipe(recipe, tmp / "recipe.yaml")
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    for f in tmp.iterdir():
        _fsync_file(f)
    fsync_path(tmp)
    if final.exists():  # re-saving the same step (e.g. a signal right after resuming)
        old = root / f"{final.name}.old-{os.getpid()}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old)
    else:
        os.rename(tmp, final)
    fsync_path(root)
    return final


def remove_partial(root: Path) -> None:
    """Delete ``.tmp-*`` / ``.old-*`` leftovers of interrupted saves."""
    for p in root.glob("step-*.*-*"):
        if p.is_dir() and (".tmp-" in p.name or ".old-" in p.name):
            shutil.rmtree(p, ignore_errors=True)


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest (lowest step) first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name)]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def read_best(root: str | Path) -> dict[str, Any] | None:
    path = Path(root) / "best.json"
    return json.loads(path.read_text()) if path.is_file() else None


def write_best(root: str | Path, name: str, metric: float, epoch: int) -> None:
    atomic_write_text(Path(root) / "best.json", json.dumps({"name": name, "metric": metric, "epoch": epoch}))


def prune(root: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the ``keep_last`` newest checkpoints, never the best one; returns the deleted."""
    best = read_best(root)
    protected = {best["name"]} if best else set()
    found = list_checkpoints(root)
    doomed = [p for p in found[:-keep_last] if p.name not in protected]
    for p in doomed:
        shutil.rmtree(p)
    return doomed


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from: itself, a ``checkpoints/`` folder or a run's output folder
    (the best checkpoint if recorded, else the latest)."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return path
    for root in (path / "checkpoints", path):
        best = read_best(root)
        if best and (root / best["name"]).is_dir():
            return root / best["name"]
        latest = latest_checkpoint(root)
        if latest is not None:
            return latest
    raise FileNotFoundError(
        f"no checkpoint at {str(path)!r}: expected a checkpoint directory (with model.safetensors), "
        "a run output folder or its checkpoints/ folder"
    )


def weights_file(ckpt: Path, ema: bool = False) -> Path:
    """The student (or EMA) weights file of a checkpoint directory."""
    path = Path(ckpt) / ("ema.safetensors" if ema else "model.safetensors")
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(path)!r} does not exist" + (" (run trained without EMA?)" if ema else "")
        )
    return path


def load_weights(ckpt: Path, ema: bool = False) -> dict[str, torch.Tensor]:
    """The student (or EMA) weights of a checkpoint directory, read by routevit's one reader
    (a corrupt or truncated file is a one-line ValueError)."""
    return read_state_dict(weights_file(ckpt, ema))


def load_into(model: nn.Module, ckpt: Path, ema: bool = False) -> LoadReport:
    """Load a checkpoint directory's student (or EMA) weights into ``model``, strictly: every
    entry must fit by name and shape (:func:`routevit.interop.weights.load_exact`)."""
    return load_exact(model, weights_file(ckpt, ema))


def load_train_state(ckpt: Path) -> dict[str, Any]:
    """``state.pt`` of a checkpoint directory (``weights_only``; a corrupt, truncated or unsafe
    file is a one-line ValueError)."""
    state = read_file(Path(ckpt) / "state.pt")
    if not isinstance(state, dict) or "step" not in state:
        raise ValueError(
            f"{str(Path(ckpt) / 'state.pt')!r} must hold a routevit training state (a dict with step, "
            f"epoch, optimizer, ...), got {type(state).__name__}"
        )
    return state
