"""How long a reproduction will train on this machine, measured before it trains
(``routevit reproduce cifar10 --plan``).

Every row's recipe is built as :func:`routevit.reproduce.cifar10.reproduce` would build it, and
a few of its optimizer steps and one validation are timed with :func:`routevit.train.time_steps`
(its data, model, teacher and loss; rows that differ only in seed or loss weight are timed
once). The rows that start from the teacher load a stand-in: the teacher's recipe trained for
one step on a few images, so that a plan needs no trained teacher; timing does not depend on
the weights. The estimate covers training and per-epoch validation, one row at a time; the
measurements after training (speed, sweeps, int8) are not in it.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..train.config import Recipe, recipe_to_dict
from ..train.engine import StepCost, time_steps, train
from .cifar10 import Budget, matched_reductions, row_name, row_recipe, training_order


def plan(data: str, budget: Budget, only: Sequence[str] = (), steps: int = 5) -> list[dict[str, Any]]:
    """One entry per training of the reproduction, in its order: ``row``, ``epochs``,
    ``seconds_per_step``, ``steps_per_epoch``, ``validation_seconds`` and ``seconds`` (the
    estimated training time of the row on this machine)."""
    plans = training_order(only, budget)
    with tempfile.TemporaryDirectory(prefix="routevit-plan-") as folder:
        out = Path(folder)
        teacher_row = plans[0][0]
        tiny = replace(budget, teacher_epochs=1, batch_size=2, max_train_per_class=1, max_val_per_class=1)
        train(row_recipe(teacher_row, 0, data, out, tiny))  # the stand-in teacher's checkpoint
        matched = matched_reductions(budget, out) if any(row.match for row, _ in plans) else None
        costs: dict[str, StepCost] = {}
        entries = []
        for row, seed in plans:
            recipe = row_recipe(row, seed, data, out, budget, matched)
            key = _cost_key(recipe)
            if key not in costs:
                costs[key] = time_steps(recipe, steps)
            cost = costs[key]
            entries.append({
                "row": row_name(row, seed), "epochs": recipe.train.epochs,
                "seconds_per_step": cost.seconds_per_step, "steps_per_epoch": cost.steps_per_epoch,
                "validation_seconds": cost.validation_seconds, "seconds": cost.seconds(recipe.train.epochs),
            })  # fmt: skip
    return entries


def _cost_key(recipe: Recipe) -> str:
    """What a step's cost depends on: the recipe without its seed, epochs, outputs and the loss
    weight (two rows with one key are timed once)."""
    fields = recipe_to_dict(recipe)
    fields.pop("run")
    fields["train"] = {k: v for k, v in fields["train"].items() if k not in ("seed", "epochs")}
    fields["distill"] = {k: v for k, v in fields["distill"].items() if k != "lambda_fd"}
    return json.dumps(fields, sort_keys=True, default=str)


def plan_table(entries: list[dict[str, Any]]) -> str:
    """The plan as a Markdown table, with the total."""
    lines = [
        "| row | epochs | steps/epoch | s/step | validation s | estimated min |",
        "|---|---|---|---|---|---|",
    ]
    for e in entries:
        lines.append(f"| {e['row']} | {e['epochs']} | {e['steps_per_epoch']} | {e['seconds_per_step']:.3f} "
                     f"| {e['validation_seconds']:.1f} | {e['seconds'] / 60:.1f} |")  # fmt: skip
    total = sum(e["seconds"] for e in entries)
    lines.append(f"\nTraining, one row at a time: {total / 3600:.2f} h ({len(entries)} trainings; "
                 "the measurements after training are not included).")  # fmt: skip
    return "\n".join(lines)
