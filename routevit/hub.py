"""Portable weights: one folder that a user can hand to someone else.

``save_pretrained(model, DIR)`` (or ``model.save_pretrained(DIR)``) writes::

    DIR/
        model.safetensors   the weights (the model's dtype, tensors only)
        config.json         what rebuilds the model: the registered model name, every field of
                            its architecture config, the keep ratio, the class names (if known),
                            input size, mean/std, crop, interpolation, the routevit version

``routevit.create_model(DIR)``, ``routevit.create_model(name, pretrained=DIR)``,
``routevit visualize DIR IMAGE`` and ``routevit eval DIR --data ...`` read it back; timm does
too once routevit is imported (``timm.create_model(name, pretrained=True,
pretrained_cfg_overlay={"file": DIR})``, or ``checkpoint_path=DIR/model.safetensors``). The
folder is written next to its final place and renamed into it, so a crash leaves the old
folder or the new one, never a mix. Loading is strict: a key the model needs and the file lacks,
a key the file has and the model lacks, or a shape that differs is a ``ValueError`` naming it.

``config.json`` stores every architecture field rather than the differences to a factory's
defaults, so a folder keeps its meaning when later routevit versions change a default.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._fs import fsync_path
from ._version import __version__
from .interop.weights import read_state_dict
from .layers.schedule import Schedule
from .models.registry import IMAGENET_MEAN, IMAGENET_STD, model_info, register_folder_format
from .models.registry import create_model as _create_model
from .models.sam import BigLittleSamEncoder, SamEncoderConfig
from .models.vit import BigLittleViT, BigLittleViTConfig

__all__ = ["CONFIG_FILE", "FORMAT", "WEIGHTS_FILE", "load_pretrained", "pretrained_folder", "read_config",
           "save_pretrained"]  # fmt: skip

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "routevit.pretrained"  # config.json's "format"; "format_version" counts its revisions
FORMAT_VERSION = 1

# model class -> (its config dataclass, the config field that may hold a Schedule)
_CLASSES: dict[str, tuple[type[nn.Module], type, str]] = {
    "BigLittleViT": (BigLittleViT, BigLittleViTConfig, "layout"),
    "BigLittleSamEncoder": (BigLittleSamEncoder, SamEncoderConfig, "schedule"),
}


def save_pretrained(
    model: nn.Module,
    directory: str | PathLike[str],
    *,
    class_names: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    name: str | None = None,
) -> Path:
    """Write ``model`` to ``directory`` as ``model.safetensors`` + ``config.json``; returns the path.

    Args:
        model: a routevit ``BigLittleViT`` or ``BigLittleSamEncoder`` (any architecture, keep ratio).
        directory: the folder to write; an existing one is replaced only if it is empty or a
            folder of this format.
        class_names: the classes of the head's outputs, in order (default: the model's
            ``pretrained_cfg["label_names"]``, if any).
        mean: the per-channel mean its inputs were normalised with in training, in [0, 1] units
            (default: the model's ``pretrained_cfg``, else its registered facts, else ImageNet's).
        std: the per-channel standard deviation, likewise.
        name: the registered model name (default: ``pretrained_cfg["architecture"]``, set by
            ``create_model``; a model built from its class directly is saved without one and
            rebuilt from its class).
    """
    kind = type(model).__name__
    if kind not in _CLASSES or not isinstance(model, _CLASSES[kind][0]):
        raise TypeError(f"save_pretrained expects a routevit {' or '.join(_CLASSES)}, got {kind}")
    cfg_in: dict[str, Any] = dict(getattr(model, "pretrained_cfg", None) or {})
    name = name or cfg_in.get("architecture")
    info = model_info(name) if name is not None else None
    task = info.task if info is not None else ("sam" if kind == "BigLittleSamEncoder" else "classification")
    num_classes = int(getattr(model, "num_classes", 0))
    names = list(class_names) if class_names is not None else cfg_in.get("label_names")
    if names is not None:
        names = [str(n) for n in names]
        if num_classes and len(names) != num_classes:
            raise ValueError(f"got {len(names)} class names for a head of {num_classes} classes")
    arch = dataclasses.asdict(model.config)
    keep_ratio = arch.pop("keep_ratio")
    key = _CLASSES[kind][2]
    sched = getattr(model.config, key)
    if isinstance(sched, Schedule):
        arch[key] = {"kinds": list(sched.kinds), "predict_after": list(sched.predict_after)}
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "routevit_version": __version__,
        "model_name": name,
        "model_class": kind,
        "task": task,
        "architecture": _plain(arch),
        "keep_ratio": keep_ratio,
        "num_classes": num_classes,
        "class_names": names,
        "input_size": [model.config.in_chans, model.config.img_size, model.config.img_size],
        "mean": _triple(mean, cfg_in.get("mean"), info.mean if info else IMAGENET_MEAN, "mean"),
        "std": _triple(std, cfg_in.get("std"), info.std if info else IMAGENET_STD, "std"),
        "crop_pct": cfg_in.get("crop_pct", info.crop_pct if info else 0.875),
        "interpolation": cfg_in.get("interpolation", info.interpolation if info else "bicubic"),
        "weights": WEIGHTS_FILE,
    }
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    return _write_folder(Path(directory), state, config)


def _triple(given: Sequence[float] | None, *fallbacks: Any) -> list[float]:
    *values, what = fallbacks
    value = given if given is not None else next((v for v in values if v is not None), None)
    value = [float(v) for v in value]
    if len(value) != 3:
        raise ValueError(f"{what} must have 3 values (R, G, B), got {value}")
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _write_folder(target: Path, state: dict[str, torch.Tensor], config: dict[str, Any]) -> Path:
    try:
        from safetensors.torch import save_file
    except ImportError as err:
        raise ImportError("save_pretrained needs safetensors (pip install 'routevit[timm]')") from err
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{str(target)!r} exists and is not a folder")
    if target.is_dir() and any(target.iterdir()) and pretrained_folder(target) is None:
        raise FileExistsError(
            f"{str(target)!r} is a non-empty folder that save_pretrained did not write; not replacing it"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n")
        for f in tmp.iterdir():
            fsync_path(f)
        fsync_path(tmp)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old)
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_path(target.parent)
    return target


def pretrained_folder(path: str | PathLike[str]) -> Path | None:
    """The folder if ``path`` is one written by ``save_pretrained`` (or its ``model.safetensors``),
    else None. A ``config.json`` of another format does not count."""
    p = Path(path)
    if p.is_file() and p.name == WEIGHTS_FILE:
        p = p.parent
    if not (p / CONFIG_FILE).is_file():
        return None
    try:
        config = json.loads((p / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return None
    return p if isinstance(config, dict) and config.get("format") == FORMAT else None


def read_config(directory: str | PathLike[str]) -> dict[str, Any]:
    """The ``config.json`` of a ``save_pretrained`` folder, checked."""
    folder = pretrained_folder(directory)
    if folder is None:
        raise ValueError(
            f"{str(directory)!r} is not a save_pretrained folder: expected {CONFIG_FILE} with "
            f'"format": "{FORMAT}" and {WEIGHTS_FILE}'
        )
    config = json.loads((folder / CONFIG_FILE).read_text())
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{str(folder)!r} was written by routevit {config.get('routevit_version')} in format version "
            f"{config['format_version']}; this routevit ({__version__}) reads up to {FORMAT_VERSION}"
        )
    if config.get("model_class") not in _CLASSES:
        raise ValueError(f"{str(folder)!r}: unknown model_class {config.get('model_class')!r}")
    return config


def architecture(config: Mapping[str, Any]) -> dict[str, Any]:
    """The factory overrides of a folder's config: every architecture field, the schedule as a
    ``Schedule``, and ``keep_ratio``."""
    arch = dict(config["architecture"])
    key = _CLASSES[config["model_class"]][2]
    if isinstance(arch.get(key), Mapping):
        arch[key] = Schedule(tuple(arch[key]["kinds"]), tuple(arch[key]["predict_after"]))
    return {**arch, "keep_ratio": config["keep_ratio"]}


def load_pretrained(directory: str | PathLike[str], name: str | None = None, **overrides: Any) -> nn.Module:
    """Rebuild the model of a ``save_pretrained`` folder and load its weights strictly.

    ``name``: the registered model the caller expects (a ``ValueError`` if the folder holds
    another). ``overrides`` replace architecture fields (e.g. ``keep_ratio=0.5``, or
    ``drop_path_rate`` for fine-tuning); one that changes a weight's shape makes the load fail
    naming it. The model is returned in training mode, like ``create_model``'s.
    """
    config = read_config(directory)
    folder = pretrained_folder(directory)
    assert folder is not None
    saved = config.get("model_name")
    if name is not None and saved is not None and name != saved:
        raise ValueError(f"{str(folder)!r} holds a {saved} model, not {name}")
    for role in ("pretrained", "little_pretrained"):
        if overrides.get(role) is not None:
            raise ValueError(f"{role}= does not apply when loading the folder {str(folder)!r}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    kwargs = {**architecture(config), **overrides}
    if saved is not None:
        model = _create_model(saved, **kwargs)
    else:
        cls, config_cls, _ = _CLASSES[config["model_class"]]
        model = cls(config_cls(**kwargs))
    _load_strict(model, read_state_dict(folder / WEIGHTS_FILE), folder)
    cfg = model.config
    model.pretrained_cfg = {
        "first_conv": "patch_embed.proj",
        "classifier": "head" if config["task"] == "classification" else None,
        **getattr(model, "pretrained_cfg", {}),
        "architecture": saved,
        "input_size": (cfg.in_chans, cfg.img_size, cfg.img_size),
        "fixed_input_size": True,
        "mean": tuple(config["mean"]),
        "std": tuple(config["std"]),
        "crop_pct": config["crop_pct"],
        "crop_mode": "center",
        "interpolation": config["interpolation"],
        "num_classes": int(getattr(model, "num_classes", 0)),
        "label_names": tuple(config["class_names"]) if config.get("class_names") else None,
        "file": str(folder / WEIGHTS_FILE),
    }
    return model


def _load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], folder: Path) -> None:
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)}, model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]  # fmt: skip
    if missing or unexpected or shapes:
        parts = [f"missing {missing[:6]}" if missing else "",
                 f"unexpected {unexpected[:6]}" if unexpected else "",
                 f"shape mismatch {shapes[:4]}" if shapes else ""]  # fmt: skip
        raise ValueError(
            f"{str(folder / WEIGHTS_FILE)!r} does not fit the model its config.json describes (were "
            f"architecture overrides given?): {'; '.join(p for p in parts if p)}"
        )
    model.load_state_dict(state)


register_folder_format(pretrained_folder, load_pretrained, save_pretrained)
