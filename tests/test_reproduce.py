"""`routevit reproduce cifar10`: every row trains through the real trainer, results and docs."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from PIL import Image

from routevit.cli import main
from routevit.models.vit import BigLittleViT
from routevit.reproduce import Budget, rows
from routevit.reproduce.cifar10 import row_recipe
from routevit.reproduce.report import BEGIN, END, grouped, markdown, write_section
from routevit.train.build import build_student
from tests.train_util import make_image_folder

pytest.importorskip("matplotlib")


def test_every_row_has_a_loadable_recipe_and_the_intended_switches(tmp_path: Path):
    budget = Budget(teacher_epochs=3, student_epochs=1, seeds=(0, 1))
    by_key = {r.key: r for r in rows()}
    assert {"teacher", "narrow", "evit", "tome", "early_prune", "blvit"} <= set(by_key)
    for row in rows():
        recipe = row_recipe(row, 5, "data", tmp_path, budget)
        assert recipe.train.seed == 5
        expected = {"teacher": 3, "student": 1, "both": 4}[row.epochs]
        assert recipe.train.epochs == expected, row.key
        assert recipe.model.pretrained == (str(tmp_path / "teacher") if row.from_teacher else None)
        if recipe.distill.teacher is not None:
            assert recipe.distill.teacher_checkpoint == str(tmp_path / "teacher")
    fine_tuned = row_recipe(by_key["teacher_ft"], 0, "data", tmp_path, budget)
    blvit = row_recipe(by_key["blvit"], 1, "data", tmp_path, budget)
    assert fine_tuned.model.name == row_recipe(by_key["teacher"], 0, "d", tmp_path, budget).model.name
    assert fine_tuned.optim.lr == blvit.optim.lr
    assert fine_tuned.optim.warmup_epochs == blvit.optim.warmup_epochs
    scratch = row_recipe(by_key["t3_semi_ca"], 0, "data", tmp_path, budget).optim
    assert scratch.lr == row_recipe(by_key["teacher"], 0, "d", tmp_path, budget).optim.lr != blvit.optim.lr
    assert blvit.run.output == str(tmp_path / "blvit_seed1") and blvit.distill.teacher is not None
    assert row_recipe(by_key["t3_pretrain"], 0, "data", tmp_path, budget).distill.teacher is None
    # Table 3: each step one switch away from the previous one
    configs = {}
    for key in ("t3_early_prune", "t3_e_block", "t3_predictor", "t3_semi_ca"):
        model = build_student(row_recipe(by_key[key], 0, "d", tmp_path, budget).model, pretrained=False)
        assert isinstance(model, BigLittleViT)
        configs[key] = model.config
    assert configs["t3_early_prune"].schedule.count("big_little") == 0
    assert configs["t3_e_block"].schedule.count("big_little") > 0
    assert (configs["t3_e_block"].selector, configs["t3_predictor"].selector) == ("cls_attention", "router")
    assert (configs["t3_predictor"].semi_cross, configs["t3_semi_ca"].semi_cross) == (False, True)


def _results(top1s: dict[str, list[float]]) -> dict:
    rows_ = []
    for key, values in top1s.items():
        for seed, top1 in enumerate(values):
            gmacs = 0.5 if key != "teacher" else 1.0
            rows_.append({"key": key, "label": key.upper(), "tables": ["table1", "table3"], "seed": seed,
                          "top1": top1, "gmacs": gmacs, "images_per_s": 100.0 + seed,
                          "speedup_vs_teacher": 1.5})  # fmt: skip
    budget = {"teacher_epochs": 2, "student_epochs": 1, "batch_size": 8, "bench_batch": 4, "bench_repeats": 3,
              "seeds": [0, 1]}  # fmt: skip
    return {"budget": budget, "rows": rows_, "sweep": [], "seconds": {}}


def test_tables_report_mean_and_spread_over_seeds(tmp_path: Path):
    results = _results({"teacher": [70.0], "blvit": [60.0, 64.0]})
    blvit = next(e for e in grouped(results["rows"]) if e["key"] == "blvit")
    assert blvit["values"]["top1"] == [60.0, 64.0]
    text = markdown(results, "routevit reproduce cifar10 --data X")
    spread = f"{statistics.mean([60.0, 64.0]):.2f} ± {statistics.stdev([60.0, 64.0]):.2f}"
    assert spread in text and "| BLVIT | 2 |" in text and "50%" in text
    doc = tmp_path / "results.md"
    doc.write_text("# Results\n\nbefore\n")
    write_section(doc, text)
    write_section(doc, markdown(_results({"teacher": [71.0]}), "again"))  # replaced, not appended
    body = doc.read_text()
    assert body.count(BEGIN) == 1 and body.count(END) == 1 and "before" in body and "again" in body


def test_reproduce_end_to_end_on_a_tiny_image_folder(tmp_path: Path):
    data = make_image_folder(tmp_path / "data", classes=10, per_class=4, size=32)
    out, doc, png = tmp_path / "out", tmp_path / "results.md", tmp_path / "plot.png"
    args = ["reproduce", "cifar10", "--data", str(data), "--out", str(out), "--docs", str(doc), "--plot",
            str(png), "--teacher-epochs", "1", "--student-epochs", "1", "--seeds", "0,1", "--batch-size", "8",
            "--holdout-per-class", "1", "--workers", "0", "--bench-batch", "2", "--bench-repeats", "1",
            "--sweep", "0.25,1.0"]  # fmt: skip
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    keys = [r["key"] for r in results["rows"]]
    assert keys.count("blvit") == 2 and "tome_off_the_shelf" in keys and "t3_pretrain" in keys
    gmacs = {r["key"]: r["gmacs"] for r in results["rows"]}
    assert gmacs["blvit"] < 0.7 * gmacs["teacher"] and gmacs["narrow"] < 0.7 * gmacs["teacher"]
    assert gmacs["t3_early_prune"] < gmacs["t3_e_block"] <= gmacs["t3_semi_ca"]
    for r in results["rows"]:
        assert 0.0 <= r["top1"] <= 100.0 and r["images_per_s"] > 0
    assert [s["keep_ratio"] for s in results["sweep"]] == [0.25, 1.0]
    assert results["sweep"][0]["gmacs"] < results["sweep"][1]["gmacs"]
    assert BEGIN in doc.read_text() and "Table 3 in miniature" in doc.read_text()
    assert Image.open(png).size[0] > 400
    # a rerun trains nothing again and reuses every measurement
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("model.safetensors")}
    assert main(args) == 0
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("model.safetensors")}
    seconds = json.loads((out / "results.json").read_text())["seconds"]
    assert seconds["calls"] == 2 and seconds["training_this_call"] < seconds["training_all_calls"]
    assert "over 2 calls" in doc.read_text()
