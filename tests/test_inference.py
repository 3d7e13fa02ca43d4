"""The inference form (split q / kv projections) computes the trained model's function, and makes
the int8 paths CPU users take today (torchao) work on bLViT."""

from __future__ import annotations

import copy

import pytest
import torch

import routevit
from routevit.layers import SemiCrossAttention, SplitSemiCrossAttention, b_t_schedule, for_inference

VIT = {"img_size": 32, "depth": 4, "num_classes": 5}
SAM = {"img_size": 64, "depth": 4, "embed_dim": 32, "num_heads": 2, "little_dim": 8, "little_heads": 1,
       "window_size": 3, "global_attn_indexes": (3,), "schedule": b_t_schedule(4)}  # fmt: skip


CASES = [("blvit_deit_s_t", VIT, 32), ("blvit_sam_b_t", SAM, 64)]


@pytest.mark.parametrize(("name", "kwargs", "size"), CASES)
def test_inference_form_is_the_same_function(name, kwargs, size):
    torch.manual_seed(0)
    model = routevit.create_model(name, **kwargs).double().eval()
    for m in model.modules():  # non-zero score scaling and relative positions, so they count
        for p_name, p in m.named_parameters(recurse=False):
            if p_name.startswith(("alpha", "rel_pos")):
                p.data.normal_()
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        expected = model(x)
        fast = for_inference(copy.deepcopy(model))
        assert not any(type(m) is SemiCrossAttention for m in fast.modules())
        assert any(isinstance(m, SplitSemiCrossAttention) for m in fast.modules())
        torch.testing.assert_close(fast(x), expected, rtol=1e-12, atol=1e-12)


def test_inference_form_refuses_the_cls_attention_selector():
    model = routevit.create_model("blvit_deit_s_t", selector="cls_attention", **VIT)
    with pytest.raises(ValueError, match="cls_attention"):
        for_inference(model)


@pytest.mark.parametrize("mode", ["dynamic", "weight_only"])
def test_torchao_int8_runs_on_blvit_and_stays_close(mode):
    quant = pytest.importorskip("torchao.quantization")
    config = (quant.Int8DynamicActivationInt8WeightConfig() if mode == "dynamic"
              else quant.Int8WeightOnlyConfig())  # fmt: skip
    torch.manual_seed(0)
    model = routevit.create_model("blvit_deit_s_t", img_size=64, num_classes=10).eval()
    x = torch.randn(4, 3, 64, 64)
    with torch.inference_mode():
        reference = model(x)
    int8 = for_inference(copy.deepcopy(model))
    quant.quantize_(int8, config)
    linears = [m for m in int8.modules() if isinstance(m, torch.nn.Linear)]
    assert all(type(m.weight) is not torch.nn.Parameter for m in linears if m.out_features > 1)
    with torch.inference_mode():
        out = int8(x)
    error = (out - reference).norm() / reference.norm()
    assert 0 < error < 0.1, error  # quantized (not a pass-through), and close
