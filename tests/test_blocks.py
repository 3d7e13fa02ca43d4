"""Blocks against timm and an explicit, per-sample reference of the paper's equations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from routevit.layers import (
    BigLittleBlock,
    Block,
    DimMatchedBlock,
    DropPath,
    GatedFuse,
    Mlp,
    PerformanceBlock,
    Router,
    TopKDispatcher,
)

timm_vit = pytest.importorskip("timm.models.vision_transformer")


def _ln(x, norm):
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def _attn_rows(xn, rows, attn, heads):
    """Explicit multi-head attention of the query rows ``rows`` of one sample against all tokens."""
    w, b = attn.qkv.weight, attn.qkv.bias
    inner = w.shape[0] // 3
    q, k, v = (xn @ w[i * inner:(i + 1) * inner].T + b[i * inner:(i + 1) * inner] for i in range(3))
    d = inner // heads
    out = []
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        weights = torch.softmax(q[rows, sl] @ k[:, sl].T / d**0.5, dim=-1)
        out.append(weights @ v[:, sl])
    return torch.cat(out, dim=-1) @ attn.proj.weight.T + attn.proj.bias


def _mlp(x, mlp):
    return F.gelu(x @ mlp.fc1.weight.T + mlp.fc1.bias) @ mlp.fc2.weight.T + mlp.fc2.bias


def reference_big_little(block: BigLittleBlock, x: torch.Tensor, indices: torch.Tensor, scores):
    """The paper's Algorithm 1 with score scaling and gated fusion, one sample at a time."""
    p, e = block.performance, block.efficiency
    out = []
    for b in range(x.shape[0]):
        xb, rows, s = x[b], indices[b].tolist(), scores[b, indices[b]].unsqueeze(-1)
        all_rows = list(range(xb.shape[0]))
        m = torch.zeros(xb.shape[0], 1)
        m[rows] = 1.0
        # attention sub-layer
        primary = torch.zeros_like(xb)
        primary[rows] = (p.alpha_attn * s + 1) * _attn_rows(_ln(xb, p.norm1), rows, p.attn, 4)
        secondary = _attn_rows(_ln(xb, e.norm1), all_rows, e.attn, 2)
        xb = xb + m * (primary + block.fuse_attn.gamma * secondary) + (1 - m) * secondary
        # FFN sub-layer
        primary = torch.zeros_like(xb)
        primary[rows] = (p.alpha_mlp * s + 1) * _mlp(_ln(xb[rows], p.norm2), p.mlp)
        hidden = _ln(xb, e.norm2) @ e.mlp_in.weight.T + e.mlp_in.bias
        secondary = _mlp(hidden, e.mlp) @ e.mlp_out.weight.T + e.mlp_out.bias
        xb = xb + m * (primary + block.fuse_mlp.gamma * secondary) + (1 - m) * secondary
        out.append(xb)
    return torch.stack(out)


def _randomize_scalars(block: BigLittleBlock) -> None:
    """alpha = 0 and gamma = 1e-5 at init would hide mistakes in the scaling and fusion."""
    with torch.no_grad():
        block.performance.alpha_attn.fill_(0.7)
        block.performance.alpha_mlp.fill_(-1.3)
        block.fuse_attn.gamma.fill_(0.4)
        block.fuse_mlp.gamma.fill_(1.7)


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 3), st.integers(2, 20), st.floats(0.05, 1.0), st.integers(0, 999))
def test_big_little_block_matches_explicit_reference(batch, n, keep_ratio, seed):
    torch.manual_seed(seed)
    block = BigLittleBlock(32, 4, little_dim=8, little_heads=2).eval()
    _randomize_scalars(block)
    x = torch.randn(batch, n, 32)
    routes = TopKDispatcher(keep_ratio, always_keep=(0,))(Router(32)(x))
    expected = reference_big_little(block, x, routes.indices, routes.scores)
    torch.testing.assert_close(block(x, routes), expected, rtol=1e-4, atol=1e-5)


def test_performance_block_with_all_tokens_is_timm_block():
    torch.manual_seed(0)
    reference = timm_vit.Block(64, 4, qkv_bias=True).eval()
    block = PerformanceBlock(64, 4).eval()
    missing, unexpected = block.load_state_dict(reference.state_dict(), strict=False)
    assert set(missing) == {"alpha_attn", "alpha_mlp"} and not unexpected
    x = torch.randn(2, 10, 64)
    routes = TopKDispatcher(1.0)(torch.rand(2, 10).softmax(-1))
    torch.testing.assert_close(block(x, routes), reference(x), rtol=1e-5, atol=1e-5)


def test_vanilla_block_is_timm_block():
    torch.manual_seed(0)
    reference = timm_vit.Block(64, 4, qkv_bias=True).eval()
    block = Block(64, 4).eval()
    block.load_state_dict(reference.state_dict())
    x = torch.randn(2, 10, 64)
    torch.testing.assert_close(block(x), reference(x), rtol=1e-5, atol=1e-5)


def test_p_only_block_leaves_unselected_tokens_untouched():
    torch.manual_seed(0)
    block = PerformanceBlock(32, 4).eval()
    x = torch.randn(3, 12, 32)
    routes = TopKDispatcher(0.25, always_keep=(0,))(Router(32)(x))
    out = block(x, routes)
    mask = routes.mask()
    torch.testing.assert_close(out[~mask], x[~mask], rtol=0, atol=0)
    assert not torch.allclose(out[mask], x[mask])


def test_p_only_block_matches_vanilla_block_on_selected_rows_with_semi_cross_attention():
    """Selected rows get x + attn(all-token keys) then + mlp: compare with the explicit math."""
    torch.manual_seed(1)
    block = PerformanceBlock(32, 4).eval()
    with torch.no_grad():
        block.alpha_attn.fill_(2.0)
    x = torch.randn(1, 9, 32)
    routes = TopKDispatcher(0.34)(torch.rand(1, 9).softmax(-1))
    rows = routes.indices[0].tolist()
    s = routes.selected_scores[0].unsqueeze(-1)
    after_attn = x[0, rows] + (2.0 * s + 1) * _attn_rows(_ln(x[0], block.norm1), rows, block.attn, 4)
    expected = after_attn + _mlp(_ln(after_attn, block.norm2), block.mlp)
    torch.testing.assert_close(block(x, routes)[0, rows], expected, rtol=1e-4, atol=1e-5)


def test_dim_matched_block_shapes_and_math():
    torch.manual_seed(0)
    block = DimMatchedBlock(48, 12, 3).eval()
    assert block.mlp_in.weight.shape == (12, 48)
    assert block.mlp.fc1.weight.shape == (48, 12)
    assert block.mlp_out.weight.shape == (48, 12)
    x = torch.randn(2, 6, 48)
    after = x[0] + _attn_rows(_ln(x[0], block.norm1), list(range(6)), block.attn, 3)
    hidden = _ln(after, block.norm2) @ block.mlp_in.weight.T + block.mlp_in.bias
    expected = after + _mlp(hidden, block.mlp) @ block.mlp_out.weight.T + block.mlp_out.bias
    torch.testing.assert_close(block(x)[0], expected, rtol=1e-4, atol=1e-5)


def test_gated_fuse_formula():
    fuse = GatedFuse(0.25)
    x = torch.randn(2, 5, 3)
    secondary = torch.randn(2, 5, 3)
    routes = TopKDispatcher(0.4)(torch.rand(2, 5).softmax(-1))
    primary = torch.randn(2, routes.num_selected, 3)
    out = fuse(x, primary, secondary, routes)
    mask = routes.mask()
    torch.testing.assert_close(out[~mask], (x + secondary)[~mask])
    expected_selected = routes.gather(x) + primary + 0.25 * routes.gather(secondary)
    torch.testing.assert_close(routes.gather(out), expected_selected)
    assert GatedFuse().gamma.item() == pytest.approx(1e-5)


def test_fresh_parameters_follow_the_paper():
    block = BigLittleBlock(32, 4, 8, 2)
    assert block.performance.alpha_attn.item() == 0.0 and block.performance.alpha_mlp.item() == 0.0
    assert block.fuse_attn.gamma.item() == pytest.approx(1e-5)


def test_router_receives_gradients_through_score_scaling():
    torch.manual_seed(0)
    router = Router(32)
    block = BigLittleBlock(32, 4, 8, 2)
    with torch.no_grad():  # alpha = 0 at init blocks the gradient by design; any other value carries it
        block.performance.alpha_attn.fill_(0.5)
    x = torch.randn(2, 10, 32)
    routes = TopKDispatcher(0.3, always_keep=(0,))(router(x.detach()))
    block(x, routes).square().sum().backward()
    assert router.proj.weight.grad is not None and router.proj.weight.grad.abs().sum() > 0
    assert block.performance.alpha_mlp.grad.abs() > 0  # alpha itself learns from alpha = 0


def test_mlp_and_drop_path():
    mlp = Mlp(4, 16, 6)
    assert mlp(torch.randn(3, 4)).shape == (3, 6)
    drop = DropPath(0.5).train()
    torch.manual_seed(0)
    out = drop(torch.ones(1000, 2, 3))
    kept = out[:, 0, 0] != 0
    assert 0.4 < kept.float().mean() < 0.6
    torch.testing.assert_close(out[kept], torch.full_like(out[kept], 2.0))
    assert torch.equal(drop.eval()(torch.ones(4, 2)), torch.ones(4, 2))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        DropPath(1.0)


@pytest.mark.parametrize("shape", [(5, 4), (3, 7, 4), (2, 1, 4)])
def test_mlp_forward_transposed_is_forward(shape):
    """The P path's orientation (W @ x^T) computes the same function with the same gradients."""
    torch.manual_seed(0)
    mlp = Mlp(4, 16, 6).double()
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    out = mlp.forward_transposed(x)
    reference = F.linear(F.gelu(F.linear(x, mlp.fc1.weight, mlp.fc1.bias)), mlp.fc2.weight, mlp.fc2.bias)
    assert out.shape == shape[:-1] + (6,)
    torch.testing.assert_close(out, reference)
    grads = torch.autograd.grad(out.square().sum(), [x, mlp.fc1.weight, mlp.fc2.bias])
    expected = torch.autograd.grad(reference.square().sum(), [x, mlp.fc1.weight, mlp.fc2.bias])
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("keep", [3, 129])  # 2 * keep rows: below and above transposed_mlp_max_rows
def test_performance_mlp_branch_on_both_sides_of_the_orientation_switch(keep):
    from routevit.runtime import policy

    TRANSPOSED_MLP_MAX_ROWS = 256  # noqa: N806 - the AMD default, set explicitly on any CPU
    with policy(transposed_mlp_max_rows=TRANSPOSED_MLP_MAX_ROWS):
        _mlp_branch_matches(keep, TRANSPOSED_MLP_MAX_ROWS)


def _mlp_branch_matches(keep, TRANSPOSED_MLP_MAX_ROWS):  # noqa: N803
    torch.manual_seed(0)
    block = PerformanceBlock(8, 2).double()
    block.alpha_mlp.data.fill_(0.7)
    x = torch.randn(2, 300, 8, dtype=torch.float64)
    routes = TopKDispatcher(keep / 300)(torch.rand(2, 300, dtype=torch.float64).softmax(-1))
    assert (2 * keep <= TRANSPOSED_MLP_MAX_ROWS) == (keep == 3)
    selected = routes.gather(x)
    expected = block.mlp(_ln(selected, block.norm2)) * (0.7 * routes.selected_scores + 1).unsqueeze(-1)
    torch.testing.assert_close(block.mlp_branch(selected, routes), expected)


def test_blocks_bad_input():
    block = BigLittleBlock(32, 4, 8, 2)
    routes = TopKDispatcher(0.5)(torch.rand(2, 6).softmax(-1))
    with pytest.raises(ValueError, match="32 channels"):
        block(torch.randn(2, 6, 16), routes)
    with pytest.raises(ValueError, match=r"\(B=2, N=6, C\)"):
        block(torch.randn(2, 7, 32), routes)
    with pytest.raises(ValueError, match="shape of x"):
        GatedFuse()(torch.randn(2, 6, 4), torch.randn(2, 3, 4), torch.randn(2, 5, 4), routes)
    with pytest.raises(ValueError, match=r"\(B, N, C\)"):
        Block(32, 4)(torch.randn(6, 32))


def test_big_little_block_runs_under_bf16_autocast():
    """Training uses autocast: bf16 updates are fused into the fp32 residual stream."""
    torch.manual_seed(0)
    block = BigLittleBlock(32, 4, 8, 2)
    p_only = PerformanceBlock(32, 4)
    x = torch.randn(2, 10, 32)
    routes = TopKDispatcher(0.3, always_keep=(0,))(Router(32)(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = p_only(block(x, routes), routes)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, p_only(block(x, routes), routes), rtol=0.05, atol=0.05)
