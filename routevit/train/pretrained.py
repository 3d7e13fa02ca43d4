"""``routevit eval`` on a ``save_pretrained`` folder (``model.safetensors`` + ``config.json``).

A ``routevit train`` checkpoint carries the recipe it was trained with; a ``save_pretrained``
folder carries the model's config instead. [`checkpoint_recipe`][] gives the evaluation the
recipe it needs either way: the saved ``recipe.yaml``, or one made from ``config.json`` (the
model, its mean/std, crop and interpolation). For such a folder ``--data`` is the folder of
class folders to evaluate (an ImageFolder root, e.g. ImageNet's ``val/``), whose sorted class
folders must be the head's classes in order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ..hub import architecture, load_pretrained, pretrained_folder, read_config
from .config import Recipe, load_recipe, recipe_from_dict, with_overrides


def is_pretrained_folder(ckpt: str | Path) -> bool:
    """True for a ``save_pretrained`` folder (not a ``routevit train`` checkpoint)."""
    return not (Path(ckpt) / "recipe.yaml").is_file() and pretrained_folder(ckpt) is not None


def checkpoint_recipe(ckpt: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """The recipe of a checkpoint directory: its ``recipe.yaml``, or for a ``save_pretrained``
    folder one built from its ``config.json`` (classification only)."""
    ckpt = Path(ckpt)
    if not is_pretrained_folder(ckpt):
        return load_recipe(ckpt / "recipe.yaml", overrides)
    config = read_config(ckpt)
    if config["task"] != "classification":
        raise ValueError(
            f"{str(ckpt)!r} holds a {config['task']} encoder: routevit eval measures SAM encoders with "
            "SAM's prompt encoder and mask decoder, which a save_pretrained folder does not hold; "
            "evaluate the routevit train checkpoint it came from"
        )
    arch = architecture(config)
    keep_ratio = arch.pop("keep_ratio")
    own_keys = ("num_classes", "img_size", "drop_path_rate")  # ModelConfig's own fields
    kwargs: dict[str, Any] = {k: v for k, v in config["architecture"].items() if k not in own_keys}
    values: dict[str, Any] = {
        "task": "classification",
        "model": {
            "name": config["model_name"] or config["model_class"],
            "num_classes": config["num_classes"],
            "img_size": arch["img_size"],
            "drop_path_rate": arch["drop_path_rate"],
            "keep_ratio": keep_ratio,
            "kwargs": kwargs,
        },
        # --data is the folder of class folders; loader workers: at most one per core
        "data": {"train_dir": ".", "val_dir": ".", "num_workers": min(8, os.cpu_count() or 1)},
        "augment": {
            "mean": config["mean"],
            "std": config["std"],
            "crop_pct": config["crop_pct"],
            "interpolation": config["interpolation"],
        },
    }
    return recipe_from_dict(with_overrides(values, overrides))


def load_pretrained_model(ckpt: str | Path, ema: bool = False) -> nn.Module:
    """The model of a ``save_pretrained`` folder, in eval mode on the CPU."""
    if ema:
        raise ValueError(f"--ema applies to routevit train checkpoints; {str(ckpt)!r} has one set of weights")
    return load_pretrained(ckpt).eval()

