"""The trainer's task interface, and its two implementations (classification, SAM).

The engine (:mod:`routevit.train.engine`) runs any :class:`Task` the same way: it asks the task
for its parts once (:meth:`Task.setup`), then per step for the loss of a batch
(:meth:`Task.loss`), and per validation for metrics (:meth:`Task.validate`), keeping the
checkpoint whose ``best_metric`` is highest. A new task is a class here plus an entry in
:data:`TASKS`; the engine has no ``if task == ...``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .build import WithFeatures, build_student, build_teacher, teacher_features
from .config import Recipe
from .data import Batch, build_mixup, derive_seed, eval_loader, find_splits, train_loader
from .distributed import DistInfo
from .evaluate import autocast, evaluate_model
from .losses import DistillationLoss, supervised_loss

KEEP_RATIO_STREAM = 0x6B65  # keeps the keep-ratio draws apart from the other per-step numbers
LossOut = tuple[torch.Tensor, dict[str, torch.Tensor], int]  # loss, its named parts, local images


@dataclass
class TaskParts:
    """What a task builds for a run.

    ``student``: the model that is optimized, saved and validated. ``net``: the module a step
    calls (wrapped in DDP by the engine); it may wrap the student (e.g. to also return features).
    ``teacher``: the frozen distillation teacher or None. ``sampler``: the resumable sampler of
    ``loader``. ``description``: the data, for the log.
    """

    student: nn.Module
    net: nn.Module
    teacher: nn.Module | None
    loader: DataLoader
    sampler: Any
    val_loader: DataLoader | None
    description: str


class Task(abc.ABC):
    """Interface of a training task (an abstract base class: a subclass implements every method).

    Attributes:
        name: the recipe's ``task`` value.
        best_metric: the validation metric that picks the best checkpoint (higher is better).
    """

    name: ClassVar[str] = ""
    best_metric: ClassVar[str] = ""

    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe

    @property
    def find_unused_parameters(self) -> bool:
        """Whether DDP must tolerate parameters that a step does not use."""
        return False

    @abc.abstractmethod
    def setup(self, info: DistInfo, seed: Any) -> TaskParts:
        """Build student, teacher and loaders; ``seed()`` is called right before the student
        is built, so that its init depends on ``train.seed`` only."""

    @abc.abstractmethod
    def loss(self, net: nn.Module, teacher: nn.Module | None, batch: Any, device: torch.device) -> LossOut:
        """The loss of one batch under the recipe's autocast."""

    @abc.abstractmethod
    def validate(
        self, student: nn.Module, ema: nn.Module | None, loader: DataLoader, device: torch.device
    ) -> dict[str, Any]:
        """Validation metrics of the student (``val_*``) and of its EMA (``val_ema_*``)."""

    def before_step(self, student: nn.Module, step: int) -> None:
        """Called before the loss of optimizer step ``step`` (on every rank); nothing by default."""
        return None

    def checkpoint_meta(self) -> dict[str, Any]:
        """What every checkpoint's ``meta.json`` records about the data (after :meth:`setup`),
        e.g. the class names ``routevit eval`` checks a folder against."""
        return {}


class ClassificationTask(Task):
    """ImageFolder classification with DeiT's augmentation and optional feature distillation."""

    name = "classification"
    best_metric = "val_top1"

    def setup(self, info: DistInfo, seed: Any) -> TaskParts:
        r = self.recipe
        splits = find_splits(r)
        if len(splits.classes) != r.model.num_classes:
            raise ValueError(
                f"the data has {len(splits.classes)} classes but model.num_classes is {r.model.num_classes}"
            )
        seed()
        student = build_student(r.model).to(info.device)
        teacher = build_teacher(r)
        if teacher is not None:
            teacher.to(info.device)
        self.feature = r.distill.feature if teacher is not None else None
        self.mixup = build_mixup(r, r.model.num_classes)
        loader, sampler = train_loader(splits.train, r, info, self.mixup is not None)
        val = eval_loader(splits.val, r, info, loader.batch_size) if splits.val else None
        self.loss_fn = DistillationLoss(
            supervised_loss(self.mixup is not None, r.augment.label_smoothing), r.distill.lambda_fd
        )
        description = f"{len(splits.train)} images ({len(splits.classes)} classes)"
        self.classes = list(splits.classes)
        net = WithFeatures(student, self.feature)
        return TaskParts(student, net, teacher, loader, sampler, val, description)

    def before_step(self, student: nn.Module, step: int) -> None:
        """With ``model.keep_ratio_range``, route a share drawn for this step (a function of the
        seed and the step only, so every rank and a resumed run draw the same)."""
        span = self.recipe.model.keep_ratio_range
        if span is not None:
            u = np.random.default_rng(derive_seed(self.recipe.train.seed, step, KEEP_RATIO_STREAM)).random()
            student.set_keep_ratio(span[0] + (span[1] - span[0]) * u)

    def loss(self, net: nn.Module, teacher: nn.Module | None, batch: Batch, device: torch.device) -> LossOut:
        x = batch.images.to(device, non_blocking=True)
        y = batch.targets.to(device, non_blocking=True)
        n = len(y)
        if self.mixup is not None:
            x, y = self.mixup(x, y)
        with autocast(device, self.recipe.train.amp):
            logits, feat = net(x)
            t_feat = teacher_features(teacher, x, self.feature) if teacher is not None else None
            loss, parts = self.loss_fn(logits, y, feat, t_feat)
        return loss, parts, n

    def validate(
        self, student: nn.Module, ema: nn.Module | None, loader: DataLoader, device: torch.device
    ) -> dict[str, Any]:
        amp = self.recipe.train.amp
        if self.recipe.model.keep_ratio_range is not None:  # a step left its own draw
            for model in (student, ema):
                if model is not None:
                    model.set_keep_ratio(self.recipe.model.keep_ratio)
        res = evaluate_model(student, loader, device, amp)
        out: dict[str, Any] = {"val_top1": res["top1"], "val_top5": res["top5"], "val_images": res["images"]}
        if ema is not None:
            res_ema = evaluate_model(ema, loader, device, amp)
            out.update(val_ema_top1=res_ema["top1"], val_ema_top5=res_ema["top5"])
        return out

    def checkpoint_meta(self) -> dict[str, Any]:
        """The class names in label order (the training folder's class folders, sorted)."""
        return {"classes": self.classes}


class SamTask(Task):
    """SA-1B-style promptable segmentation (see :mod:`routevit.train.sam_task`)."""

    name = "sam"
    best_metric = "val_miou_avg"

    @property
    def find_unused_parameters(self) -> bool:
        # With sam.train_decoder a batch may hold no box (or no point) prompt, leaving prompt
        # embeddings unused (and masks=None leaves mask_downscaling unused). Frozen (the
        # default), the prompt encoder and decoder have no parameter for DDP to reduce.
        return self.recipe.sam.train_decoder

    def setup(self, info: DistInfo, seed: Any) -> TaskParts:
        from .sam_task import (
            PromptedSam,
            build_sam_student,
            build_sam_teacher,
            sam_eval_loader,
            sam_loss_from_recipe,
            sam_train_loader,
        )

        r = self.recipe
        loader, sampler = sam_train_loader(r, info)
        val = None
        if r.sam.val_annotations is not None:
            if r.sam.val_images is None:
                raise ValueError("recipe key sam.val_annotations needs sam.val_images (the images folder)")
            val = sam_eval_loader(
                r.sam.val_annotations, r.sam.val_images, r, info, loader.batch_size, r.sam.val_max_images
            )
        seed()
        student = build_sam_student(r).to(info.device)
        teacher = build_sam_teacher(r)
        if teacher is not None:
            teacher.to(info.device)
        self.loss_fn = sam_loss_from_recipe(r)
        description = f"{len(loader.dataset)} SA-1B-style images"
        return TaskParts(student, PromptedSam(student), teacher, loader, sampler, val, description)

    def loss(self, net: nn.Module, teacher: nn.Module | None, batch: Any, device: torch.device) -> LossOut:
        x = batch.images.to(device, non_blocking=True)
        with autocast(device, self.recipe.train.amp):
            emb, outputs = net(x, batch.targets)
            if teacher is not None:
                with torch.no_grad():
                    t_emb = teacher(x)
            else:
                t_emb = None
            loss, parts = self.loss_fn(outputs, batch.targets, emb, t_emb)
        return loss, parts, len(batch.targets)

    def validate(
        self, student: nn.Module, ema: nn.Module | None, loader: DataLoader, device: torch.device
    ) -> dict[str, Any]:
        from .sam_task import evaluate_sam

        out: dict[str, Any] = {}
        for prefix, model in (("val_", student), ("val_ema_", ema)):
            if model is not None:
                res = evaluate_sam(model, loader, device, self.recipe.train.amp)
                out.update({f"{prefix}{k}": v for k, v in res.items() if k.startswith("miou")})
        out["val_masks"] = res["masks"]
        return out


TASKS: dict[str, type[Task]] = {ClassificationTask.name: ClassificationTask, SamTask.name: SamTask}


def get_task(recipe: Recipe) -> Task:
    """The :class:`Task` of a recipe's ``task`` key."""
    if recipe.task not in TASKS:
        raise ValueError(f"unknown task {recipe.task!r}; valid tasks are {sorted(TASKS)}")
    return TASKS[recipe.task](recipe)
