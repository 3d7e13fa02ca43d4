"""Minimal trainer for bLViT (and any timm-style classifier): feature distillation, torchrun DDP,
atomic resumable checkpoints. Entry points: :func:`train`, :func:`evaluate_checkpoint`,
:func:`load_recipe`; the ``routevit train`` / ``routevit eval`` commands call :func:`train_command`
and :func:`eval_command`."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import BAD_INPUT, register_bad_input, removed_if_left_empty, report
from .build import load_checkpoint_model
from .checkpoint import resolve_checkpoint
from .config import Recipe, factory_overrides, load_recipe, recipe_from_dict, replace_fields
from .data import BadImageError
from .engine import NonFiniteLossError, StepCost, TrainResult, time_steps, train
from .evaluate import evaluate_checkpoint
from .losses import DistillationLoss, feature_distillation_loss
from .pretrained import checkpoint_recipe

__all__ = [
    "BadImageError",
    "DistillationLoss",
    "NonFiniteLossError",
    "Recipe",
    "StepCost",
    "TrainResult",
    "eval_command",
    "evaluate_checkpoint",
    "feature_distillation_loss",
    "load_checkpoint_model",
    "load_recipe",
    "recipe_from_dict",
    "replace_fields",
    "time_steps",
    "train",
    "train_command",
]

logger = logging.getLogger("routevit.train")
register_bad_input(BadImageError)  # unreadable images are bad data (exit status 2)


def _setup_logging() -> None:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(levelname)s %(message)s"
        if "RANK" in os.environ
        else "%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def train_command(recipe_path: str, overrides: Sequence[str], resume: bool, debug: bool = False) -> int:
    """``routevit train``: 0 when finished, 128 + signal number when stopped by a signal (after
    saving), 1 when the run failed (e.g. a non-finite loss), 2 on bad input (recipe, data,
    checkpoint); the error is one line on stderr (with its traceback when ``debug``). A run
    folder this call created is removed again if nothing was written into it."""
    _setup_logging()
    out: Path | None = None
    try:
        recipe = load_recipe(recipe_path, overrides)
        out = Path(recipe.run.output)
        existed = out.exists()
        with removed_if_left_empty(out):
            result = train(recipe, resume=resume)
    except BaseException as e:  # one line and the exit status, whatever it is
        status = report("train", e, debug)
        if status == BAD_INPUT and out is not None and not existed:
            _discard_run_without_checkpoints(out)  # e.g. unreadable images found at the first step
        return status
    if result.status == "interrupted":
        return 128 + (result.signal or 0)
    logger.info(
        "finished: epoch %d, step %d, %.1f training images/s, best %s, last checkpoint %s",
        result.epoch,
        result.step,
        result.train_images_per_s,
        result.best,
        result.last_checkpoint,
    )
    return 0


def _discard_run_without_checkpoints(out: Path) -> None:
    """Remove a run folder this call created, refused for bad input before any checkpoint was
    written (its recipe copy and logs describe a run that did not happen)."""
    if int(os.environ.get("RANK", "0")) == 0 and out.is_dir() and not list(out.glob("checkpoints/step-*")):
        shutil.rmtree(out, ignore_errors=True)


def eval_command(
    checkpoint: str,
    data: str | None,
    batch_size: int | None,
    ema: bool,
    num_workers: int | None,
    device: str,
    annotations: str | None = None,
    images: str | None = None,
    max_images: int | None = None,
    seed: int | None = None,
    out: str | None = None,
    keep_ratio: float | None = None,
    task: str = "miou",
    detections: str | None = None,
    score_threshold: float | None = None,
    max_detections: int | None = None,
    multimask: bool = False,
    bf16: bool = False,
    box_chunk: int | None = None,
    model: str | None = None,
    overrides: Sequence[str] = (),
    holdout_per_class: int | None = None,
    debug: bool = False,
) -> int:
    """``routevit eval``: a classification checkpoint (or a weights file with ``model``) prints
    its metrics on every image of ``data`` (or its ``holdout_per_class`` hold-out) as one JSON
    object; a ``task: sam`` checkpoint prints an mIoU table (1 point, 3 points, box;
    ``task="miou"``) or the instance mask AP with detector boxes (``task="instances"``) and
    writes the JSON to ``out`` (default: beside the run's checkpoints). Returns 0, or the exit
    status of the error printed as one line (2: bad checkpoint, data or option)."""
    _setup_logging()
    instance_flags = {"--detections": detections, "--score-threshold": score_threshold,
                      "--max-detections": max_detections, "--multimask": multimask or None,
                      "--box-chunk": box_chunk}  # fmt: skip
    classifier_flags = {"--model": model, "--set": list(overrides) or None, "--holdout-per-class":
                        holdout_per_class}  # fmt: skip
    try:
        if task not in ("miou", "instances"):
            raise ValueError(f"--task must be 'miou' or 'instances', got {task!r}")
        if Path(checkpoint).is_file():
            ckpt, is_sam = Path(checkpoint), False  # a weights file: evaluate_checkpoint checks --model
        else:
            ckpt = resolve_checkpoint(checkpoint)
            is_sam = checkpoint_recipe(ckpt).task == "sam"
        given = [flag for flag, value in classifier_flags.items() if value is not None]
        if is_sam and given:
            raise ValueError(f"{', '.join(given)} apply to classifiers only; {str(ckpt)!r} is a SAM one")
        if task == "instances" and is_sam:
            from .sam_instances import evaluate_instances_checkpoint, format_instances_table

            if seed is not None or batch_size is not None:
                raise ValueError("--seed and --batch-size apply to --task miou only (instance AP prompts "
                                 "with the detections, one image at a time)")  # fmt: skip
            result = evaluate_instances_checkpoint(
                ckpt, detections, annotations, images or data, max_images,
                0.0 if score_threshold is None else score_threshold,
                100 if max_detections is None else max_detections, multimask, box_chunk or 64, device, bf16,
                num_workers, ema=ema, out=out, keep_ratio=keep_ratio,
            )  # fmt: skip
            print(format_instances_table(result))
            print(f"written to {result['json']}")
            return 0
        if task == "instances":
            raise ValueError(f"--task instances needs a task: sam checkpoint; {str(ckpt)!r} is not one")
        given = [flag for flag, value in instance_flags.items() if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)} apply to --task instances only (SAM checkpoints)")
        if is_sam:
            from .sam_instances import amp_for, resolve_device
            from .sam_task import evaluate_sam_checkpoint, format_table

            result = evaluate_sam_checkpoint(
                ckpt, annotations, images or data, batch_size or 1, max_images, seed, num_workers, device,
                amp=amp_for(resolve_device(device), bf16), ema=ema, out=out, keep_ratio=keep_ratio,
            )  # fmt: skip
            if int(os.environ.get("RANK", "0")) == 0:
                print(format_table(result))
                print(f"written to {result['json']}")
            return 0
        if annotations or images or max_images is not None or seed is not None or out or bf16:
            raise ValueError(
                "--annotations, --images, --max-images, --seed, --out and --bf16 apply to SAM checkpoints "
                "only"
            )
        result = evaluate_checkpoint(
            ckpt, data, batch_size or 256, ema=ema, num_workers=num_workers, device=device,
            keep_ratio=keep_ratio, holdout_per_class=holdout_per_class, model=model,
            overrides=factory_overrides(overrides),
        )  # fmt: skip
    except BaseException as e:  # one line and the exit status, whatever it is
        return report("eval", e, debug)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result, indent=1))
    return 0
