"""bf16 / fp16: the small learnable scalars (gamma = 1e-5, alpha * s ~ 1e-3) must not be rounded
away. Each test feeds the 16-bit tensors that autocast hands the fusion and the score scaling,
and compares with the paper's equation evaluated in float64 on the same inputs, at a tolerance
tighter than the term that 16-bit arithmetic would lose."""

from __future__ import annotations

import pytest
import torch

from routevit.layers import GatedFuse, PerformanceBlock, TopKDispatcher

GAMMA = 1e-5  # the paper's init, GatedFuse's default

# bf16 is the GPU recipes' default; fp16 autocast runs on the CPU too in recent torch.
DTYPES = [torch.bfloat16, torch.float16]


def _routes(batch: int, tokens: int, keep: float, seed: int = 0):
    """Routes from near-uniform router scores, s ~ 1 / tokens (as a fresh router gives)."""
    g = torch.Generator().manual_seed(seed)
    return TopKDispatcher(keep)((0.1 * torch.randn(batch, tokens, generator=g)).softmax(-1))


def _fused_reference(x, primary, secondary, indices, gamma):
    """Per token, in float64: selected -> x + primary + gamma * secondary, others -> x + secondary."""
    out = x.double() + secondary.double()
    for b in range(x.shape[0]):
        for j, i in enumerate(indices[b].tolist()):
            out[b, i] = x[b, i].double() + primary[b, j].double() + gamma * secondary[b, i].double()
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gated_fuse_keeps_the_efficiency_share_of_selected_tokens(dtype):
    torch.manual_seed(0)
    b, n, c = 2, 12, 16
    routes = _routes(b, n, 0.25)
    x = torch.randn(b, n, c)  # the fp32 residual stream
    primary = torch.randn(b, routes.num_selected, c).to(dtype)  # what autocast's matmuls return
    sign = torch.randint(0, 2, (b, n, c)).float() * 2 - 1
    secondary = (sign * (1 + torch.rand(b, n, c))).to(dtype)  # |secondary| in [1, 2]
    with torch.autocast("cpu", dtype=dtype):
        out = GatedFuse()(x, primary, secondary, routes)
    assert out.dtype == torch.float32
    reference = _fused_reference(x, primary, secondary, routes.indices, GAMMA)
    # gamma * |secondary| >= 1e-5 is the share 16-bit (gamma - 1) loses; fp32 rounding of
    # values below 5 is < 1e-6. A fifth of the smallest share separates the two.
    worst = (out.double() - reference).abs().max().item()
    assert worst < GAMMA / 5, f"max error {worst:.3g} vs gamma * |secondary| >= {GAMMA}"


def test_gated_fuse_gamma_gradient_in_bf16():
    """d out / d gamma = sum over the selected rows of grad * secondary, to fp32 accuracy."""
    torch.manual_seed(1)
    b, n, c = 2, 40, 8
    routes = _routes(b, n, 0.25, seed=1)
    x = torch.randn(b, n, c)
    primary = torch.randn(b, routes.num_selected, c).bfloat16()
    secondary = torch.randn(b, n, c).bfloat16()
    weight = torch.randn(b, n, c)
    fuse = GatedFuse()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (fuse(x, primary, secondary, routes) * weight).sum().backward()
    rows = torch.zeros(b, n, 1, dtype=torch.float64).scatter_(1, routes.indices.unsqueeze(-1), 1.0)
    expected = (rows * weight.double() * secondary.double()).sum()
    torch.testing.assert_close(fuse.gamma.grad.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("branch", ["attn", "mlp"])
def test_score_scaling_survives_16bit(dtype, branch):
    """(alpha * s + 1) * update with alpha * s ~ 1e-3: in 16 bits the factor itself rounds (to
    1.0 in bf16, whose spacing near 1 is 2^-7; to a multiple of 2^-10 in fp16), an error of up to
    1e-3 (bf16) or 5e-4 (fp16) of the update, the same for every channel of a token."""
    torch.manual_seed(0)
    b, n, c = 2, 100, 16
    block = PerformanceBlock(c, 2)
    x = torch.randn(b, n, c)
    routes = _routes(b, n, 0.25)  # scores ~ 1 / 100

    def run(alpha: float) -> torch.Tensor:
        with torch.no_grad():
            block.alpha_attn.fill_(alpha)
            block.alpha_mlp.fill_(alpha)
        with torch.autocast("cpu", dtype=dtype), torch.no_grad():
            if branch == "attn":
                return block.attn_branch(x, routes)
            return block.mlp_branch(routes.gather(x), routes)

    alpha = 0.1
    update = run(0.0).double()  # alpha = 0: the unscaled 16-bit update, exactly
    scaled = run(alpha)
    s = routes.selected_scores.double().unsqueeze(-1)
    reference = update * (alpha * s + 1.0)
    assert (alpha * s).max() < 2**-8, "the test needs alpha * s below half of bf16's spacing near 1"
    # Under autocast alpha is fp32, so the scaled update can be exact to fp32 (~1e-7); a rounded
    # factor is off by up to 1e-3 of the update.
    error = ((scaled.double() - reference).abs() / update.abs().clamp_min(1e-3)).max().item()
    assert error < 2**-16, f"relative error {error:.3g} of the scaled update"
