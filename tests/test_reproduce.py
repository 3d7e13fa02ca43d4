"""`routevit reproduce cifar10`: fair rows, verdicts, tables and the run end to end."""

from __future__ import annotations

import json
import statistics
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from routevit.cli import main
from routevit.errors import Stopped
from routevit.models.vit import BigLittleViT
from routevit.reproduce import Budget, rows
from routevit.reproduce.cifar10 import load_row_model, matched_reductions, row_recipe, train_row
from routevit.reproduce.report import (
    BEGIN,
    END,
    at_speed,
    grouped,
    markdown,
    verdict,
    verdicts,
    write_section,
)
from routevit.reproduce.rows import LAMBDAS, TABLE5_KEEP
from routevit.train.build import build_optimizer, build_student
from routevit.train.config import replace_fields
from tests.train_util import make_image_folder

pytest.importorskip("matplotlib")


def test_rows_share_one_fine_tuning_and_say_what_they_distill(tmp_path: Path):
    budget = Budget(teacher_epochs=3, student_epochs=2, seeds=(0, 1, 2))
    matched = {"evit_keep_rate": 0.42, "tome_r": 7}
    by_key = {r.key: r for r in rows()}
    assert {"teacher", "teacher_ft", "narrow", "evit", "tome", "early_prune", "blvit", "dial"} <= set(by_key)
    assert all(by_key[k].seeded for k in ("teacher_ft", "narrow", "evit", "tome", "blvit"))
    recipes = {r.key: row_recipe(r, 5, "data", tmp_path, budget, matched) for r in rows()}
    blvit = recipes["blvit"]
    for row in rows():
        recipe = recipes[row.key]
        assert recipe.train.seed == 5
        assert recipe.model.pretrained == (str(tmp_path / "teacher") if row.from_teacher else None)
        assert recipe.augment == blvit.augment  # the same augmentation everywhere
        # the bLViT-mini's learning-rate factors name its fresh layers: a row without them has none
        optim = replace(recipe.optim, lr_scales=blvit.optim.lr_scales)
        if row.from_teacher:  # same epochs, optimizer and schedule as the bLViT-mini
            assert (recipe.train.epochs, optim) == (2, blvit.optim), row.key
        else:
            assert recipe.optim == recipes["teacher"].optim, row.key
        build_optimizer(build_student(recipe.model, pretrained=False), recipe)  # every factor names a layer
        if row.distill is None:
            assert recipe.distill.teacher is None, row.key
        else:
            d = recipe.distill
            assert (d.teacher_checkpoint, d.feature) == (str(tmp_path / "teacher"), row.distill), row.key
    assert recipes["narrow"].train.epochs == recipes["teacher"].train.epochs == 3
    assert set(blvit.optim.lr_scales) == {"encoder.blocks.*.efficiency.*", "encoder.routers.*"}
    assert all(recipes[k].optim.lr_scales == {} for k in ("teacher", "teacher_ft", "evit", "tome", "narrow"))
    assert recipes["evit"].model.token_reduction["keep_rate"] == 0.42
    assert recipes["tome"].model.token_reduction["r"] == 7
    assert recipes["evit"].distill.feature == "pre_logits" and blvit.distill.feature == "tokens"
    assert blvit.run.output == str(tmp_path / "blvit_seed5")
    assert {recipes[f"t4_lambda{lam:g}"].distill.lambda_fd for lam in LAMBDAS if lam != 2.5} == {
        1.0,
        5.0,
        10.0,
    }
    assert [recipes[f"t5_keep{k:g}"].model.keep_ratio for k in TABLE5_KEEP] == list(TABLE5_KEEP)
    assert recipes["dial"].model.keep_ratio_range == (0.1, 0.5)
    with pytest.raises(ValueError, match="matched_reductions"):
        row_recipe(by_key["evit"], 0, "data", tmp_path, budget)
    # Table 3: each step one switch away from the previous one
    configs = {}
    for key in ("t3_early_prune", "t3_e_block", "t3_predictor", "t3_semi_ca"):
        model = build_student(recipes[key].model, pretrained=False)
        assert isinstance(model, BigLittleViT)
        configs[key] = model.config
    assert configs["t3_early_prune"].schedule.count("big_little") == 0
    assert configs["t3_e_block"].schedule.count("big_little") > 0
    assert (configs["t3_e_block"].selector, configs["t3_predictor"].selector) == ("cls_attention", "router")
    assert (configs["t3_predictor"].semi_cross, configs["t3_semi_ca"].semi_cross) == (False, True)


def test_matched_peers_have_the_blvit_minis_macs(tmp_path: Path):
    m = matched_reductions(Budget(), tmp_path)
    assert abs(m["evit_gmacs"] / m["blvit_gmacs"] - 1) < 0.03
    assert abs(m["tome_gmacs"] / m["blvit_gmacs"] - 1) < 0.06  # r is an integer: steps of ~4%
    assert json.loads((tmp_path / "matched.json").read_text()) == m


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Budget]:
    root = tmp_path_factory.mktemp("fair")
    data = make_image_folder(root / "data", classes=10, per_class=5, size=32)
    budget = Budget(teacher_epochs=1, student_epochs=1, seeds=(0,), batch_size=8, holdout_per_class=1)
    train_row(row_recipe(rows()[0], 0, str(data), root / "out", budget))
    return data, root / "out", budget


NO_REDUCTION = {"evit": {"keep_rate": 1.0}, "tome": {"r": 0}, "early_prune": {"keep_rate": 1.0}}


def test_every_row_from_the_teacher_gets_all_of_its_weights(tiny_teacher):
    """Loaded through the rows' own recipes, at no reduction every row computes the teacher's
    logits: the classifier and every block arrive (a fresh head would differ by ~1)."""
    data, out, budget = tiny_teacher
    teacher = load_row_model(row_recipe(rows()[0], 0, str(data), out, budget)).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = teacher(x)
    matched = {"evit_keep_rate": 0.5, "tome_r": 4}
    checked = []
    for row in rows():
        if not row.from_teacher:
            continue
        recipe = row_recipe(row, 0, str(data), out, budget, matched)
        reduction = recipe.model.token_reduction
        if reduction:
            off = {**reduction, **NO_REDUCTION[reduction["method"]]}
            recipe = replace_fields(recipe, model={"token_reduction": off})
        model = build_student(recipe.model).eval()
        if isinstance(model, BigLittleViT):
            model.set_keep_ratio(1.0)  # every token on the P path; the E path enters with gamma 1e-5
            assert torch.equal(model.head.weight, teacher.head.weight)
        with torch.no_grad():
            got = model(x)
        tol = 1e-3 if isinstance(model, BigLittleViT) else 1e-5
        assert torch.allclose(got, expected, atol=tol, rtol=0), (row.key, (got - expected).abs().max())
        checked.append(row.key)
    assert {"teacher_ft", "evit", "tome", "early_prune", "blvit", "t4_lambda1", "dial"} <= set(checked)
    # and the check can fail: a row whose head was left fresh is far off
    fresh = build_student(replace(row_recipe(rows()[1], 0, str(data), out, budget).model, pretrained=None))
    with torch.no_grad():
        assert (fresh.eval()(x) - expected).abs().max() > 1e-2


def test_verdicts_call_only_differences_beyond_both_spreads():
    assert verdict([70.0, 71.0, 72.0], [60.0, 61.0, 62.0]) == "better"
    assert verdict([60.0, 61.0, 62.0], [70.0, 71.0, 72.0]) == "worse"
    assert verdict([70.0, 71.0, 72.0], [69.0, 70.5, 72.5]) == "no call"  # 0.5 < the spreads
    assert verdict([70.0, 70.2], [69.0, 73.0]) == "no call"  # beyond ours (0.14), not theirs (2.8)
    assert verdict([70.0], [60.0]) == "no call (one seed)"
    sweep = [{"speedup_vs_teacher": 1.0, "top1": 80.0}, {"speedup_vs_teacher": 2.0, "top1": 70.0}]
    assert at_speed(sweep, 1.25) == pytest.approx(77.5) and at_speed(sweep, 2.5) is None


def _results(top1s: dict[str, list[float]], speeds: dict[str, float]) -> dict:
    rows_ = []
    for key, values in top1s.items():
        for seed, top1 in enumerate(values):
            gmacs = 0.5 if key != "teacher" else 1.0
            rows_.append({"key": key, "label": key.upper(), "tables": ["table1"], "seed": seed,
                          "distill": None, "epochs": 2, "history": [top1 - 0.3, top1], "top1": top1,
                          "gmacs": gmacs, "images_per_s": 100.0 + seed,
                          "speedup_vs_teacher": speeds.get(key, 1.0)})  # fmt: skip
    sweep = [{"seed": s, "keep_ratio": k, "top1": 64.0 - 10 * k + s, "gmacs": k, "images_per_s": 1.0,
              "speedup_vs_teacher": 2.5 - k} for s in (0, 1) for k in (0.2, 0.5, 1.0)]  # fmt: skip
    budget = {"teacher_epochs": 2, "student_epochs": 1, "batch_size": 8, "bench_batch": 4, "bench_repeats": 3,
              "seeds": [0, 1]}  # fmt: skip
    return {"budget": budget, "rows": rows_, "sweep": sweep, "seconds": {}}


def test_tables_report_mean_spread_last_epoch_and_verdicts(tmp_path: Path):
    results = _results({"teacher": [70.0], "blvit": [60.0, 64.0], "evit": [50.0, 51.0]},
                       {"blvit": 2.0, "evit": 2.0})  # fmt: skip
    blvit = next(e for e in grouped(results["rows"]) if e["key"] == "blvit")
    assert blvit["values"]["top1"] == [60.0, 64.0]
    assert blvit["values"]["last_epoch_change"] == pytest.approx([0.3, 0.3])
    (evit,) = verdicts(results)
    assert evit["equal_macs"] == "better"
    # at EViT's speed (2.0x) the dial sits at keep 0.5: 59 and 60 on the two seeds
    assert evit["blvit_at_speed"] == pytest.approx([59.0, 60.0]) and evit["equal_time"] == "better"
    text = markdown(results, "routevit reproduce cifar10 --data X")
    spread = f"{statistics.mean([60.0, 64.0]):.2f} ± {statistics.stdev([60.0, 64.0]):.2f}"
    assert spread in text and "| BLVIT | 2 | 2 | no |" in text and "50%" in text and "+0.30" in text
    assert "Against EVIT: better at equal MACs; better at equal measured time (2.00x" in text
    assert "the bLViT-mini 62.00% at 50% of its MACs: 8.00 points below it; the target" in text
    assert "is **not met**." in text
    close = _results({"teacher": [70.0], "blvit": [69.5, 69.1]}, {"blvit": 2.0})
    close["routing"] = [{"seed": 0, "trained": 69.5, "random": 69.0},
                        {"seed": 1, "trained": 69.1, "random": 69.4}]  # fmt: skip
    close_text = markdown(close, "x")
    assert "0.70 points below it; the target (within 1.0 point at no more than 60% of the MACs) is met." in (
        close_text
    )
    assert "add +0.10 points over routing at random (2 seeds)" in close_text
    assert "| 2 | 69.30 ± 0.28 | 69.20 ± 0.28 | +0.10 ± 0.57 |" in close_text
    doc = tmp_path / "results.md"
    doc.write_text("# Results\n\nbefore\n")
    write_section(doc, text)
    write_section(doc, markdown(_results({"teacher": [71.0]}, {}), "again"))  # replaced, not appended
    body = doc.read_text()
    assert body.count(BEGIN) == 1 and body.count(END) == 1 and "before" in body and "again" in body


def test_reproduce_end_to_end_on_a_tiny_image_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ROUTEVIT_CACHE", str(tmp_path / "cache"))
    data = make_image_folder(tmp_path / "data", classes=10, per_class=4, size=32)
    out, doc, png = tmp_path / "out", tmp_path / "results.md", tmp_path / "plot.png"
    args = ["reproduce", "cifar10", "--preset", "quick", "--data", str(data), "--out", str(out), "--docs",
            str(doc), "--plot", str(png), "--batch-size", "8", "--holdout-per-class", "1",
            "--bench-batch", "2", "--bench-repeats", "1", "--sweep", "0.25,1.0"]  # fmt: skip
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    keys = [r["key"] for r in results["rows"]]
    assert keys.count("blvit") == 2 and keys.count("evit") == 2 and "tome_off_the_shelf" in keys
    assert {"t3_pretrain", "t4_lambda10", "t5_keep0.125", "dial"} <= set(keys)
    gmacs = {r["key"]: r["gmacs"] for r in results["rows"]}
    assert gmacs["blvit"] < 0.6 * gmacs["teacher"] and gmacs["narrow"] < 0.6 * gmacs["teacher"]
    assert gmacs["t3_early_prune"] < gmacs["t3_e_block"] <= gmacs["t3_semi_ca"]
    assert gmacs["t5_keep0.125"] < gmacs["t5_keep0.25"] < gmacs["t5_keep0.5"]
    for r in results["rows"]:
        assert 0.0 <= r["top1"] <= 100.0 and r["images_per_s"] > 0
    assert sorted({s["keep_ratio"] for s in results["sweep"]}) == [0.25, 1.0]
    assert len({s["keep_ratio"] for s in results["dial"]}) == 6 and results["fixed_keep"]
    assert [m["precision"] for m in results["throughput"]["modes"]] == ["fp32", "fp32", "bf16 autocast"]
    text = doc.read_text()
    assert BEGIN in text and "Table 5 in miniature" in text and "Verdicts" in text
    assert "One model for every keep ratio" in text and "Training throughput" in text
    assert [r["seed"] for r in results["routing"]] == [0, 1] and "Do the prediction layers matter?" in text
    assert Image.open(png).size[0] > 400
    # a rerun trains nothing again and reuses every measurement
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("model.safetensors")}
    assert main(args) == 0
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("model.safetensors")}
    seconds = json.loads((out / "results.json").read_text())["seconds"]
    assert seconds["calls"] == 2 and seconds["training_this_call"] < seconds["training_all_calls"]
    assert "over 2 calls" in doc.read_text()


def test_unknown_row_keys_are_refused(tmp_path: Path):
    from routevit.reproduce import reproduce

    with pytest.raises(ValueError, match="unknown row key"):
        reproduce("data", tmp_path, Budget(), only=["bilvit"])


def test_an_interrupted_call_keeps_the_time_it_trained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A call stopped mid-row (SIGTERM/SIGINT: the trainer returns a 'stopped' result) still adds
    its training seconds to trained.json, so a row finished over several calls is timed in full;
    a row that fails on bad input before its first checkpoint records nothing."""
    import time
    from types import SimpleNamespace

    import routevit.reproduce.cifar10 as harness
    from routevit.reproduce import reproduce

    def stopped_after_a_while(recipe, resume):
        time.sleep(0.2)
        return SimpleNamespace(status="stopped", signal=15)

    def bad_input(recipe, resume):
        raise ValueError("the data has 4 classes but model.num_classes is 10")

    out = tmp_path / "out"
    monkeypatch.setattr(harness, "train", bad_input)
    with pytest.raises(ValueError):
        reproduce(str(tmp_path / "data"), out, Budget(), only=["teacher"])
    assert not (out / "trained.json").exists() and not (out / "seconds.json").exists()
    monkeypatch.setattr(harness, "train", stopped_after_a_while)
    with pytest.raises(Stopped, match="stopped by signal 15"):
        reproduce(str(tmp_path / "data"), out, Budget(), only=["teacher"])
    first = json.loads((out / "trained.json").read_text())
    assert list(first) == ["teacher"] and first["teacher"] >= 0.2
    with pytest.raises(Stopped, match="stopped by signal 15"):  # the resumed call adds to it
        reproduce(str(tmp_path / "data"), out, Budget(), only=["teacher"])
    second = json.loads((out / "trained.json").read_text())
    assert second["teacher"] >= first["teacher"] + 0.2
    # every call's wall-clock is kept, the stopped ones too (neither wrote results.json); the call
    # refused on bad input wrote nothing, so it counts no seconds
    calls = json.loads((out / "seconds.json").read_text())
    assert not (out / "results.json").exists()
    assert calls["calls"] == 2
    assert calls["training_all_calls"] == pytest.approx(second["teacher"])
    assert calls["total_all_calls"] >= calls["training_all_calls"]
