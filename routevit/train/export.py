"""A ``routevit train`` checkpoint as a ``save_pretrained`` folder (``model.safetensors`` +
``config.json``), the form a trained model is handed on in."""

from __future__ import annotations

from pathlib import Path

from .build import load_checkpoint_model
from .data import find_splits


def export_pretrained(checkpoint: str | Path, directory: str | Path, ema: bool = False) -> Path:
    """Write a ``routevit train`` checkpoint (or run folder: its best checkpoint) as a
    ``save_pretrained`` folder, with the recipe's mean/std, crop and interpolation and, when its
    data folder is at hand, the class names (the training folder's class folders, in order)."""
    model, recipe, _ = load_checkpoint_model(checkpoint, ema=ema)
    aug = recipe.augment
    model.pretrained_cfg = {**getattr(model, "pretrained_cfg", {}), "crop_pct": aug.crop_pct,
                            "interpolation": aug.interpolation}  # fmt: skip
    try:
        class_names = find_splits(recipe).classes if recipe.task == "classification" else None
    except (ValueError, FileNotFoundError):
        class_names = None  # the data folder is elsewhere now: saved without names
    return model.save_pretrained(directory, class_names=class_names, mean=aug.mean, std=aug.std)
