"""Building what a recipe names: student, teacher, optimizer, LR schedule.

Model names resolve through routevit's registry first (bLViT models), then timm's (vanilla
teachers and baselines such as ``deit_base_patch16_224``). Any timm-style classifier works as
a student: it must offer ``forward_features(x) -> (B, N, C)`` and ``forward_head(f, pre_logits)``.
"""

from __future__ import annotations

import fnmatch
import importlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import nn

from ..interop.weights import describe, load_exact, read_state_dict
from .checkpoint import load_into, resolve_checkpoint
from .config import ModelConfig, Recipe, load_recipe, model_kwargs
from .pretrained import checkpoint_recipe, is_pretrained_folder, load_pretrained_model

logger = logging.getLogger(__name__)


def _is_routevit(name: str) -> bool:
    from routevit.models import list_models

    return name in list_models()


def create_any(
    name: str, pretrained: str | None = None, allow_missing: Sequence[str] = (), **kwargs: Any
) -> nn.Module:
    """routevit.create_model if ``name`` is registered there, else timm.create_model.

    ``pretrained`` is a local weights file, or a routevit checkpoint / run folder (its best or
    newest ``model.safetensors``); None: random init. It is loaded strictly, through routevit's
    one reader: for routevit models by the factory (bLViT: the P path, with the E path, routers,
    alpha and gamma fresh); for timm models after the model's own ``checkpoint_filter_fn``
    (official layouts, position embedding resampling). ``allow_missing``: parameter name
    patterns that may keep their init, e.g. ``("head.*",)`` for a checkpoint of other classes.
    """
    if pretrained is not None and Path(pretrained).is_dir():
        pretrained = str(resolve_checkpoint(pretrained) / "model.safetensors")
    if pretrained is not None and not Path(pretrained).is_file():
        raise FileNotFoundError(f"pretrained weights file {pretrained!r} for model {name!r} does not exist")
    if _is_routevit(name):
        from routevit.models import create_model

        extra = {"allow_missing": tuple(allow_missing)} if allow_missing else {}
        return create_model(name, pretrained=pretrained, **extra, **kwargs)
    if "keep_ratio" in kwargs:
        raise ValueError(f"keep_ratio applies to routevit models only; {name!r} is not one")
    if not timm.is_model(name):
        from routevit.models import list_models

        raise ValueError(
            f"unknown model {name!r}: neither a routevit model ({list_models()}) nor a timm model "
            "(see timm.list_models())"
        )
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as err:  # e.g. a typo in model.kwargs: "__init__() got an unexpected keyword ..."
        raise ValueError(f"timm model {name!r} does not accept the options {sorted(kwargs)}: {err}") from None
    if pretrained is not None:
        load_timm_file(model, pretrained, allow_missing)
    return model


def load_timm_file(model: nn.Module, path: str | Path, allow_missing: Sequence[str] = ()) -> None:
    """Load a weights file into a timm model, strictly, after the model family's
    ``checkpoint_filter_fn`` (which timm applies to its own pretrained files)."""
    state = read_state_dict(path)
    filter_fn = getattr(importlib.import_module(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state = filter_fn(state, model)
    load_exact(model, state, allow_missing=allow_missing, what=describe(path))


def check_interface(model: nn.Module, role: str) -> None:
    for attr in ("forward_features", "forward_head"):
        if not callable(getattr(model, attr, None)):
            raise TypeError(
                f"the {role} ({type(model).__name__}) has no {attr}(); the trainer expects a timm-style "
                "classifier with forward_features(x) -> (B, N, C) and forward_head(f, pre_logits=False)"
            )


def build_student(cfg: ModelConfig, pretrained: bool = True) -> nn.Module:
    """The student of ``cfg`` (``pretrained=False`` skips the init weights, e.g. before loading a
    checkpoint)."""
    kwargs: dict[str, Any] = {
        "num_classes": cfg.num_classes,
        "img_size": cfg.img_size,
        "drop_path_rate": cfg.drop_path_rate,
        **model_kwargs(cfg.kwargs),
    }
    if cfg.keep_ratio is not None:
        kwargs["keep_ratio"] = cfg.keep_ratio
    model = create_any(cfg.name, cfg.pretrained if pretrained else None, cfg.allow_missing, **kwargs)
    if cfg.token_reduction:
        from routevit.baselines import patch

        patch(model, **cfg.token_reduction)
    check_interface(model, "student")
    return model


def load_checkpoint_model(checkpoint: str | Path, ema: bool = False) -> tuple[nn.Module, Recipe, Path]:
    """The model of a ``routevit train`` checkpoint: rebuilt from its ``recipe.yaml``, its student
    (or EMA) weights loaded, in eval mode on the CPU.

    ``checkpoint`` is a checkpoint directory, a run's output folder or its ``checkpoints/`` folder
    (the best checkpoint if recorded, else the newest), or a ``save_pretrained`` folder. Returns
    ``(model, recipe, directory)``.
    """
    ckpt = resolve_checkpoint(checkpoint)
    recipe = checkpoint_recipe(ckpt)
    if is_pretrained_folder(ckpt):  # its config.json, not a recipe, rebuilds the model
        return load_pretrained_model(ckpt, ema), recipe, ckpt
    model = build_student(recipe.model, pretrained=False)
    load_into(model, ckpt, ema=ema)
    return model.eval(), recipe, ckpt


def build_teacher(recipe: Recipe) -> nn.Module | None:
    """The frozen teacher in eval mode, or None when distillation is off.

    ``distill.teacher_checkpoint`` may be a routevit checkpoint (or run) directory, whose recipe
    rebuilds the model; a weights file for ``distill.teacher`` (loaded strictly, as
    ``model.pretrained``); or None for timm's published pretrained weights of ``distill.teacher``.
    """
    d = recipe.distill
    if d.teacher is None:
        return None
    ckpt = d.teacher_checkpoint
    if ckpt is not None and Path(ckpt).is_dir():
        ckpt_dir = resolve_checkpoint(ckpt)
        cfg = load_recipe(ckpt_dir / "recipe.yaml").model
        if cfg.name != d.teacher:
            raise ValueError(
                f"distill.teacher is {d.teacher!r} but the checkpoint {str(ckpt_dir)!r} holds a {cfg.name!r}"
            )
        teacher = load_checkpoint_model(ckpt_dir)[0]
        logger.info("teacher %s from routevit checkpoint %s", d.teacher, ckpt_dir)
    else:
        kwargs = {
            "num_classes": recipe.model.num_classes,
            "img_size": recipe.model.img_size,
            **model_kwargs(d.teacher_kwargs),
        }
        if ckpt is None:
            if _is_routevit(d.teacher):
                raise ValueError(f"the routevit teacher {d.teacher!r} needs distill.teacher_checkpoint")
            teacher = timm.create_model(d.teacher, pretrained=True, **kwargs)
            logger.info("teacher %s with timm's pretrained weights", d.teacher)
        else:
            if not Path(ckpt).is_file():
                raise FileNotFoundError(f"distill.teacher_checkpoint {ckpt!r} does not exist")
            teacher = create_any(d.teacher, ckpt, **kwargs)
            logger.info("teacher %s from %s", d.teacher, ckpt)
    check_interface(teacher, "teacher")
    teacher.eval().requires_grad_(False)
    return teacher


class WithFeatures(nn.Module):
    """Wraps a classifier so that one ``forward`` (the one DDP hooks) yields logits and features.

    ``forward(x (B, 3, H, W)) -> (logits (B, K), features)``, features ``(B, N, C)`` for
    ``"tokens"``, ``(B, C)`` for ``"pre_logits"``, None for ``None``.
    """

    def __init__(self, model: nn.Module, feature: str | None) -> None:
        super().__init__()
        self.model = model
        self.feature = feature

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        f = self.model.forward_features(x)
        logits = self.model.forward_head(f)
        if self.feature == "tokens":
            return logits, f
        if self.feature == "pre_logits":
            return logits, self.model.forward_head(f, pre_logits=True)
        return logits, None


@torch.no_grad()
def teacher_features(teacher: nn.Module, x: torch.Tensor, feature: str) -> torch.Tensor:
    f = teacher.forward_features(x)
    return f if feature == "tokens" else teacher.forward_head(f, pre_logits=True)


def scaled_lr(recipe: Recipe) -> float:
    """DeiT's linear scaling: ``lr * global_batch / lr_base_batch``."""
    o = recipe.optim
    return o.lr if o.lr_base_batch is None else o.lr * recipe.train.batch_size / o.lr_base_batch


def lr_scale_patterns(name: str, lr_scales: Mapping[str, float]) -> list[str]:
    """The ``optim.lr_scales`` globs (fnmatch, case-sensitive) that match a parameter name."""
    return [pattern for pattern in lr_scales if fnmatch.fnmatchcase(name, pattern)]


def lr_scaled_groups(
    model: nn.Module, weight_decay: float, lr_scales: Mapping[str, float]
) -> list[dict[str, Any]]:
    """Parameter groups by (weight decay, learning-rate factor).

    No weight decay on 0/1-d parameters, biases and ``model.no_weight_decay()`` (timm's rule); a
    parameter whose name matches a glob of ``lr_scales`` gets that factor as ``lr_scale``, which
    timm's schedulers multiply into every step's learning rate. A name matching two patterns, or a
    pattern matching no trainable parameter, is an error.
    """
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    used: set[str] = set()
    names = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        names.append(name)
        hits = lr_scale_patterns(name, lr_scales)
        if len(hits) > 1:
            raise ValueError(f"parameter {name} matches more than one optim.lr_scales pattern: {hits}")
        used.update(hits)
        decay = not (param.ndim <= 1 or name.endswith(".bias") or name in skip)
        groups.setdefault((decay, lr_scales[hits[0]] if hits else 1.0), []).append(param)
    unused = [pattern for pattern in lr_scales if pattern not in used]
    if unused:
        raise ValueError(
            f"optim.lr_scales patterns {unused} match no trainable parameter (names look like {names[-1]!r})"
        )
    return [
        {"params": params, "weight_decay": weight_decay if decay else 0.0, "lr_scale": scale}
        for (decay, scale), params in groups.items()
    ]


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """timm's optimizer factory: no weight decay on biases, norms and ``no_weight_decay()``; with
    ``optim.lr_scales``, the groups of [`lr_scaled_groups`][]."""
    o = recipe.optim
    params = lr_scaled_groups(model, o.weight_decay, o.lr_scales) if o.lr_scales else model
    return create_optimizer_v2(
        params, opt=o.opt, lr=scaled_lr(recipe), weight_decay=o.weight_decay, betas=o.betas, eps=o.eps
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int
) -> CosineLRScheduler:
    """Per-step cosine decay to ``min_lr`` after a linear warm-up from ``warmup_lr``."""
    o = recipe.optim
    return CosineLRScheduler(
        optimizer,
        t_initial=recipe.train.epochs * steps_per_epoch,
        lr_min=o.min_lr,
        warmup_t=round(o.warmup_epochs * steps_per_epoch),
        warmup_lr_init=o.warmup_lr,
        t_in_epochs=False,
    )
