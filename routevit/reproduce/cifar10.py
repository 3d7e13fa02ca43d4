"""The paper's Tables 1, 3, 4 and 5 in miniature on CIFAR-10 (``routevit reproduce cifar10``).

Every row (:mod:`routevit.reproduce.rows`) is a ``routevit train`` run, then evaluated on the
held-out split (the 500 lexicographically last files of each class), counted with
[`routevit.flops.count`][] and timed against the teacher in the same process with
[`routevit.bench.time_pair`][] (alternating, median of per-pair ratios). The bLViT-mini of each
seed is also swept over keep ratios at inference (the run-time dial), which is what places it at
the *measured speed* of each peer; the dial row is one model trained for every keep ratio.

Runs and per-row results live under ``--out``; a rerun skips finished trainings and measured rows,
so a killed reproduction continues where it stopped. Training order: the teacher, the headline
rows seed by seed, then the tables.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..bench import time_pair
from ..errors import Stopped
from ..flops import count
from ..train.build import build_student, load_checkpoint_model, lr_scale_patterns
from ..train.checkpoint import atomic_write_text, latest_checkpoint, load_train_state
from ..train.config import Recipe, load_recipe, recipe_to_dict, replace_fields
from ..train.data import eval_loader, find_splits
from ..train.distributed import DistInfo
from ..train.engine import train
from ..train.evaluate import evaluate_model
from .checks import int8_accuracy, random_routing_accuracy, training_throughput
from .rows import DIAL_RANGE, HEADLINE, TABLE5_KEEP, Row, rows
from .side_by_side import train_side_by_side

logger = logging.getLogger(__name__)

# Shipped inside the package (pyproject package-data), so a reproduction runs from an installed
# wheel; recipes/cifar10/mini_*.yaml in a checkout are links to these files.
RECIPES = Path(__file__).resolve().parent / "recipes"
IMG = 32
TEACHER_ARCH = "vit_tiny_patch16_224"  # the timm name of the teacher's recipe
DIAL_POINTS = (0.1, 0.125, 0.2, 0.25, 0.375, 0.5)  # where the dial row is measured


@dataclass(frozen=True)
class Budget:
    """How long each kind of row trains, and how the rows are measured."""

    teacher_epochs: int = 30
    student_epochs: int = 12  # 6 left the bLViT-mini 1.11 points below the teacher, 12: 0.39
    seeds: tuple[int, ...] = (0, 1, 2)  # seeded rows (the teacher is trained once)
    batch_size: int = 256
    holdout_per_class: int = 500  # the recipes' documented validation rule
    num_workers: int = 0  # data loader workers per training run (0: the tensor cache needs none)
    max_train_per_class: int | None = None  # a smoke run on a subset
    max_val_per_class: int | None = None
    bench_batch: int = 256
    bench_repeats: int = 7
    sweep: tuple[float, ...] = (0.1, 0.15, 0.2, 0.25, 0.35, 0.5, 0.75, 1.0)
    throughput_steps: int = 20  # training steps per loader/precision in the throughput check


PRESETS: dict[str, dict[str, Any]] = {
    "full": {},
    # the headline rows alone, one seed: what a first look needs
    "headline": {"seeds": (0,)},
    # every code path on a subset, in minutes: not a result
    "quick": {"teacher_epochs": 1, "student_epochs": 1, "seeds": (0, 1), "batch_size": 64,
              "max_train_per_class": 64, "max_val_per_class": 20, "bench_batch": 32, "bench_repeats": 2,
              "sweep": (0.2, 0.5, 1.0), "throughput_steps": 3},
}  # fmt: skip
HEADLINE_ONLY = ("teacher", "blvit", "evit", "tome")  # --preset headline's rows


def row_name(row: Row, seed: int) -> str:
    return f"{row.key}_seed{seed}" if row.seeded else row.key


def matched_reductions(budget: Budget, out: Path) -> dict[str, Any]:
    """EViT's keep rate and ToMe's r whose MACs are closest to the bLViT-mini's (counted once,
    saved in ``out/matched.json``)."""
    from ..bench_peers import match_evit, match_tome

    def compute() -> dict[str, Any]:
        blvit = load_recipe(RECIPES / "mini_blvit.yaml").model
        target = count(build_student(blvit, pretrained=False), input_size=(3, IMG, IMG))
        teacher = load_recipe(RECIPES / "mini_teacher.yaml").model
        evit_layers = load_recipe(RECIPES / "mini_evit.yaml").model.token_reduction["prune_layers"]

        def build() -> nn.Module:
            return build_student(teacher, pretrained=False)

        keep, evit_gmacs = match_evit(build, target, (3, IMG, IMG), evit_layers)
        r, tome_gmacs = match_tome(build, target, (3, IMG, IMG))
        return {"blvit_gmacs": target, "evit_keep_rate": keep, "evit_gmacs": evit_gmacs, "tome_r": r,
                "tome_gmacs": tome_gmacs}  # fmt: skip

    return _cached(out / "matched.json", compute)


def row_recipe(
    row: Row, seed: int, data: str, out: Path, budget: Budget, matched: dict[str, Any] | None = None
) -> Recipe:
    """The recipe file of ``row`` with this reproduction's data, outputs, epochs, seed and the
    row's switches (see :mod:`routevit.reproduce.rows` for the fairness rules)."""
    recipe = load_recipe(RECIPES / row.recipe)
    as_dict = recipe_to_dict(recipe)
    teacher_dir = str(out / "teacher")
    epochs = budget.teacher_epochs if row.epochs == "teacher" else budget.student_epochs
    model = {**as_dict["model"], **row.model, "pretrained": teacher_dir if row.from_teacher else None}
    kwargs = dict(model["kwargs"])
    extra = dict(row.kwargs)
    if "ablation" in extra:
        from ..baselines.ablation import table3_overrides

        kwargs.update(table3_overrides(extra.pop("ablation")))
    model["kwargs"] = {**kwargs, **extra}
    if row.match is not None:
        if matched is None:
            raise ValueError(f"row {row.key!r} matches the bLViT-mini's MACs: pass matched_reductions()")
        reduction = dict(model["token_reduction"])
        if row.match == "evit":
            reduction["keep_rate"] = matched["evit_keep_rate"]
        else:
            reduction["r"] = matched["tome_r"]
        model["token_reduction"] = reduction
    fine_tune = recipe_to_dict(load_recipe(RECIPES / "mini_blvit.yaml"))
    distill = dict(as_dict["distill"])
    if row.distill is not None:
        lambda_fd = row.lambda_fd if row.lambda_fd is not None else fine_tune["distill"]["lambda_fd"]
        distill.update(
            teacher=TEACHER_ARCH, teacher_checkpoint=teacher_dir, feature=row.distill, lambda_fd=lambda_fd
        )
    else:
        distill["teacher"] = None
    # one optimizer and schedule per kind of row: from scratch as the teacher, from the teacher as
    # the bLViT-mini (every fine-tuned row alike)
    source = fine_tune if row.from_teacher else recipe_to_dict(load_recipe(RECIPES / "mini_teacher.yaml"))
    optim = {**as_dict["optim"], **source["optim"]}
    built = replace_fields(
        recipe,
        model=model,
        distill=distill,
        optim=optim,
        augment=source["augment"],
        data={"root": data, "holdout_per_class": budget.holdout_per_class, "num_workers": budget.num_workers,
              "max_train_per_class": budget.max_train_per_class,
              "max_val_per_class": budget.max_val_per_class},
        train={"epochs": epochs, "seed": seed, "batch_size": budget.batch_size},
        run={"output": str(out / row_name(row, seed))},
    )  # fmt: skip
    return replace_fields(built, optim={"lr_scales": own_lr_scales(built)})


def own_lr_scales(recipe: Recipe) -> dict[str, float]:
    """The ``optim.lr_scales`` patterns that name parameters of the recipe's student.

    The fine-tuning recipe's factors speed up the layers that a bLViT starts fresh (E path,
    predictors); a peer or an ablation without those layers has nothing they name, so every one
    of its parameters keeps the common learning rate.
    """
    scales = recipe.optim.lr_scales
    if not scales:
        return {}
    student = build_student(recipe.model, pretrained=False)
    named = {pattern for name, _ in student.named_parameters() for pattern in lr_scale_patterns(name, scales)}
    return {pattern: factor for pattern, factor in scales.items() if pattern in named}


def _finished(recipe: Recipe) -> bool:
    latest = latest_checkpoint(Path(recipe.run.output) / "checkpoints")
    return latest is not None and load_train_state(latest)["epoch"] >= recipe.train.epochs


def train_row(recipe: Recipe, record: Callable[[float], None] | None = None) -> float:
    """Train (or finish training) one row; returns the seconds this call trained (0 when the
    run had finished already). ``record`` gets those seconds when the call trained, a call
    stopped by a signal included (a row trained over several calls is timed in full), and not
    when the row failed before its first checkpoint (bad input writes nothing)."""
    if _finished(recipe):
        logger.info("%s: already trained", recipe.run.output)
        return 0.0
    start, result = time.perf_counter(), None
    try:
        result = train(recipe, resume=True)
    finally:
        seconds = time.perf_counter() - start
        trained = result is not None or latest_checkpoint(Path(recipe.run.output) / "checkpoints") is not None
        if record is not None and trained:
            record(seconds)
    if result.status != "finished":
        logger.warning("%s: stopped by signal %s; run the same command again to continue",
                       recipe.run.output, result.signal)  # fmt: skip
        raise Stopped(result.signal)
    logger.info("%s: trained in %.0f s", recipe.run.output, seconds)
    return seconds


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


def epoch_history(recipe: Recipe) -> list[float]:
    """The held-out top-1 after each epoch of a row's training (its ``metrics.jsonl``)."""
    path = Path(recipe.run.output) / "metrics.jsonl"
    events = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    return [e["val_top1"] for e in events if e["event"] == "val"]


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


def _cached(path: Path, compute: Callable[[], Any]) -> Any:
    if path.is_file():
        return json.loads(path.read_text())
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(value, indent=1))
    return value


def training_order(only: Sequence[str], budget: Budget) -> list[tuple[Row, int]]:
    """(row, seed) in training order: the teacher, the headline rows, the rest."""
    selected = [r for r in rows() if not only or r.key in only or r.key == "teacher"]
    first = [(r, 0) for r in selected if r.key == "teacher"]
    by_key = {r.key: r for r in selected}
    fine_tuned = [k for k in HEADLINE if k in by_key and by_key[k].from_teacher]
    scratch = [k for k in HEADLINE[1:] if k in by_key and not by_key[k].from_teacher]
    # the fine-tuned headline rows seed by seed first (minutes each), then the from-scratch ones
    headline = [(by_key[k], s) for s in budget.seeds for k in fine_tuned]
    headline += [(by_key[k], s) for k in scratch for s in budget.seeds]
    rest = [(r, s) for r in selected if r.key not in HEADLINE for s in (budget.seeds if r.seeded else (0,))]
    return first + headline + rest


def reproduce(
    data: str, out: str | Path, budget: Budget, only: Sequence[str] = (), jobs: int = 1
) -> dict[str, Any]:
    """Train, evaluate and time every row; returns (and saves) ``out/results.json``. With ``jobs``
    above 1, the rows after the teacher train that many at a time, each in its own process
    (:mod:`routevit.reproduce.side_by_side`); the measurements always run one at a time."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    unknown = sorted(set(only) - {r.key for r in rows()})
    if unknown:
        raise ValueError(f"--only: unknown row key(s) {unknown}; valid keys are {[r.key for r in rows()]}")
    started, trained_before = time.perf_counter(), sum(_training_seconds(out).values())
    try:
        results = _train_and_measure(data, out, budget, only, jobs)
    finally:  # a call stopped by a signal or an error counts too (seconds.json)
        trained = sum(_training_seconds(out).values()) - trained_before
        seconds = _add_call_seconds(out, trained, time.perf_counter() - started)
    results["seconds"] = seconds
    atomic_write_text(out / "results.json", json.dumps(results, indent=1))
    return results


def _train_and_measure(
    data: str, out: Path, budget: Budget, only: Sequence[str], jobs: int
) -> dict[str, Any]:
    plans = training_order(only, budget)
    matched: dict[str, Any] | None = None
    recipes: dict[tuple[str, int], Recipe] = {}
    for row, seed in plans:  # the teacher first: bad data fails before anything is written
        if row.match and matched is None:
            matched = matched_reductions(budget, out)
        recipes[(row.key, seed)] = row_recipe(row, seed, data, out, budget, matched)
        if row.key == "teacher":
            train_row(recipes[("teacher", 0)], partial(_record_training, out, "teacher"))
    others = [(row_name(row, seed), recipes[(row.key, seed)]) for row, seed in plans[1:]]
    if jobs > 1:
        unfinished = [(name, recipe) for name, recipe in others if not _finished(recipe)]
        train_side_by_side(unfinished, jobs, partial(_record_training, out))
    else:
        for name, recipe in others:
            train_row(recipe, partial(_record_training, out, name))

    teacher = load_row_model(recipes[("teacher", 0)])
    results: dict[str, Any] = {"budget": asdict(budget), "matched": matched, "rows": [], "sweep": [],
                               "dial": [], "training_seconds": _training_seconds(out)}  # fmt: skip
    for row, seed in plans:
        recipe = recipes[(row.key, seed)]
        name = row_name(row, seed)
        value = _cached(out / "measured" / f"{name}.json",
                        lambda r=recipe: measure(load_row_model(r), teacher, r, budget))  # fmt: skip
        results["rows"].append({"key": row.key, "label": row.label, "tables": list(row.tables), "seed": seed,
                                "distill": row.distill, "epochs": recipe.train.epochs,
                                "history": epoch_history(recipe), **value})  # fmt: skip
    if "tome" in {r.key for r, _ in plans}:
        # ToMe's selling point: no training at all, patched straight onto the teacher
        recipe = recipes[("tome", budget.seeds[0])]
        off_the_shelf = replace(recipe.model, pretrained=None)
        value = _cached(out / "measured" / "tome_off_the_shelf.json", lambda: measure(
            _teacher_weights_into(build_student(off_the_shelf, pretrained=False), teacher),
            teacher, recipe, budget))  # fmt: skip
        results["rows"].append({"key": "tome_off_the_shelf", "label": "ToMe on the teacher, no training",
                                "tables": ["table1"], "seed": 0, "distill": None, "epochs": 0, "history": [],
                                **value})  # fmt: skip
    for row, seed in plans:
        recipe = recipes[(row.key, seed)]
        points = budget.sweep if row.key == "blvit" else DIAL_POINTS if row.key == "dial" else ()
        target = "sweep" if row.key == "blvit" else "dial"
        for ratio in points:
            value = _cached(
                out / "measured" / f"{target}_{row_name(row, seed)}_{ratio:g}.json",
                lambda r=ratio, rc=recipe: measure(load_row_model(rc, r), teacher, rc, budget),
            )
            results[target].append({"seed": seed, "keep_ratio": ratio, **value})
    if "dial" in {r.key for r, _ in plans}:
        results["fixed_keep"] = _fixed_keep_points(results["rows"])
    teacher_recipe = recipes[("teacher", 0)]
    results["throughput"] = _cached(
        out / "measured" / "throughput.json",
        lambda: training_throughput(teacher_recipe, budget.throughput_steps),
    )
    int8_rows = [(k, s) for k, s in (("teacher", 0), ("blvit", budget.seeds[0])) if (k, s) in recipes]
    results["int8"] = [  # one file per model: a row added later gets its own measurement
        value
        for key, seed in int8_rows
        for value in _cached(out / "measured" / f"int8_{key}_seed{seed}.json",
                             lambda k=key, s=seed: _int8([(k, s)], recipes, results["rows"]))
    ]  # fmt: skip
    results["routing"] = [  # what the trained prediction layers add over routing at random
        {"seed": seed, "trained": top1_of(results["rows"], "blvit", seed),
         **_cached(out / "measured" / f"routing_blvit_seed{seed}.json", lambda r=recipes[("blvit", seed)]: {
             "random": random_routing_accuracy(load_row_model(r), lambda model: accuracy(model, r))})}
        for key, seed in recipes if key == "blvit"
    ]  # fmt: skip
    return results


def top1_of(measured: list[dict[str, Any]], key: str, seed: int) -> float:
    return next(m["top1"] for m in measured if (m["key"], m["seed"]) == (key, seed))


def _int8(keys: list[tuple[str, int]], recipes: dict[tuple[str, int], Recipe], measured: list[dict[str, Any]]
          ) -> list[dict[str, Any]]:  # fmt: skip
    out = []
    for key, seed in keys:
        recipe = recipes[(key, seed)]
        top1 = top1_of(measured, key, seed)
        label = next(m["label"] for m in measured if m["key"] == key)
        value = int8_accuracy(f"{label} (seed {seed})", load_row_model(recipe), top1,
                              lambda model, r=recipe: accuracy(model, r))  # fmt: skip
        if value is not None:
            out.append(value)
    return out


def _fixed_keep_points(measured: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The models trained at one keep ratio (Table 5 and the bLViT-mini), for the dial's plot."""
    from .rows import KEEP_RATIO

    keep_of = {f"t5_keep{k:g}": k for k in TABLE5_KEEP} | {"blvit": KEEP_RATIO}
    return [{"keep_ratio": keep_of[m["key"]], **{k: m[k] for k in ("seed", "top1", "gmacs", "images_per_s",
                                                                   "speedup_vs_teacher")}}
            for m in measured if m["key"] in keep_of]  # fmt: skip


def _record_training(out: Path, name: str, seconds: float) -> None:
    path = out / "trained.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    saved[name] = saved.get(name, 0.0) + seconds
    atomic_write_text(path, json.dumps(saved, indent=1))


def _training_seconds(out: Path) -> dict[str, float]:
    path = out / "trained.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _add_call_seconds(out: Path, training: float, total: float) -> dict[str, Any]:
    """Add one call's seconds to ``out/seconds.json`` (an output folder built over several
    calls, a killed run resumed or a row added, adds them up) and return the sums; a call that
    left nothing else in ``out`` (bad input) is not counted."""
    path = out / "seconds.json"
    before = json.loads(path.read_text()) if path.is_file() else {}
    seconds = {
        "training_this_call": training,
        "total_this_call": total,
        "training_all_calls": before.get("training_all_calls", 0.0) + training,
        "total_all_calls": before.get("total_all_calls", 0.0) + total,
        "calls": before.get("calls", 0) + 1,
    }
    if any(p.is_file() and p != path for p in out.rglob("*")):  # a call refused on bad input leaves nothing
        atomic_write_text(path, json.dumps(seconds, indent=1))
    return seconds


def _teacher_weights_into(model: nn.Module, teacher: nn.Module) -> nn.Module:
    model.load_state_dict(teacher.state_dict())
    return model.eval()


__all__ = ["DIAL_RANGE", "Budget", "PRESETS", "Row", "reproduce", "row_recipe", "rows"]
