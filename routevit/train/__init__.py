"""Minimal trainer for bLViT (and any timm-style classifier): feature distillation, torchrun DDP,
atomic resumable checkpoints. Entry points: :func:`train`, :func:`evaluate_checkpoint`,
:func:`load_recipe`; the ``routevit train`` / ``routevit eval`` commands call :func:`train_command`
and :func:`eval_command`."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence

from .build import load_checkpoint_model
from .checkpoint import resolve_checkpoint
from .config import Recipe, load_recipe, recipe_from_dict, replace_fields
from .data import BadImageError
from .engine import NonFiniteLossError, TrainResult, train
from .evaluate import evaluate_checkpoint
from .losses import DistillationLoss, feature_distillation_loss
from .pretrained import checkpoint_recipe

__all__ = [
    "BadImageError",
    "DistillationLoss",
    "NonFiniteLossError",
    "Recipe",
    "TrainResult",
    "eval_command",
    "evaluate_checkpoint",
    "feature_distillation_loss",
    "load_checkpoint_model",
    "load_recipe",
    "recipe_from_dict",
    "replace_fields",
    "train",
    "train_command",
]

logger = logging.getLogger("routevit.train")


def _setup_logging() -> None:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(levelname)s %(message)s"
        if "RANK" in os.environ
        else "%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def train_command(recipe_path: str, overrides: Sequence[str], resume: bool) -> int:
    """``routevit train``: 0 when finished, 128 + signal number when stopped by a signal (after
    saving), 1 on a non-finite loss, 2 on a recipe or data error."""
    _setup_logging()
    try:
        recipe = load_recipe(recipe_path, overrides)
        result = train(recipe, resume=resume)
    except (ValueError, FileNotFoundError, FileExistsError, BadImageError) as e:
        print(f"routevit train: error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"routevit train: {e}", file=sys.stderr)
        return 1
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
) -> int:
    """``routevit eval``: a classification checkpoint prints its metrics as one JSON object; a
    ``task: sam`` checkpoint prints an mIoU table (1 point, 3 points, box; ``task="miou"``) or
    the instance mask AP with detector boxes (``task="instances"``) and writes the JSON to
    ``out`` (default: beside the run's checkpoints)."""
    _setup_logging()
    instance_flags = {"--detections": detections, "--score-threshold": score_threshold,
                      "--max-detections": max_detections, "--multimask": multimask or None,
                      "--box-chunk": box_chunk}  # fmt: skip
    try:
        if task not in ("miou", "instances"):
            raise ValueError(f"--task must be 'miou' or 'instances', got {task!r}")
        ckpt = resolve_checkpoint(checkpoint)
        is_sam = checkpoint_recipe(ckpt).task == "sam"
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
            keep_ratio=keep_ratio,
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"routevit eval: error: {e}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result, indent=1))
    return 0
