"""Helpers for the trainer tests: tiny JPEG ImageFolders and tiny recipes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from routevit.train import Recipe, recipe_from_dict

ROOT = Path(__file__).resolve().parents[1]

TINY_VIT = {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}


def make_image_folder(
    root: Path, classes: int = 2, per_class: int = 8, size: int = 16, seed: int = 0
) -> Path:
    """``root/class_i/img_j.jpg`` with random RGB JPEGs; returns ``root``."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / f"class_{c}"
        d.mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            pixels[..., c % 3] //= 4  # a weak class signal
            Image.fromarray(pixels).save(d / f"img_{j:03d}.jpg", quality=90)
    return root


def tiny_recipe_dict(data_dir: Path, output: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """A recipe for a 2-layer, 32-wide timm ViT on 16x16 images, fast on one CPU core."""
    values: dict[str, Any] = {
        "model": {"name": "vit_tiny_patch16_224", "num_classes": 2, "img_size": 16, "drop_path_rate": 0.1,
                  "kwargs": TINY_VIT},
        "data": {"root": str(data_dir), "train_dir": ".", "val_dir": None, "holdout_per_class": 2,
                 "num_workers": 0},
        "augment": {"crop_pct": 1.0},
        "optim": {"lr": 1e-3, "lr_base_batch": None, "warmup_epochs": 1.0},
        "train": {"epochs": 2, "batch_size": 4, "amp": "none", "seed": 0, "device": "cpu"},
        "run": {"output": str(output), "log_every_steps": 1, "progress": "lines"},
    }  # fmt: skip
    for name, fields in sections.items():
        values.setdefault(name, {}).update(fields)
    return values


def tiny_recipe(data_dir: Path, output: Path, **sections: dict[str, Any]) -> Recipe:
    return recipe_from_dict(tiny_recipe_dict(data_dir, output, **sections))


def subprocess_env() -> dict[str, str]:
    """Same thread count in every process, so CPU float reductions agree bit for bit."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "routevit.cli", *args],
        env=subprocess_env(), cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
