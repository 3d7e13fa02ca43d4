"""Range and consistency checks of a recipe, run when a recipe is built: a bad value is a
one-line ``ValueError`` naming the key, what was expected and what came.

This module imports nothing of :mod:`routevit.train.config` (which calls it), so the checks take
the recipe untyped.
"""

from __future__ import annotations

from typing import Any


def validate(r: Any) -> None:
    """Raise a one-line ValueError naming the first recipe key whose value is out of range."""
    checks = [
        (r.train.epochs >= 1, "train.epochs", "an integer >= 1", r.train.epochs),
        (r.train.batch_size >= 1, "train.batch_size", "an integer >= 1", r.train.batch_size),
        (r.optim.lr > 0, "optim.lr", "a positive float", r.optim.lr),
        *((f > 0, f"optim.lr_scales.{k}", "a positive factor", f) for k, f in r.optim.lr_scales.items()),
        (r.run.keep_last >= 1, "run.keep_last", "an integer >= 1", r.run.keep_last),
        (
            r.run.checkpoint_every_steps >= 0,
            "run.checkpoint_every_steps",
            ">= 0",
            r.run.checkpoint_every_steps,
        ),
        (r.run.val_every_epochs >= 1, "run.val_every_epochs", "an integer >= 1", r.run.val_every_epochs),
        (r.run.log_every_steps >= 1, "run.log_every_steps", "an integer >= 1", r.run.log_every_steps),
        (r.data.holdout_per_class >= 0, "data.holdout_per_class", ">= 0", r.data.holdout_per_class),
        (r.data.num_workers >= 0, "data.num_workers", ">= 0", r.data.num_workers),
        (
            0 <= r.model.drop_path_rate < 1,
            "model.drop_path_rate",
            "a float in [0, 1)",
            r.model.drop_path_rate,
        ),
        (r.distill.lambda_fd >= 0, "distill.lambda_fd", ">= 0", r.distill.lambda_fd),
        (
            0 <= r.augment.label_smoothing < 1,
            "augment.label_smoothing",
            "in [0, 1)",
            r.augment.label_smoothing,
        ),
    ]
    checks += [
        (r.sam.masks_per_image >= 1, "sam.masks_per_image", "an integer >= 1", r.sam.masks_per_image),
        (0 <= r.sam.box_prob <= 1, "sam.box_prob", "a float in [0, 1]", r.sam.box_prob),
        (
            len(r.sam.num_points) > 0 and all(n >= 1 for n in r.sam.num_points),
            "sam.num_points",
            "a non-empty list of integers >= 1",
            r.sam.num_points,
        ),
        (r.sam.box_noise >= 0, "sam.box_noise", ">= 0", r.sam.box_noise),
        (r.sam.box_noise_max >= 0, "sam.box_noise_max", ">= 0", r.sam.box_noise_max),
    ]
    if r.task == "classification":  # one class: the loss is 0 and every prediction "right"
        checks.append((r.model.num_classes >= 2, "model.num_classes", "an integer >= 2 for task "
                       "classification", r.model.num_classes))  # fmt: skip
    for ok, key, expected, got in checks:
        if not ok:
            raise ValueError(f"recipe key {key} must be {expected}, got {got!r}")
    if r.task == "classification" and r.data.holdout_per_class > 0 and r.data.val_dir is not None:
        raise ValueError(
            "recipe keys data.holdout_per_class and data.val_dir are exclusive: validation is either "
            f"held out of train_dir or read from val_dir (got holdout_per_class={r.data.holdout_per_class}, "
            f"val_dir={r.data.val_dir!r}); set data.val_dir to null"
        )
    if r.task == "classification":
        _validate_augment(r)
    span = r.model.keep_ratio_range
    if span is not None and (len(span) != 2 or not 0 < span[0] <= span[1] <= 1):
        raise ValueError(
            "recipe key model.keep_ratio_range must be [low, high] with 0 < low <= high <= 1, got "
            f"{list(span)!r}"
        )
    if span is not None and r.model.keep_ratio is None:
        raise ValueError("recipe key model.keep_ratio_range needs model.keep_ratio (the ratio validation and "
                         "checkpoints use)")


def _validate_augment(r: Any) -> None:
    """The tensor path of ``data.cache`` knows crop-with-padding, flips, Mixup/CutMix only;
    ``augment.crop: pad`` exists on that path only."""
    a = r.augment
    if a.pad < 0:
        raise ValueError(f"recipe key augment.pad must be >= 0, got {a.pad!r}")
    if r.data.cache:
        pil_only = {"augment.crop": (a.crop, "pad"), "augment.auto_augment": (a.auto_augment, None),
                    "augment.color_jitter": (a.color_jitter, 0.0), "augment.re_prob": (a.re_prob, 0.0)}
        for key, (got, allowed) in pil_only.items():
            if got != allowed and not (allowed == 0.0 and not got):
                raise ValueError(
                    f"recipe key {key} must be {allowed!r} with data.cache: true (batches are augmented "
                    f"on tensors: crop with padding, flip, Mixup/CutMix), got {got!r}"
                )
    elif a.crop == "pad":
        raise ValueError("recipe key augment.crop: pad needs data.cache: true (the tensor augmentation path)")
