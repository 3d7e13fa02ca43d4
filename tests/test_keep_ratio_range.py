"""model.keep_ratio_range: one set of weights trained for a whole range of keep ratios."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_util import make_image_folder, tiny_recipe

from routevit.models.vit import BigLittleViT
from routevit.train import train
from routevit.train.config import recipe_from_dict

TINY_BLVIT = {"name": "blvit_deit_s_t", "num_classes": 2, "img_size": 16, "keep_ratio": 0.5,
              "kwargs": {"patch_size": 4, "embed_dim": 32, "depth": 3, "num_heads": 2, "little_dim": 16,
                         "little_heads": 1}}  # fmt: skip


def _recorded_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> list[float]:
    data = make_image_folder(tmp_path / "data", per_class=10)
    seen: list[float] = []
    original = BigLittleViT.set_keep_ratio

    def record(self, keep_ratio):  # noqa: ANN001
        seen.append(keep_ratio)
        original(self, keep_ratio)

    monkeypatch.setattr(BigLittleViT, "set_keep_ratio", record)
    model = {**TINY_BLVIT, "keep_ratio_range": [0.2, 0.8]}
    result = train(tiny_recipe(data, tmp_path / name, model=model, train={"epochs": 2}))
    monkeypatch.undo()
    assert result.status == "finished"
    return seen


def test_each_step_draws_its_keep_ratio_and_validation_uses_the_recipes(tmp_path, monkeypatch):
    seen = _recorded_run(tmp_path, monkeypatch, "a")
    steps = 8  # 16 training images, batch 4, 2 epochs
    draws = [r for r in seen if r != 0.5]
    # one draw per step; validation (after each epoch) sets keep_ratio back (student and EMA: ema off)
    assert len(seen) == steps + 2 and len(draws) == steps
    assert all(0.2 <= r <= 0.8 for r in draws) and max(draws) - min(draws) > 0.1
    assert seen[4] == 0.5 and seen[-1] == 0.5
    again = _recorded_run(tmp_path, monkeypatch, "b")
    assert again == seen  # a function of the seed and the step


def test_keep_ratio_range_checks():
    with pytest.raises(ValueError, match=r"keep_ratio_range must be \[low, high\]"):
        recipe_from_dict({"model": {"keep_ratio": 0.5, "keep_ratio_range": [0.6, 0.2]}})
    with pytest.raises(ValueError, match="needs model.keep_ratio"):
        recipe_from_dict({"model": {"keep_ratio_range": [0.2, 0.6]}})
