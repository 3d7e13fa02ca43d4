"""Both accumulation kernels of Routes.scatter_add (index_add, the default, and index_put), chosen
by the runtime policy, against an explicit per-row reference."""

from __future__ import annotations

import pytest
import torch

from routevit import runtime
from routevit.layers import TopKDispatcher


@pytest.mark.parametrize("branch", ["index_put", "index_add"])
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("rows_dtype", [torch.float32, torch.bfloat16], ids=str)
def test_scatter_add_branches_match_a_per_row_reference(branch, inplace, rows_dtype):
    with runtime.policy(scatter_add=branch):
        _check_against_reference(inplace, rows_dtype)


def _check_against_reference(inplace, rows_dtype):
    torch.manual_seed(0)
    b, n, c = 3, 11, 5
    routes = TopKDispatcher(0.4, always_keep=(0,))(torch.rand(b, n).softmax(-1))
    x = torch.randn(b, n, c, dtype=torch.float64)
    rows = torch.randn(b, routes.num_selected, c).to(rows_dtype)
    expected = x.clone()
    for i in range(b):
        for j, token in enumerate(routes.indices[i].tolist()):
            expected[i, token] += rows[i, j].double()
    before = x.clone()
    out = routes.scatter_add(x, rows, inplace=inplace)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    if inplace:
        assert out.data_ptr() == x.data_ptr()
    else:
        assert torch.equal(x, before), "out of place leaves x untouched"


def test_scatter_add_index_add_branch_carries_gradients():
    assert runtime.get_policy().scatter_add == "index_add"
    routes = TopKDispatcher(0.5)(torch.rand(2, 6).softmax(-1))
    x = torch.randn(2, 6, 4, requires_grad=True)
    rows = torch.randn(2, 3, 4, requires_grad=True)
    weight = torch.randn(2, 6, 4)
    (routes.scatter_add(x, rows) * weight).sum().backward()
    torch.testing.assert_close(x.grad, weight)
    torch.testing.assert_close(rows.grad, routes.gather(weight))
