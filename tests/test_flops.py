"""MAC counts in the paper's convention vs the paper's Table 1 and the analytic formulas."""

from __future__ import annotations

import pytest
import torch

import routevit
from routevit import flops


def meta_model(name: str, **kw: object) -> torch.nn.Module:
    with torch.device("meta"):  # counted without allocating weights
        return routevit.create_model(name, **kw)


def test_deit_base_matches_paper() -> None:
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        deit_b = timm.create_model("deit_base_patch16_224", pretrained=False)
    assert flops.count(deit_b) == pytest.approx(16.86, rel=0.01)
    assert flops.count(deit_b, include_attention=True) > flops.count(deit_b)


def test_b_t_matches_paper() -> None:
    assert flops.count(meta_model("blvit_deit_b_t")) == pytest.approx(9.89, rel=0.03)


@pytest.mark.parametrize(
    ("name", "keep_ratio"),
    [("blvit_deit_b_t", 0.25), ("blvit_deit_b_t", 0.6), ("blvit_deit_s_t", 1.0), ("blvit_deit_h_b", 0.25)],
)
def test_counter_equals_analytic(name: str, keep_ratio: float) -> None:
    model = meta_model(name, keep_ratio=keep_ratio)
    for include_attention in (False, True):
        counted = flops.count(model, include_attention=include_attention)
        assert counted == pytest.approx(flops.analytic_vit(model.config, include_attention), rel=1e-9)


def test_h_b_against_vanilla_vit_huge() -> None:
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        vit_h = timm.create_model("vit_huge_patch14_224", pretrained=False)
    vanilla, ours = flops.count(vit_h), flops.count(meta_model("blvit_deit_h_b"))
    print(f"ViT-H/14 {vanilla:.2f} GMACs, H+B {ours:.2f} GMACs, ratio {vanilla / ours:.2f}x")
    assert vanilla == pytest.approx(161.88, rel=0.01)
    assert ours == pytest.approx(122.28, rel=0.01)


def test_analytic_matches_paper_per_layer_formulas() -> None:
    n, c = 196, 768
    assert flops.analytic("vanilla", n, c, include_attention=True) == 12 * n * c * c + 2 * n * n * c
    # section 3.2: P on 25% of tokens 4.5NC^2 + 0.5N^2C, E at C/4 2NC^2 + 0.5N^2C
    p_layer = flops.analytic("performance", n, c, K=n // 4, include_attention=True)
    assert p_layer == 4.5 * n * c * c + 0.5 * n * n * c
    e_layer = flops.analytic("efficiency", n, c, c=c // 4, include_attention=True)
    assert e_layer == 2 * n * c * c + 0.5 * n * n * c
    with pytest.raises(ValueError, match="valid kinds"):
        flops.analytic("dense", n, c)
    with pytest.raises(ValueError, match="K <= N"):
        flops.analytic("performance", n, c, K=0)


def test_counter_charges_routed_tokens_only() -> None:
    model = meta_model("blvit_deit_s_t")
    sweep = []
    for r in (0.1, 0.5, 1.0):
        model.set_keep_ratio(r)
        sweep.append(flops.count(model))
    assert sweep == sorted(sweep) and sweep[0] < sweep[-1]
