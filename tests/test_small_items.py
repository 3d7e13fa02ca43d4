"""The smaller items of "trust every input": each one a behaviour a user can check."""

from __future__ import annotations

import os

import pytest
import torch

import routevit
from routevit.layers import Schedule

TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, little_dim=16, little_heads=1)
TINY_SAM = dict(
    img_size=64, window_size=2, depth=2, embed_dim=32, num_heads=2, global_attn_indexes=(1,), out_chans=16,
    little_dim=16, little_heads=1,
)


def test_an_empty_batch_gives_empty_outputs_like_timm() -> None:
    """timm returns ``(0, num_classes)`` for a batch of 0 images; so do the routed models."""
    vit = routevit.create_model("blvit_deit_s_t", num_classes=3, **TINY_VIT).eval()
    sam = routevit.create_model(
        "blvit_sam_b_t", schedule=Schedule(("full", "big_little"), (1,)), **TINY_SAM
    ).eval()
    with torch.no_grad():
        assert vit(torch.empty(0, 3, 32, 32)).shape == (0, 3)
        assert sam(torch.empty(0, 3, 64, 64)).shape == (0, 16, 4, 4)


def test_holdout_per_class_alone_needs_no_val_dir_null() -> None:
    """The default ``val_dir: val`` clashed with a recipe that only set holdout_per_class."""
    from routevit.train.config import recipe_from_dict

    assert recipe_from_dict({"data": {"holdout_per_class": 5}}).data.val_dir is None
    assert recipe_from_dict({}).data.val_dir == "val"
    with pytest.raises(ValueError, match="exclusive"):
        recipe_from_dict({"data": {"holdout_per_class": 5, "val_dir": "val"}})


def test_a_one_class_classifier_is_refused() -> None:
    """One class trains with loss 0 and reports 100%: refused, naming the key."""
    from routevit.train.config import recipe_from_dict

    with pytest.raises(ValueError, match=r"model\.num_classes must be an integer >= 2 .* got 1"):
        recipe_from_dict({"model": {"num_classes": 1}})
    assert recipe_from_dict({"task": "sam", "model": {"name": "blvit_sam_b_t", "num_classes": 1}})


def test_train_help_names_a_recipe_that_exists(capsys: pytest.CaptureFixture) -> None:
    import re
    from pathlib import Path

    from routevit.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    named = re.findall(r"recipes/[\w/]+\.yaml", capsys.readouterr().out)
    root = Path(__file__).resolve().parents[1]
    assert named and all((root / path).is_file() for path in named), named


@pytest.mark.parametrize("name", ["sam_vit_b", "sam_vit_h"])
def test_unrouted_sam_encoders_refuse_a_keep_ratio(name: str) -> None:
    """They have no prediction layers: a keep ratio would be reported and never used."""
    small = {**TINY_SAM, "embed_dim": 32, "num_heads": 2}
    small.pop("little_dim"), small.pop("little_heads")
    model = routevit.create_model(name, **small)
    with pytest.raises(ValueError, match="needs a routed model.*no prediction layers"):
        model.set_keep_ratio(0.5)
    with pytest.raises(ValueError, match="routes no tokens"):
        routevit.create_model(name, keep_ratio=0.5, **small)
    schedule = Schedule(("full", "big_little"), (1,))
    routed = routevit.create_model("blvit_sam_b_t", schedule=schedule, **TINY_SAM)
    routed.set_keep_ratio(0.5)
    assert routed.keep_ratio == routed.config.keep_ratio == 0.5


def _leaves_the_global_rng_alone(fn) -> None:  # noqa: ANN001
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    fn()
    assert torch.equal(torch.rand(4), expected), "the caller's random stream was reseeded or consumed"


def test_bench_pairs_leave_the_global_rng_alone() -> None:
    pytest.importorskip("timm")
    from routevit.bench_pairs import run

    _leaves_the_global_rng_alone(lambda: run("blvit_deit_s_t", batch_sizes=(1,), warmup=0, repeats=1,
                                             min_seconds=0.0))  # fmt: skip


def test_sam_benchmark_encoders_leave_the_global_rng_alone() -> None:
    pytest.importorskip("segment_anything")
    pytest.importorskip("timm")
    from routevit.interop.sam import build_benchmark_encoders

    small = {**TINY_SAM, "schedule": Schedule(("full", "big_little"), (1,))}
    _leaves_the_global_rng_alone(lambda: build_benchmark_encoders("blvit_sam_b_t", **small))
    a = build_benchmark_encoders("blvit_sam_b_t", seed=1, **small)["blvit"].state_dict()
    b = build_benchmark_encoders("blvit_sam_b_t", seed=1, **small)["blvit"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # seeded: the same weights every time


def test_reproduce_runs_its_recipes_from_an_installed_wheel(tmp_path) -> None:  # noqa: ANN001
    """The wheel carries the CIFAR-10 recipes; the reproduction finds them inside the package,
    not in a source tree it does not have once installed."""
    import shutil
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"
    shutil.copytree(root / "routevit", src / "routevit", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w"]
    subprocess.run([*build, str(tmp_path / "dist"), str(src)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("routevit-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:  # installing a pure-Python wheel is unpacking it
        assert "routevit/reproduce/recipes/mini_blvit.yaml" in archive.namelist()
        archive.extractall(site)
    check = ("from routevit.reproduce.cifar10 import RECIPES, rows; from routevit.train.config import "
             "load_recipe; [load_recipe(RECIPES / r.recipe) for r in rows()]; print(RECIPES)")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env={**env, "PYTHONPATH": str(site)},
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).is_relative_to(site)
