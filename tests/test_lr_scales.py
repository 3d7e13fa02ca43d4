"""optim.lr_scales: per-parameter learning-rate factors by name glob, honoured by the schedule."""

from __future__ import annotations

import pytest
import timm
import torch
from train_util import TINY_VIT, tiny_recipe

from routevit.train.build import build_optimizer, build_scheduler
from routevit.train.config import load_recipe, recipe_from_dict


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", num_classes=2, img_size=16, **TINY_VIT)


def _setup(tmp_path, lr_scales):  # noqa: ANN001, ANN202
    recipe = tiny_recipe(tmp_path, tmp_path / "run", optim={"lr_scales": lr_scales, "warmup_epochs": 0.0})
    model = _model()
    optimizer = build_optimizer(model, recipe)
    build_scheduler(optimizer, recipe, steps_per_epoch=10).step_update(0)
    return model, optimizer


def _group_of(optimizer: torch.optim.Optimizer) -> dict[int, dict]:
    return {id(p): g for g in optimizer.param_groups for p in g["params"]}


def test_matching_parameters_take_the_factor_on_every_step(tmp_path):
    model, optimizer = _setup(tmp_path, {"blocks.1.*": 4.0})
    groups = _group_of(optimizer)
    for name, p in model.named_parameters():
        assert groups[id(p)]["lr"] == pytest.approx(1e-3 * (4.0 if name.startswith("blocks.1.") else 1.0))
    # AdamW's first step moves every element by about lr (|m / sqrt(v)| = 1): 4x the others' in blocks.1
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(torch.randn(3, 3, 16, 16)).square().sum().backward()
    optimizer.step()

    def median_step(prefix: str) -> float:
        moves = [(p.detach() - before[n]).abs().flatten() for n, p in model.named_parameters()
                 if n.startswith(prefix) and n.endswith("weight") and p.ndim == 2]  # fmt: skip
        return torch.cat(moves).median().item()

    assert median_step("blocks.1.") / median_step("blocks.0.") == pytest.approx(4.0, rel=0.05)


def test_weight_decay_follows_timms_grouping(tmp_path):
    model, optimizer = _setup(tmp_path, {"blocks.0.attn.*": 2.0, "head.*": 0.5})
    reference = timm.optim.create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05)
    ours, timms = _group_of(optimizer), _group_of(reference)
    assert {id(p) for p in model.parameters()} == set(ours)
    for p in model.parameters():
        assert ours[id(p)]["weight_decay"] == timms[id(p)]["weight_decay"]


def test_bad_patterns_and_factors_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"match no trainable parameter"):
        _setup(tmp_path, {"encoder.nothing.*": 2.0})
    with pytest.raises(ValueError, match=r"blocks.0.norm1.weight matches more than one"):
        _setup(tmp_path, {"blocks.0.*": 2.0, "*.norm1.*": 3.0})
    with pytest.raises(ValueError, match=r"optim.lr_scales.head.\* must be a positive factor"):
        recipe_from_dict({"optim": {"lr_scales": {"head.*": 0}}})
    with pytest.raises(ValueError, match=r"recipe key optim.lr_scales.head.\* expects a number"):
        recipe_from_dict({"optim": {"lr_scales": {"head.*": "fast"}}})


def test_lr_scales_from_a_command_line_override(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("optim: {lr: 1.0e-3}\n")
    recipe = load_recipe(path, ['optim.lr_scales={"blocks.*.attn.*": 4}'])
    assert recipe.optim.lr_scales == {"blocks.*.attn.*": 4.0}
