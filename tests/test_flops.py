"""MAC counts in the paper's convention vs the paper's Table 1 and the analytic formulas."""

from __future__ import annotations

import pytest
import torch
from _vit_helpers import single_thread  # noqa: F401 - used by pytestmark

import routevit
from routevit import flops

pytestmark = pytest.mark.usefixtures("single_thread")


def meta_model(name: str, **kw: object) -> torch.nn.Module:
    with torch.device("meta"):  # counted without allocating weights
        return routevit.create_model(name, **kw)


def test_deit_base_matches_paper() -> None:
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        deit_b = timm.create_model("deit_base_patch16_224", pretrained=False)
    paper_convention = flops.count(deit_b)
    assert paper_convention == pytest.approx(16.86, rel=0.01)
    assert flops.count(deit_b, include_attention=True) > paper_convention


def test_b_t_matches_paper() -> None:
    assert flops.count(meta_model("blvit_deit_b_t")) == pytest.approx(9.89, rel=0.03)


def test_counter_equals_analytic_and_charges_routed_tokens_only() -> None:
    b_t = meta_model("blvit_deit_b_t")
    previous = 0.0
    for keep_ratio in (0.25, 0.6):
        b_t.set_keep_ratio(keep_ratio)
        assert b_t.config.keep_ratio == keep_ratio
        for include_attention in (False, True):
            counted = flops.count(b_t, include_attention=include_attention)
            assert counted == pytest.approx(flops.analytic_vit(b_t.config, include_attention), rel=1e-9)
        assert counted > previous
        previous = counted
    s_t = meta_model("blvit_deit_s_t", keep_ratio=1.0)
    assert flops.count(s_t) == pytest.approx(flops.analytic_vit(s_t.config), rel=1e-9)


def test_one_unit_and_one_default_across_the_counters() -> None:
    """count_macs and count agree: MACs per image, weight layers only unless asked otherwise."""
    torch.manual_seed(0)
    tiny = dict(img_size=32, patch_size=8, embed_dim=64, num_heads=2, little_dim=16, little_heads=1)
    model = routevit.create_model("blvit_deit_b_t", depth=4, num_classes=5, **tiny).eval()
    one, three = torch.randn(1, 3, 32, 32), torch.randn(3, 3, 32, 32)
    per_image = flops.count_macs(model, one)
    assert flops.count_macs(model, three) == per_image  # per image, whatever the batch
    assert flops.count(model, (3, 32, 32), batch_size=3) == pytest.approx(per_image / 1e9, rel=1e-12)
    assert per_image == round(flops.analytic_vit(model.config) * 1e9)  # paper convention by default
    with_attention = flops.count_macs(model, one, include_attention=True)
    assert with_attention == round(flops.analytic_vit(model.config, include_attention=True) * 1e9)
    assert with_attention > per_image
    with pytest.raises(TypeError, match="batched tensor"):
        flops.count_macs(model)


def test_h_b_against_vanilla_vit_huge() -> None:
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        vit_h = timm.create_model("vit_huge_patch14_224", pretrained=False)
    h_b = meta_model("blvit_deit_h_b")
    vanilla, ours = flops.count(vit_h), flops.count(h_b)
    assert ours == pytest.approx(flops.analytic_vit(h_b.config), rel=1e-9)
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
