"""MACs of SAM ViT-B (segment_anything) and blvit_sam_b_t at 1024x1024, counted by torch's
FlopCounterMode on meta tensors (nothing runs) and cross-checked with the analytic formula.

Conventions: "weight" counts linear and conv MACs only (the paper's; it gives SAM ViT-B 368.7
against the paper's 372.0), "all" adds the attention matmuls and relative-position einsums.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn

from routevit import create_model
from routevit.flops import WEIGHT_OPS, count_macs_by_op
from routevit.layers.encoder import Schedule

modeling = pytest.importorskip("segment_anything.modeling")


def _macs(model: nn.Module, size: int, device: str) -> tuple[int, int]:
    by_op = count_macs_by_op(model.eval(), torch.zeros(1, 3, size, size, device=device))
    return sum(v for k, v in by_op.items() if k in WEIGHT_OPS), sum(by_op.values())


@pytest.fixture(scope="module")
def macs_1024() -> dict[str, tuple[int, int]]:
    with torch.device("meta"):
        sam = modeling.ImageEncoderViT(
            img_size=1024, embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11),
            window_size=14, use_rel_pos=True, norm_layer=partial(nn.LayerNorm, eps=1e-6),
        )
        blvit = create_model("blvit_sam_b_t")
    return {"sam": _macs(sam, 1024, "meta"), "blvit": _macs(blvit, 1024, "meta")}


def test_vanilla_sam_vit_b_matches_the_paper_and_the_formula(macs_1024):
    weight, _ = macs_1024["sam"]
    n, padded, c = 64 * 64, 70 * 70, 768  # SAM's window layers project the padded 70x70 grid
    formula = n * c * 768 + n * c * 256 + n * 256 * 256 * 9  # patch embedding, neck
    formula += 8 * (4 * padded + 8 * n) * c * c + 4 * 12 * n * c * c  # 8 window + 4 global layers
    assert weight == formula
    assert weight / 1e9 == pytest.approx(372.0, rel=0.01)  # 368.7 GMACs


def test_blvit_sam_b_t_matches_the_formula(macs_1024):
    weight, _ = macs_1024["blvit"]
    n, c, little, k = 64 * 64, 768, 192, 25 * 41  # 41 tokens in each of the 25 windows
    formula = n * c * 768 + n * c * 256 + n * 256 * 256 * 9 + 12 * n * c * c  # stem, neck, layer 1
    p_path = (10 * k + 2 * n) * c * c  # q, proj and FFN on the selected; k, v on all real tokens
    e_path = 6 * n * c * little + 8 * n * little * little  # dimension-matched attention and FFN
    formula += 11 * (p_path + e_path) + 4 * n * c  # 11 big.LITTLE layers, 4 routers
    # Padded (window) layers also project one zero token whose output fills the padding slots:
    # layer 1's qkv, and the P path's k, v and the E path's qkv in 7 big.LITTLE window layers.
    formula += 3 * c * c + 7 * (2 * c * c + 3 * c * little)
    assert weight == formula
    assert weight / 1e9 == pytest.approx(210.5, rel=0.02)  # 207.4 GMACs


def test_mac_ratio_is_at_least_1_7_in_both_conventions(macs_1024):
    (sam_weight, sam_all), (ours_weight, ours_all) = macs_1024["sam"], macs_1024["blvit"]
    assert sam_weight / ours_weight >= 1.7  # 1.777 (paper: 372.0 / 210.5 = 1.767)
    assert sam_all / ours_all >= 1.7  # 1.824 (486.0 / 266.5)


def test_meta_counts_equal_real_counts():
    kwargs = dict(
        img_size=160, window_size=7, depth=3, embed_dim=64, num_heads=4, global_attn_indexes=(2,),
        little_dim=32, little_heads=2, schedule=Schedule.big_little_from(3, 2, (1, 2)),
    )
    real = _macs(create_model("blvit_sam_b_t", **kwargs), 160, "cpu")
    with torch.device("meta"):
        meta = _macs(create_model("blvit_sam_b_t", **kwargs), 160, "meta")
    assert meta == real


def test_vit_h_and_h_b_match_the_paper_in_the_weight_layer_convention():
    with torch.device("meta"):
        sam = modeling.ImageEncoderViT(
            img_size=1024, embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31),
            window_size=14, use_rel_pos=True, norm_layer=partial(nn.LayerNorm, eps=1e-6),
        )
        blvit = create_model("blvit_sam_h_b")
    vanilla, ours = _macs(sam, 1024, "meta")[0], _macs(blvit, 1024, "meta")[0]
    assert vanilla / 1e9 == pytest.approx(2736.6, rel=0.01)  # 2732.3
    assert ours / 1e9 == pytest.approx(1993.3, rel=0.03)  # 1949.5
