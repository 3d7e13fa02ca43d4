"""The rows of the CIFAR-10 miniature: which recipe, which start, which loss, which tables.

Every row is a ``routevit train`` run of a recipe ``routevit/reproduce/recipes/mini_*.yaml``
with the reproduction's data, epochs, seed and the row's switches applied by
:func:`routevit.reproduce.cifar10.row_recipe`. The fairness rules that make the rows comparable:

* a row that starts from the teacher loads *all* of its weights (the classifier included; the
  loader is strict, see :mod:`routevit.interop.weights`), and trains for the same epochs with the
  same optimizer, schedule and augmentation (those of ``mini_blvit.yaml``);
* a row from scratch (the teacher, the narrow ViT, Table 3's first rows) uses the teacher's
  optimizer and schedule; the narrow ViT gets the teacher's epochs (the paper's ViT-S is a
  from-scratch DeiT);
* feature distillation from the frozen teacher is open to every row: ``tokens`` (cosine per
  token) where the row keeps the teacher's token grid and width, ``pre_logits`` (cosine of the
  pooled CLS feature) where token reduction changes the grid; the tables say which row uses it;
* EViT's keep rate and ToMe's r are matched to the bLViT-mini's MACs when the reproduction
  starts (:func:`routevit.bench_peers.match_evit` / ``match_tome``), not fixed by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

# the seeded comparison
HEADLINE = ("teacher", "blvit", "evit", "tome", "teacher_ft", "narrow")
KEEP_RATIO = 0.2  # the bLViT-mini's: 13 of 64 patch tokens on the P path, 59% of the teacher's MACs
LAMBDAS = (1.0, 2.5, 5.0, 10.0)  # Table 4
TABLE5_KEEP = (0.5, 0.375, 0.25, 0.125)  # Table 5: 50% ... 87.5% of the tokens pruned from the P path
DIAL_RANGE = (0.1, 0.5)  # one model trained for every keep ratio in this range


@dataclass(frozen=True)
class Row:
    """One trained model of the tables.

    ``epochs``: ``"teacher"`` (the teacher's budget) or ``"student"`` (the fine-tuning budget).
    ``distill``: the feature distillation of the row (None: off). ``kwargs``: extra model
    kwargs (``ablation`` names a Table 3 step). ``model``: overrides of the recipe's ``model``
    section. ``match``: ``"evit"``/``"tome"``: the reduction is matched to the bLViT-mini's MACs.
    """

    key: str
    label: str
    recipe: str
    tables: tuple[str, ...]
    epochs: Literal["teacher", "student"] = "student"
    from_teacher: bool = True
    distill: Literal["tokens", "pre_logits"] | None = "tokens"
    kwargs: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    lambda_fd: float | None = None
    seeded: bool = False
    match: Literal["evit", "tome"] | None = None


def rows() -> list[Row]:
    """Table 1 (the seeded headline comparison), Table 3 (ablation path), Table 4 (lambda_fd),
    Table 5 (keep ratio) and the one-model-for-every-keep-ratio dial."""
    scratch = {"from_teacher": False, "distill": None}
    out = [
        Row("teacher", "ViT-mini (teacher)", "mini_teacher.yaml", ("table1",), "teacher", **scratch),
        Row("teacher_ft", "ViT-mini (teacher), fine-tuned like the rows below", "mini_teacher.yaml",
            ("table1",), seeded=True),
        Row("narrow", "ViT-mini narrow (width 72), from scratch", "mini_narrow.yaml", ("table1",), "teacher",
            seeded=True, **scratch),
        Row("evit", "EViT on the teacher", "mini_evit.yaml", ("table1",), distill="pre_logits", seeded=True,
            match="evit"),
        Row("tome", "ToMe on the teacher", "mini_tome.yaml", ("table1",), distill="pre_logits", seeded=True,
            match="tome"),
        Row("early_prune", "Early prune on the teacher", "mini_early_prune.yaml", ("table1",),
            distill="pre_logits"),
        Row("blvit", "bLViT-mini", "mini_blvit.yaml", ("table1", "table3", "table4"), seeded=True),
        Row("t3_early_prune", "early prune", "mini_blvit.yaml", ("table3",),
            kwargs={"ablation": "early_prune"}, **scratch),
        Row("t3_e_block", "+ E-block", "mini_blvit.yaml", ("table3",), kwargs={"ablation": "e_block"},
            **scratch),
        Row("t3_predictor", "+ predictor", "mini_blvit.yaml", ("table3",), kwargs={"ablation": "predictor"},
            **scratch),
        Row("t3_semi_ca", "+ semi-cross attention", "mini_blvit.yaml", ("table3",), **scratch),
        Row("t3_pretrain", "+ init from the teacher", "mini_blvit.yaml", ("table3", "table4"), distill=None),
    ]  # fmt: skip
    out += [
        Row(f"t4_lambda{lam:g}", f"lambda_fd {lam:g}", "mini_blvit.yaml", ("table4",), lambda_fd=lam)
        for lam in LAMBDAS
        if lam != 2.5  # the recipe's: the bLViT-mini row itself
    ]
    out += [
        Row(f"t5_keep{keep:g}", f"keep {keep:g} ({1 - keep:.1%} pruned)", "mini_blvit.yaml", ("table5",),
            model={"keep_ratio": keep})
        for keep in TABLE5_KEEP
    ]  # fmt: skip
    out.append(
        Row("dial", f"bLViT-mini, keep ratio drawn from {DIAL_RANGE[0]:g}-{DIAL_RANGE[1]:g} per step",
            "mini_blvit.yaml", ("dial",), model={"keep_ratio_range": DIAL_RANGE})
    )  # fmt: skip
    return out
