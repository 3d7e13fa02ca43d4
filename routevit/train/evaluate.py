"""Top-1 / top-5 accuracy, MACs and throughput of a classifier on exactly the images it is given:
a folder of class folders (all of it, or a documented hold-out when asked), or a recipe's
validation split; the class folders must be the ones the model was trained on."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from .. import flops
from ..errors import one_line
from ..interop.weights import model_from_file
from .build import load_checkpoint_model
from .checkpoint import resolve_checkpoint
from .config import Recipe, recipe_from_dict
from .data import BadImageError, Sample, eval_loader, find_splits, split_holdout
from .distributed import all_reduce_sum, cleanup, init_distributed
from .pretrained import checkpoint_recipe


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def evaluate_model(
    model: nn.Module, loader: DataLoader, device: torch.device, amp: str = "none"
) -> dict[str, Any]:
    """Accuracy over the whole split (summed over ranks when distributed).

    ``images_per_s`` is end to end (data loading included); ``model_images_per_s`` times only
    the forward passes (synchronized on CUDA).
    """
    was_training = model.training
    model.eval()
    # count of top-1 hits, top-5 hits, images, skipped images
    totals = torch.zeros(4, dtype=torch.float64)
    model_time = 0.0
    start = time.perf_counter()
    for batch in loader:
        x = batch.images.to(device, non_blocking=True)
        y = batch.targets.to(device, non_blocking=True)
        t0 = time.perf_counter()
        with autocast(device, amp):
            logits = model(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        model_time += time.perf_counter() - t0
        k = min(5, logits.shape[-1])
        top = logits.float().topk(k, dim=-1).indices
        hits = top.eq(y[:, None])
        totals += torch.tensor([hits[:, 0].sum().item(), hits.any(-1).sum().item(), len(y), batch.skipped],
                               dtype=torch.float64)  # fmt: skip
    elapsed = time.perf_counter() - start
    model.train(was_training)
    totals = all_reduce_sum(totals.to(device)).cpu()
    n = int(totals[2])
    if n == 0:
        raise ValueError("the validation split has no readable images")
    return {
        "top1": 100.0 * totals[0].item() / n,
        "top5": 100.0 * totals[1].item() / n,
        "images": n,
        "skipped": int(totals[3]),
        "seconds": elapsed,
        "images_per_s": n / elapsed,
        "model_images_per_s": n / max(model_time, 1e-9),
    }


def checkpoint_classes(ckpt: Path) -> list[str] | None:
    """The class names a checkpoint was trained on (``meta.json``), or None for checkpoints
    written before they were recorded."""
    meta = Path(ckpt) / "meta.json"
    if not meta.is_file():
        return None
    try:
        classes = json.loads(meta.read_text()).get("classes")
    except (ValueError, AttributeError):
        raise ValueError(f"{str(meta)!r} must hold the checkpoint's meta as JSON, got other text") from None
    return list(classes) if isinstance(classes, list) else None


def folder_samples(
    folder: str | Path, holdout_per_class: int | None = None
) -> tuple[list[Sample], list[str]]:
    """Every image of ``folder``'s class folders (ImageFolder order), or with
    ``holdout_per_class`` the hold-out of each class (:func:`~routevit.train.data.split_holdout`);
    and the class names."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"--data: expected a folder of class folders, got {str(root)!r} (no folder)")
    try:
        dataset = ImageFolder(str(root))
    except FileNotFoundError as err:  # no class folder, or no file with an image suffix
        raise FileNotFoundError(f"--data {str(root)!r}: expected class folders of images; {err}") from None
    samples = list(dataset.samples)
    if holdout_per_class is not None:
        samples = split_holdout(samples, holdout_per_class)[1]
    return samples, list(dataset.classes)


def _short(names: Sequence[str]) -> str:
    shown = ", ".join(names[:6])
    return f"[{shown}{', ...' if len(names) > 6 else ''}] ({len(names)})"


def check_classes(found: Sequence[str], trained: Sequence[str] | None, num_classes: int, where: str) -> None:
    """Refuse data whose class folders are not the ones the model was trained on: the names
    (when the checkpoint recorded them) or at least their number."""
    if trained is not None and list(found) != list(trained):
        raise ValueError(
            f"{where} must have the class folders the checkpoint was trained on, {_short(trained)}, "
            f"got {_short(found)}"
        )
    if len(found) != num_classes:
        raise ValueError(f"{where} must have {num_classes} class folders (the model's), got {_short(found)}")


def _weights_file_recipe(name: str, model: nn.Module, data: str, num_workers: int | None) -> Recipe:
    """The settings a weights file is evaluated with: the model's input size and normalisation
    (its registry facts), DeiT's evaluation transform."""
    from ..models import model_info

    info = model_info(name)
    cfg = getattr(model, "config", None)
    data_section: dict[str, Any] = {"root": data, "train_dir": ".", "val_dir": None}
    if num_workers is not None:
        data_section["num_workers"] = num_workers
    return recipe_from_dict({
        "model": {"name": name, "img_size": getattr(cfg, "img_size", info.input_size[-1]),
                  "num_classes": model.num_classes},
        "data": data_section,
        "augment": {"mean": list(info.mean), "std": list(info.std)},
    })  # fmt: skip


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str | None = None,
    batch_size: int = 256,
    ema: bool = False,
    num_workers: int | None = None,
    device: str = "auto",
    amp: str | None = None,
    keep_ratio: float | None = None,
    *,
    holdout_per_class: int | None = None,
    model: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint (its model rebuilt from its recipe) or a weights file (``model``:
    a routevit classifier name, ``overrides`` its factory's options) on exactly the images it is
    given: every image of ``data``'s class folders, or with ``holdout_per_class`` the N
    lexicographically last files of each class; without ``data``, the recipe's validation split.
    The class folders must be the ones the checkpoint was trained on (names, when its
    ``meta.json`` records them, and number). ``keep_ratio`` routes another share of tokens than
    the model was trained with (bLViT only).

    Returns top1, top5 (percent), images, gmacs (per image, routevit.flops.count), images_per_s
    (end to end) and model_images_per_s (forward passes only), batch_size and checkpoint.
    """
    path = Path(checkpoint)
    if path.is_file():
        if model is None:
            raise ValueError(f"{str(path)!r} is a weights file: name its architecture with --model NAME")
        if data is None:
            raise ValueError(f"evaluating the weights file {str(path)!r} needs --data DIR (class folders)")
        if ema:
            raise ValueError("--ema applies to routevit checkpoints; a weights file holds one set of weights")
        from ..models import list_models

        if model not in list_models(task="classification"):  # before anything is built
            raise ValueError(
                f"--model of a weights file expects a routevit classifier, one of "
                f"{list_models(task='classification')}, got {model!r} (SAM: evaluate a routevit run folder)"
            )
        net = model_from_file(path, model, overrides)
        recipe, trained, ckpt = _weights_file_recipe(model, net, data, num_workers), None, path
    else:
        if model is not None or overrides:
            raise ValueError(
                f"{str(path)!r} is a routevit run or checkpoint folder: its recipe names the model, so "
                "--model/--set apply only to weights files"
            )
        ckpt = resolve_checkpoint(path)
        workers = [f"data.num_workers={num_workers}"] if num_workers is not None else []
        recipe = checkpoint_recipe(ckpt, workers)
        if recipe.task != "classification":
            raise ValueError(f"{str(ckpt)!r} is a {recipe.task} checkpoint; expected a classification one")
        net, trained = None, checkpoint_classes(ckpt)
    if data is not None:
        samples, classes = folder_samples(data, holdout_per_class)
        where = f"--data {data!r}"
    else:
        if holdout_per_class is not None:
            raise ValueError("--holdout-per-class applies to --data DIR; the recipe's split has its own rule")
        splits = find_splits(recipe)
        samples, classes, where = splits.val, splits.classes, f"the recipe's data ({recipe.data.root!r})"
        if not samples:
            raise ValueError(
                "the recipe defines no validation split: pass --data DIR, or set data.val_dir or "
                f"data.holdout_per_class in {str(ckpt / 'recipe.yaml')!r}"
            )
    check_classes(classes, trained, recipe.model.num_classes, where)
    info = init_distributed(device)
    try:
        net = (net if net is not None else load_checkpoint_model(ckpt, ema=ema)[0]).to(info.device)
        if keep_ratio is not None:
            if not callable(getattr(net, "set_keep_ratio", None)):
                raise ValueError(f"--keep-ratio needs a routed model; {type(net).__name__} has no routing")
            net.set_keep_ratio(keep_ratio)
        loader = eval_loader(samples, recipe, info, batch_size)
        try:
            result = evaluate_model(net, loader, info.device, amp if amp is not None else "none")
        except BadImageError as err:
            raise BadImageError(f"{where}: expected images Pillow can read; {one_line(err)}") from None
        size = recipe.model.img_size
        result["gmacs"] = flops.count(net, (3, size, size))
    finally:
        cleanup()
    result.update(checkpoint=str(ckpt), batch_size=batch_size, ema=ema, device=str(info.device))
    if keep_ratio is not None:
        result["keep_ratio"] = keep_ratio
    return result
