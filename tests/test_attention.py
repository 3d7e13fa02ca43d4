"""Attention backends against the explicit softmax(QK^T)V reference, and the layers against timm."""

from __future__ import annotations

import importlib

import pytest
import torch

import routevit
from routevit.layers import Attention, SemiCrossAttention, attention, get_attention_backend, math_attention

attention_module = importlib.import_module("routevit.layers.attention")


def _qkv(b=2, h=3, lq=5, lk=9, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, lq, d, generator=g), torch.randn(b, h, lk, d, generator=g),
            torch.randn(b, h, lk, d, generator=g))


def _explicit(q, k, v, bias=None):
    """Attention written out per (batch, head) with no broadcasting tricks."""
    out = torch.empty_like(q, dtype=torch.float64)
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            logits = q[b, h].double() @ k[b, h].double().T / q.shape[-1] ** 0.5
            if bias is not None:
                logits = logits + bias.expand(q.shape[0], q.shape[1], -1, -1)[b, h].double()
            out[b, h] = torch.softmax(logits, dim=-1) @ v[b, h].double()
    return out.float()


@pytest.mark.parametrize("lq,lk", [(9, 9), (4, 9)], ids=["self", "semi-cross"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_sdpa_matches_math(lq, lk, with_bias):
    q, k, v = _qkv(lq=lq, lk=lk)
    bias = torch.randn(1, 3, lq, lk) if with_bias else None
    reference = _explicit(q, k, v, bias)
    torch.testing.assert_close(math_attention(q, k, v, bias), reference, rtol=1e-5, atol=1e-5)
    with routevit.set_attention_backend("sdpa"):
        torch.testing.assert_close(attention(q, k, v, bias), reference, rtol=1e-5, atol=1e-5)
    with routevit.set_attention_backend("math"):
        torch.testing.assert_close(attention(q, k, v, bias), reference, rtol=1e-5, atol=1e-5)


def test_backend_setter_and_context_manager():
    assert get_attention_backend() == "auto"
    with routevit.set_attention_backend("math"):
        assert get_attention_backend() == "math"
        with routevit.set_attention_backend("sdpa"):
            assert get_attention_backend() == "sdpa"
        assert get_attention_backend() == "math"
    assert get_attention_backend() == "auto"
    routevit.set_attention_backend("sdpa")
    try:
        assert get_attention_backend() == "sdpa"
    finally:
        routevit.set_attention_backend("auto")


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="one of"):
        routevit.set_attention_backend("flash")


def test_forcing_xformers_without_xformers_says_why(monkeypatch):
    monkeypatch.setattr(attention_module, "_xformers_ops", lambda: None)
    with pytest.raises(RuntimeError, match="does not import"):
        routevit.set_attention_backend("xformers")
    assert get_attention_backend() == "auto"


def test_forcing_xformers_on_cpu_tensors_says_why(monkeypatch):
    monkeypatch.setattr(attention_module, "_xformers_ops", lambda: object())
    q, k, v = _qkv()
    with routevit.set_attention_backend("xformers"):
        with pytest.raises(RuntimeError, match="no kernels for cpu"):
            attention(q, k, v)


def test_auto_uses_sdpa_for_cpu_tensors_even_with_xformers(monkeypatch):
    monkeypatch.setattr(attention_module, "_xformers_ops", lambda: object())
    q, k, v = _qkv()
    torch.testing.assert_close(attention(q, k, v), _explicit(q, k, v), rtol=1e-5, atol=1e-5)


def test_attention_matches_timm():
    timm_vit = pytest.importorskip("timm.models.vision_transformer")
    torch.manual_seed(0)
    reference = timm_vit.Attention(64, num_heads=4, qkv_bias=True).eval()
    ours = Attention(64, 4).eval()
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(2, 11, 64)
    torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-6)


def test_semi_cross_with_all_tokens_is_self_attention():
    torch.manual_seed(0)
    full = Attention(32, 4)
    semi = SemiCrossAttention(32, 4)
    semi.load_state_dict(full.state_dict())
    x = torch.randn(3, 7, 32)
    torch.testing.assert_close(semi(x, x), full(x), rtol=1e-5, atol=1e-6)


def test_semi_cross_equals_explicit_cross_attention():
    torch.manual_seed(0)
    layer = SemiCrossAttention(16, 2)
    x_kv = torch.randn(2, 9, 16)
    x_q = x_kv[:, [0, 3, 4]]
    bias = torch.randn(2, 2, 3, 9)
    w, b = layer.qkv.weight, layer.qkv.bias

    def heads(t):
        return t.view(t.shape[0], t.shape[1], 2, 8).transpose(1, 2)

    q, k, v = heads(x_q @ w[:16].T + b[:16]), heads(x_kv @ w[16:32].T + b[16:32]), heads(
        x_kv @ w[32:].T + b[32:])
    expected = layer.proj(_explicit(q, k, v, bias).transpose(1, 2).reshape(2, 3, 16))
    torch.testing.assert_close(layer(x_q, x_kv, bias), expected, rtol=1e-5, atol=1e-5)


def test_dim_matched_attention_shapes():
    layer = Attention(48, 3, inner_dim=12, out_dim=48)
    assert layer.qkv.weight.shape == (36, 48)
    assert layer.proj.weight.shape == (48, 12)
    assert layer(torch.randn(2, 5, 48)).shape == (2, 5, 48)


def test_attention_bad_input():
    layer = Attention(16, 2)
    with pytest.raises(ValueError, match=r"\(B, N, C\)"):
        layer(torch.randn(5, 16))
    with pytest.raises(ValueError, match="16 channels"):
        layer(torch.randn(1, 5, 8))
    with pytest.raises(TypeError, match="torch.Tensor"):
        layer([[1.0]])
    with pytest.raises(ValueError, match="divisible"):
        Attention(10, 3)
    semi = SemiCrossAttention(16, 2)
    with pytest.raises(ValueError, match="batch size"):
        semi(torch.randn(1, 2, 16), torch.randn(2, 5, 16))
    with pytest.raises(TypeError, match="dtype"):
        semi(torch.randn(1, 2, 16, dtype=torch.float64), torch.randn(1, 5, 16))
