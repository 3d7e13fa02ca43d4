"""Measurements of the miniature beside its tables: training throughput per data path and
precision (same process, same model), the int8 accuracy change of trained models, and how much
a trained bLViT's prediction layers matter (its accuracy with random routing)."""

from __future__ import annotations

import copy
import itertools
import time
from typing import Any

import torch
from torch import nn

from ..train.build import build_student
from ..train.config import Recipe, replace_fields
from ..train.data import find_splits, train_loader
from ..train.distributed import DistInfo
from ..train.evaluate import autocast

CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def _modes(recipe: Recipe) -> list[tuple[str, str, Recipe]]:
    jpeg = replace_fields(
        recipe, data={"cache": False, "num_workers": 1},
        augment={"crop": "random_resized", "scale": (0.5, 1.0)},
    )  # fmt: skip
    cached = replace_fields(recipe, data={"cache": True, "num_workers": 0}, augment={"crop": "pad"})
    return [
        ("JPEG files, PIL transform, 1 loader worker (before)", "fp32", jpeg),
        ("uint8 tensor cache, batch augmentation on tensors", "fp32", cached),
        ("uint8 tensor cache, batch augmentation on tensors", "bf16 autocast", cached),
    ]


def training_throughput(recipe: Recipe, steps: int, warmup: int = 2) -> dict[str, Any]:
    """Images/s of ``steps`` optimizer steps (AdamW, cross-entropy) of ``recipe``'s model, data
    loading included, for the JPEG loader, the tensor cache in fp32, and the cache under bf16
    autocast; the modes are timed one after the other in this process, each on a fresh model."""
    splits = find_splits(recipe)
    modes = []
    for data, precision, mode_recipe in _modes(recipe):
        torch.manual_seed(0)
        model = build_student(mode_recipe.model, pretrained=False).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        loader, sampler = train_loader(splits.train, mode_recipe, CPU, mixup=False)
        sampler.set_position(0, 0)
        amp = "bf16" if precision.startswith("bf16") else "none"
        images, start = 0, 0.0
        for i, batch in enumerate(itertools.islice(loader, warmup + steps)):
            if i == warmup:
                start, images = time.perf_counter(), 0
            with autocast(CPU.device, amp):
                loss = nn.functional.cross_entropy(model(batch.images), batch.targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            images += len(batch.targets)
        modes.append({"data": data, "precision": precision,
                      "images_per_s": images / (time.perf_counter() - start)})  # fmt: skip
        del loader
    return {"steps": steps, "batch_size": recipe.train.batch_size, "modes": modes}


def int8_accuracy(label: str, model: nn.Module, top1: float, accuracy_of) -> dict[str, Any] | None:
    """fp32 and int8 (torchao dynamic-activation int8 weights) top-1 of a trained model; None
    when torchao is not installed. ``accuracy_of(model) -> float`` scores a model."""
    from ..bench_peers import prepare

    try:
        quantized = prepare(model, "int8", "cpu")
    except ImportError:
        return None
    return {"label": label, "fp32": top1, "int8": accuracy_of(quantized)}


class UniformScores(nn.Module):
    """A scorer that ignores the tokens: i.i.d. uniform scores per token, normalised to sum to 1
    per sample as a [`Router`][routevit.layers.Router]'s softmax does (so score scaling sees the
    same scale). Draws from torch's global generator, as dropout does.

    ``score(x (B, N, C), next_block)`` -> ``(B, N)``.
    """

    def score(self, x: torch.Tensor, next_block: nn.Module | None = None) -> torch.Tensor:
        scores = torch.rand(x.shape[:2], device=x.device, dtype=x.dtype)
        return scores / scores.sum(dim=-1, keepdim=True)


def random_routing_accuracy(model: nn.Module, accuracy_of, seed: int = 0) -> float:
    """``accuracy_of`` a copy of ``model`` whose prediction layers all route at random
    ([`UniformScores`][]; the policy still keeps its always-kept tokens, CLS): what the trained
    routers add is the model's own accuracy minus this. ``accuracy_of(model) -> float``."""
    routers = getattr(getattr(model, "encoder", None), "routers", None)
    if not isinstance(routers, nn.ModuleDict) or not len(routers):
        raise ValueError(f"random routing needs a model with prediction layers (encoder.routers), "
                         f"got {type(model).__name__}")  # fmt: skip
    model = copy.deepcopy(model)
    for key in list(routers):
        model.encoder.routers[key] = UniformScores()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return accuracy_of(model)
