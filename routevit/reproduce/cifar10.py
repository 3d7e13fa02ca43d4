"""The paper's Table 1 and Table 3 in miniature on CIFAR-10 (``routevit reproduce cifar10``).

Every row is a ``routevit train`` run of a recipe ``routevit/reproduce/recipes/mini_*.yaml``
(package data; linked as ``recipes/cifar10/mini_*.yaml`` in a checkout, so each row can be rerun
alone), then evaluated on the held-out split (the 500 lexicographically last
files of each class), counted with [`routevit.flops.count`][] and timed against the teacher in
the same process with [`routevit.bench.time_pair`][] (alternating, median of per-pair ratios).

Runs and per-row results live under ``--out``; a rerun skips finished trainings and measured rows,
so a killed reproduction continues where it stopped.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..bench import time_pair
from ..flops import count
from ..train.build import build_student, load_checkpoint_model
from ..train.checkpoint import atomic_write_text, latest_checkpoint, load_train_state
from ..train.config import Recipe, load_recipe, recipe_to_dict, replace_fields
from ..train.data import eval_loader, find_splits
from ..train.distributed import DistInfo
from ..train.engine import train
from ..train.evaluate import evaluate_model

logger = logging.getLogger(__name__)

# Shipped inside the package (pyproject package-data), so a reproduction runs from an installed
# wheel; recipes/cifar10/mini_*.yaml in a checkout are links to these files.
RECIPES = Path(__file__).resolve().parent / "recipes"
IMG = 32


@dataclass(frozen=True)
class Budget:
    """How long each kind of row trains, and how the rows are measured."""

    teacher_epochs: int = 4
    student_epochs: int = 1
    seeds: tuple[int, ...] = (0, 1)  # headline rows (teacher excluded: one teacher for all)
    batch_size: int = 256
    holdout_per_class: int = 500  # the recipes' documented validation rule
    num_workers: int = 1  # data loader workers per training run
    max_train_per_class: int | None = None  # a smoke run on a subset
    max_val_per_class: int | None = None
    bench_batch: int = 256
    bench_repeats: int = 7
    sweep: tuple[float, ...] = (0.1, 0.2, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class Row:
    """One trained model of the tables.

    ``epochs`` is ``"teacher"``, ``"student"`` or ``"both"`` (teacher + student epochs: a model
    trained from scratch that has seen as many epochs as the teacher-initialised rows' lineage).
    """

    key: str
    label: str
    recipe: str
    tables: tuple[str, ...]
    epochs: str = "student"
    from_teacher: bool = True  # init from the teacher's weights
    distill: bool = True  # keep the recipe's feature distillation (if it has one)
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra model kwargs
    seeded: bool = False  # trained once per Budget.seed


def rows() -> list[Row]:
    """Table 1 (peers at about the bLViT-mini's MACs) and Table 3 (the ablation path)."""
    return [
        Row("teacher", "ViT-mini (teacher)", "mini_teacher.yaml", ("table1",), "teacher", False),
        # the control of every fine-tuned row: the teacher trained as long as they are, unchanged
        Row("teacher_ft", "ViT-mini (teacher), fine-tuned like the rows below", "mini_teacher.yaml",
            ("table1",)),
        Row("narrow", "ViT-mini narrow (width 75)", "mini_narrow.yaml", ("table1",), "both", False),
        Row("evit", "EViT on the teacher", "mini_evit.yaml", ("table1",)),
        Row("tome", "ToMe on the teacher", "mini_tome.yaml", ("table1",)),
        Row("early_prune", "Early prune on the teacher", "mini_early_prune.yaml", ("table1",)),
        Row("blvit", "bLViT-mini", "mini_blvit.yaml", ("table1", "table3"), seeded=True),
        Row("t3_early_prune", "early prune", "mini_blvit.yaml", ("table3",), from_teacher=False,
            distill=False, kwargs={"ablation": "early_prune"}),
        Row("t3_e_block", "+ E-block", "mini_blvit.yaml", ("table3",), from_teacher=False,
            distill=False, kwargs={"ablation": "e_block"}),
        Row("t3_predictor", "+ predictor", "mini_blvit.yaml", ("table3",), from_teacher=False,
            distill=False, kwargs={"ablation": "predictor"}),
        Row("t3_semi_ca", "+ semi-cross attention", "mini_blvit.yaml", ("table3",), from_teacher=False,
            distill=False),
        Row("t3_pretrain", "+ init from the teacher", "mini_blvit.yaml", ("table3",), distill=False),
    ]  # fmt: skip


def _ablation_kwargs(step: str) -> dict[str, Any]:
    from ..baselines.ablation import table3_overrides

    return table3_overrides(step)


def row_recipe(row: Row, seed: int, data: str, out: Path, budget: Budget) -> Recipe:
    """The recipe file of ``row`` with this reproduction's data, outputs, epochs and seed."""
    recipe = load_recipe(RECIPES / row.recipe)
    teacher_dir = str(out / "teacher")
    epochs = {
        "teacher": budget.teacher_epochs,
        "student": budget.student_epochs,
        "both": budget.teacher_epochs + budget.student_epochs,
    }[row.epochs]
    model = dict(recipe_to_dict(recipe)["model"])
    model["pretrained"] = teacher_dir if row.from_teacher else None
    kwargs = dict(model["kwargs"])
    extra = dict(row.kwargs)
    if "ablation" in extra:
        kwargs.update(_ablation_kwargs(extra.pop("ablation")))
    kwargs.update(extra)
    model["kwargs"] = kwargs
    distill = dict(recipe_to_dict(recipe)["distill"])
    if row.distill and distill["teacher"] is not None:
        distill["teacher_checkpoint"] = teacher_dir
    else:
        distill["teacher"] = None
    name = row.key if not row.seeded else f"{row.key}_seed{seed}"
    # one schedule per kind of row: from scratch as the teacher, from the teacher as the bLViT-mini
    optim = dict(recipe_to_dict(recipe)["optim"])
    source = "mini_blvit.yaml" if row.from_teacher else "mini_teacher.yaml"
    source_optim = recipe_to_dict(load_recipe(RECIPES / source))["optim"]
    optim.update(lr=source_optim["lr"], warmup_epochs=source_optim["warmup_epochs"])
    return replace_fields(
        recipe,
        model=model,
        distill=distill,
        optim=optim,
        data={"root": data, "holdout_per_class": budget.holdout_per_class, "num_workers": budget.num_workers,
              "max_train_per_class": budget.max_train_per_class,
              "max_val_per_class": budget.max_val_per_class},
        train={"epochs": epochs, "seed": seed, "batch_size": budget.batch_size},
        run={"output": str(out / name)},
    )  # fmt: skip


def _finished(recipe: Recipe) -> bool:
    latest = latest_checkpoint(Path(recipe.run.output) / "checkpoints")
    return latest is not None and load_train_state(latest)["epoch"] >= recipe.train.epochs


def train_row(recipe: Recipe) -> None:
    """Train (or finish training) one row; a finished run is left as it is."""
    if _finished(recipe):
        logger.info("%s: already trained", recipe.run.output)
        return
    start = time.perf_counter()
    result = train(recipe, resume=True)
    if result.status != "finished":
        raise RuntimeError(f"training {recipe.run.output} was interrupted (signal {result.signal})")
    logger.info("%s: trained in %.0f s", recipe.run.output, time.perf_counter() - start)


def load_row_model(recipe: Recipe, keep_ratio: float | None = None) -> nn.Module:
    """The final weights of a trained row (the last checkpoint, not the best on validation),
    optionally routing another share of tokens than it was trained with."""
    model = load_checkpoint_model(latest_checkpoint(Path(recipe.run.output) / "checkpoints"))[0]
    if keep_ratio is not None:
        model.set_keep_ratio(keep_ratio)
    return model


def accuracy(model: nn.Module, recipe: Recipe) -> float:
    """Top-1 (percent) on the held-out split."""
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    loader = eval_loader(find_splits(recipe).val, recipe, info, batch_size=500)
    return evaluate_model(model, loader, info.device)["top1"]


def measure(model: nn.Module, teacher: nn.Module, recipe: Recipe, budget: Budget) -> dict[str, float]:
    """Accuracy, GMACs per image and images/s (alternated with the teacher in this process)."""
    timing = time_pair(
        model, teacher, lambda b: torch.randn(b, 3, IMG, IMG), budget.bench_batch,
        warmup=2, repeats=budget.bench_repeats,
    )  # fmt: skip
    return {
        "top1": accuracy(model, recipe),
        "gmacs": count(model, input_size=(3, IMG, IMG)),
        "images_per_s": timing.candidate_images_per_s,
        "speedup_vs_teacher": timing.speedup,
    }


def _cached(path: Path, compute) -> dict[str, Any]:
    if path.is_file():
        return json.loads(path.read_text())
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(value, indent=1))
    return value


def reproduce(data: str, out: str | Path, budget: Budget, only: Sequence[str] = ()) -> dict[str, Any]:
    """Train, evaluate and time every row; returns (and saves) ``out/results.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    selected = [r for r in rows() if not only or r.key in only or r.key == "teacher"]
    plans = [(row, seed) for row in selected for seed in (budget.seeds if row.seeded else (0,))]
    started = time.perf_counter()
    recipes = {}
    for row, seed in plans:
        recipe = row_recipe(row, seed, data, out, budget)
        recipes[(row.key, seed)] = recipe
        train_row(recipe)
    train_seconds = time.perf_counter() - started

    teacher_recipe = recipes[("teacher", 0)]
    teacher = load_row_model(teacher_recipe)
    results: dict[str, Any] = {"budget": asdict(budget), "rows": [], "sweep": []}
    for row, seed in plans:
        recipe = recipes[(row.key, seed)]
        name = Path(recipe.run.output).name
        value = _cached(out / "measured" / f"{name}.json",
                        lambda r=recipe: measure(load_row_model(r), teacher, r, budget))  # fmt: skip
        results["rows"].append({"key": row.key, "label": row.label, "tables": list(row.tables),
                                "seed": seed, **value})  # fmt: skip
    if "tome" in {r.key for r in selected}:
        # ToMe's selling point: no training at all, patched straight onto the teacher
        recipe = recipes[("tome", 0)]
        off_the_shelf = replace(recipe.model, pretrained=None)
        value = _cached(out / "measured" / "tome_off_the_shelf.json", lambda: measure(
            _teacher_weights_into(build_student(off_the_shelf, pretrained=False), teacher),
            teacher, recipe, budget))  # fmt: skip
        results["rows"].append({"key": "tome_off_the_shelf", "label": "ToMe on the teacher, no training",
                                "tables": ["table1"], "seed": 0, **value})  # fmt: skip
    blvit = [(row, seed) for row, seed in plans if row.key == "blvit"]
    if blvit:
        recipe = recipes[("blvit", blvit[0][1])]
        for ratio in budget.sweep:
            value = _cached(out / "measured" / f"sweep_{ratio:g}.json",
                            lambda r=ratio: measure(load_row_model(recipe, r), teacher, recipe, budget))
            results["sweep"].append({"keep_ratio": ratio, **value})
    total = time.perf_counter() - started
    # an output folder built over several calls (a killed run resumed, a row added) adds them up
    saved = out / "results.json"
    before = json.loads(saved.read_text()).get("seconds", {}) if saved.is_file() else {}
    results["seconds"] = {
        "training_this_call": train_seconds,
        "total_this_call": total,
        "training_all_calls": before.get("training_all_calls", before.get("training_this_call", 0.0))
        + train_seconds,
        "total_all_calls": before.get("total_all_calls", before.get("total_this_call", 0.0)) + total,
        "calls": before.get("calls", 1 if before else 0) + 1,
    }
    atomic_write_text(out / "results.json", json.dumps(results, indent=1))
    return results


def _teacher_weights_into(model: nn.Module, teacher: nn.Module) -> nn.Module:
    model.load_state_dict(teacher.state_dict())
    return model.eval()
