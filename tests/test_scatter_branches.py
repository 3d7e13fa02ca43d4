"""Both accumulation branches of Routes.scatter_add (index_put on the CPU, index_add on CUDA)
against an explicit per-row reference, run on the CPU by switching the branch's device list."""

from __future__ import annotations

import importlib

import pytest
import torch

from routevit.layers import TopKDispatcher

routing = importlib.import_module("routevit.layers.routing")


@pytest.mark.parametrize("branch", ["index_put", "index_add"])
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("rows_dtype", [torch.float32, torch.bfloat16], ids=str)
def test_scatter_add_branches_match_a_per_row_reference(monkeypatch, branch, inplace, rows_dtype):
    monkeypatch.setattr(routing, "INDEX_PUT_DEVICES", ("cpu",) if branch == "index_put" else ())
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


def test_scatter_add_index_add_branch_carries_gradients(monkeypatch):
    monkeypatch.setattr(routing, "INDEX_PUT_DEVICES", ())
    routes = TopKDispatcher(0.5)(torch.rand(2, 6).softmax(-1))
    x = torch.randn(2, 6, 4, requires_grad=True)
    rows = torch.randn(2, 3, 4, requires_grad=True)
    weight = torch.randn(2, 6, 4)
    (routes.scatter_add(x, rows) * weight).sum().backward()
    torch.testing.assert_close(x.grad, weight)
    torch.testing.assert_close(rows.grad, routes.gather(weight))
