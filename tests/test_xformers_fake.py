"""The xformers backend against a fake ``xformers.ops`` that enforces the input rules of xformers'
``memory_efficient_attention`` (cutlass / ck operators) and computes the math on CPU tensors.

Rules enforced (xformers.ops.fmha: ``memory_efficient_attention`` docstring, ``Inputs.validate_inputs``,
``check_lastdim_alignment_stride1`` and ``_check_bias_alignment``):

* query ``(B, Mq, H, K)``, key ``(B, Mk, H, K)``, value ``(B, Mk, H, Kv)``: 4-D, one dtype, one
  device; dtype float16, bfloat16 or float32.
* q / k / v: last stride 1; on sm80+ the last dimension and ``stride(-2)`` are multiples of
  ``128 // bits`` (8 for 16-bit, 4 for fp32).
* a tensor ``attn_bias``: the query's dtype, shape ``(B, H, Mq, Mk)`` (it may be an expanded
  view), ``stride(-1) <= 1`` and every other stride a multiple of ``128 // bits``; a bias that
  requires grad must not be broadcast in shape.

A violation raises ``NotImplementedError("No operator found ...")`` or ``ValueError`` as xformers does.
"""

from __future__ import annotations

import importlib
import math
import sys
import types

import pytest
import torch

import routevit
from routevit import create_model
from routevit.layers import attention
from routevit.layers.encoder import Schedule

attention_module = importlib.import_module("routevit.layers.attention")


def _alignment(dtype: torch.dtype) -> int:
    return 128 // torch.finfo(dtype).bits


def fake_memory_efficient_attention(query, key, value, attn_bias=None, p=0.0, scale=None):
    calls.append((tuple(query.shape), None if attn_bias is None else tuple(attn_bias.stride())))
    if p != 0.0:
        raise NotImplementedError("the fake has no dropout")
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a 4-D (B, M, H, K) tensor, got {getattr(t, 'shape', t)}")
    if not query.dtype == key.dtype == value.dtype:
        raise ValueError(f"query/key/value dtypes differ: {query.dtype}, {key.dtype}, {value.dtype}")
    dtype = query.dtype
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise NotImplementedError(f"No operator found: dtype={dtype} not supported")
    b, mq, h, k = query.shape
    mk = key.shape[1]
    if key.shape != (b, mk, h, k) or value.shape[:3] != (b, mk, h):
        raise ValueError(f"incompatible shapes: query {query.shape}, key {key.shape}, value {value.shape}")
    align = _alignment(dtype)
    reasons = []
    for name, t in (("query", query), ("key", key), ("value", value)):
        if t.shape[-1] % align:
            reasons.append(f"{name}.shape[-1] % {align} != 0")
        elif t.stride(-2) % align:
            reasons.append(f"{name}.stride(-2) % {align} != 0 ({name}.stride() = {t.stride()})")
        if t.stride(-1) > 1:
            reasons.append(f"{name}.stride(-1) > 1")
    if attn_bias is not None:
        if not isinstance(attn_bias, torch.Tensor):
            raise NotImplementedError(f"the fake takes tensor biases only, got {type(attn_bias)}")
        if attn_bias.dtype != dtype:
            raise ValueError(f"attn_bias.dtype={attn_bias.dtype} must match query.dtype={dtype}")
        if tuple(attn_bias.shape) != (b, h, mq, mk):
            raise ValueError(f"attn_bias must have shape (B, H, Mq, Mk) = {(b, h, mq, mk)}, got "
                             f"{tuple(attn_bias.shape)}")  # fmt: skip
        for d in range(attn_bias.dim() - 1):
            if attn_bias.stride(d) % align:
                reasons.append(f"attn_bias.stride(-2) % {align} != 0 (stride {attn_bias.stride()})")
        if attn_bias.stride(-1) > 1:
            reasons.append(f"attn_bias.stride(-1) > 1 (attn_bias.stride() = {attn_bias.stride()})")
    if reasons:
        found = "; ".join(reasons)
        raise NotImplementedError(f"No operator found for `memory_efficient_attention_forward`: {found}")
    scale = 1.0 / math.sqrt(k) if scale is None else scale
    q, kk, v = (t.float().transpose(1, 2) for t in (query, key, value))  # (B, H, M, K)
    logits = (q @ kk.transpose(-2, -1)) * scale
    if attn_bias is not None:
        logits = logits + attn_bias.float()
    return (logits.softmax(-1) @ v).transpose(1, 2).to(dtype)  # (B, Mq, H, Kv)


calls: list = []


@pytest.fixture
def fake_xformers(monkeypatch: pytest.MonkeyPatch):
    """Install the fake as ``xformers.ops``, let the backend take CPU tensors, resolve afresh."""
    package = types.ModuleType("xformers")
    ops = types.ModuleType("xformers.ops")
    ops.memory_efficient_attention = fake_memory_efficient_attention
    package.ops = ops
    monkeypatch.setitem(sys.modules, "xformers", package)
    monkeypatch.setitem(sys.modules, "xformers.ops", ops)
    monkeypatch.setattr(attention_module, "XFORMERS_DEVICES", ("cuda", "cpu"))
    attention_module._forget_xformers()
    calls.clear()
    yield ops
    attention_module._forget_xformers()


def _tiny_deit():
    torch.manual_seed(0)
    return create_model("blvit_deit_s_t", img_size=32, patch_size=8, embed_dim=64, num_heads=4,
                        little_dim=32, little_heads=2, depth=3, num_classes=3).eval()  # fmt: skip


def _tiny_sam():
    torch.manual_seed(0)
    # 7x7 windows: 49 keys per window, a bias row of 49 (not a multiple of 8); the grid pads.
    model = create_model("blvit_sam_b_t", img_size=160, window_size=7, depth=3, embed_dim=64,
                         num_heads=4, global_attn_indexes=(2,), out_chans=32, little_dim=32,
                         little_heads=2, schedule=Schedule.big_little_from(3, 2, (1, 2)))  # fmt: skip
    with torch.no_grad():  # SAM initialises the tables to zeros; random ones make the bias count
        for name, p in model.named_parameters():
            if "rel_pos" in name:
                p.normal_(0.0, 0.5)
    return model.eval()


def _forward(model, x, backend, dtype):
    with routevit.set_attention_backend(backend), torch.no_grad():
        if dtype is None:
            return model(x)
        with torch.autocast("cpu", dtype=dtype):
            return model(x)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
def test_deit_forced_to_xformers_matches_math(fake_xformers, dtype):
    model, x = _tiny_deit(), torch.randn(2, 3, 32, 32)
    out = _forward(model, x, "xformers", dtype)
    assert calls, "the xformers kernel was not called"
    tol = 1e-5 if dtype is None else 2e-2
    torch.testing.assert_close(out, _forward(model, x, "math", dtype), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
def test_sam_windowed_bias_forced_to_xformers_matches_math(fake_xformers, dtype):
    """SAM's relative-position bias is a contiguous (B * nW, H, Lq, 49) tensor: strides that
    are not multiples of 8, which xformers refuses in 16 bits."""
    model, x = _tiny_sam(), torch.randn(1, 3, 160, 160)
    out = _forward(model, x, "xformers", dtype)
    assert any(stride is not None for _, stride in calls), "no biased call reached the kernel"
    tol = 1e-4 if dtype is None else 3e-2
    torch.testing.assert_close(out, _forward(model, x, "math", dtype), rtol=tol, atol=tol)


def test_sam_backward_through_xformers_matches_math(fake_xformers):
    """Training: the bias gradient (to the relative-position tables) flows through the aligned copy."""
    model, x = _tiny_sam().train(), torch.randn(1, 3, 160, 160)
    grads = {}
    for backend in ("xformers", "math"):
        model.zero_grad()
        with routevit.set_attention_backend(backend), torch.autocast("cpu", dtype=torch.bfloat16):
            model(x).float().square().mean().backward()
        grads[backend] = {n: p.grad.clone() for n, p in model.named_parameters() if "rel_pos" in n}
    assert grads["math"] and all(g.abs().sum() > 0 for g in grads["math"].values())
    for name, g in grads["math"].items():
        torch.testing.assert_close(grads["xformers"][name], g, rtol=5e-2, atol=5e-2, msg=name)


@pytest.mark.parametrize("shape", [(1, 2, 5, 9), (2, 1, 1, 9), (9,), (2, 2, 5, 1)])
def test_broadcast_and_unaligned_biases_are_accepted(fake_xformers, shape):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, n, 8, generator=g).bfloat16() for n in (5, 9, 9))
    bias = torch.randn(shape, generator=g).bfloat16()
    with routevit.set_attention_backend("xformers"):
        out = attention(q, k, v, bias)
    with routevit.set_attention_backend("math"):
        expected = attention(q, k, v, bias)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)  # the same fp32 math, rounded once


def test_xformers_is_resolved_once(monkeypatch: pytest.MonkeyPatch, fake_xformers):
    imports: list[str] = []
    real = importlib.import_module

    def counting(name, *args):  # noqa: ANN001, ANN002
        imports.append(name)
        return real(name, *args)

    monkeypatch.setattr(attention_module.importlib, "import_module", counting)
    attention_module._forget_xformers()
    q = torch.randn(1, 2, 4, 8)
    with routevit.set_attention_backend("xformers"):
        for _ in range(5):
            attention(q, q, q)
    assert imports.count("xformers.ops") == 1


def test_a_broken_xformers_is_tried_once(monkeypatch: pytest.MonkeyPatch):
    """A wheel built for another torch fails while importing; "auto" must not retry every call."""
    tries: list[str] = []

    def broken(name, *args):  # noqa: ANN001, ANN002
        tries.append(name)
        raise OSError("undefined symbol: _ZN3c10...")

    monkeypatch.setattr(attention_module.importlib, "import_module", broken)
    attention_module._forget_xformers()
    try:
        for _ in range(3):
            assert attention_module._xformers_ops() is None
        with pytest.raises(RuntimeError, match="does not import"):
            routevit.set_attention_backend("xformers")
    finally:
        attention_module._forget_xformers()
    assert tries == ["xformers.ops"]
