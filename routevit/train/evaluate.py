"""Top-1 / top-5 accuracy, MACs and throughput of a classifier on a validation split."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from .. import flops
from .build import load_checkpoint_model
from .checkpoint import resolve_checkpoint
from .data import eval_loader, find_splits
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


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str | None = None,
    batch_size: int = 256,
    ema: bool = False,
    num_workers: int | None = None,
    device: str = "auto",
    amp: str | None = None,
    keep_ratio: float | None = None,
) -> dict[str, Any]:
    """Rebuild a checkpoint's model from its recipe, load its weights and evaluate it on the
    validation split that the recipe defines under ``data`` (default: the recipe's data.root).
    ``keep_ratio`` routes another share of tokens than the model was trained with (bLViT only).

    Returns top1, top5 (percent), images, gmacs (per image, routevit.flops.count), images_per_s
    (end to end) and model_images_per_s (forward passes only), batch_size and checkpoint.
    """
    ckpt = resolve_checkpoint(checkpoint)
    overrides = []
    if data is not None:
        overrides.append(f"data.root={data}")
    if num_workers is not None:
        overrides.append(f"data.num_workers={num_workers}")
    recipe = checkpoint_recipe(ckpt, overrides)
    splits = find_splits(recipe)
    if not splits.val:
        raise ValueError(
            "the recipe defines no validation split: set data.val_dir or data.holdout_per_class in "
            f"{str(ckpt / 'recipe.yaml')!r}"
        )
    info = init_distributed(device)
    try:
        model = load_checkpoint_model(ckpt, ema=ema)[0].to(info.device)
        if keep_ratio is not None:
            if not callable(getattr(model, "set_keep_ratio", None)):
                raise ValueError(f"--keep-ratio needs a routed model; {type(model).__name__} has no routing")
            model.set_keep_ratio(keep_ratio)
        loader = eval_loader(splits.val, recipe, info, batch_size)
        result = evaluate_model(model, loader, info.device, amp if amp is not None else "none")
        size = recipe.model.img_size
        result["gmacs"] = flops.count(model, (3, size, size))
    finally:
        cleanup()
    result.update(checkpoint=str(ckpt), batch_size=batch_size, ema=ema, device=str(info.device))
    if keep_ratio is not None:
        result["keep_ratio"] = keep_ratio
    return result
