"""Routing invariants (DESIGN.md) as hypothesis properties, plus the error paths."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from routevit.layers import Router, Routes, TopKDispatcher, tokens_to_keep

SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def routing_cases(draw):
    """(scores, dispatcher, ineligible) with consistent groups, always-kept and padding."""
    groups = draw(st.integers(1, 4))
    group_size = draw(st.integers(1, 12))
    n = groups * group_size
    batch = draw(st.integers(1, 4))
    keep_ratio = draw(st.floats(0.01, 1.0))
    k = tokens_to_keep(keep_ratio, group_size)
    always = draw(st.sets(st.integers(0, n - 1), max_size=3))
    # at most k always-kept tokens per group
    per_group: dict[int, list[int]] = {}
    for i in sorted(always):
        per_group.setdefault(i // group_size, []).append(i)
    always = tuple(i for ids in per_group.values() for i in ids[:k])
    ineligible = None
    if draw(st.booleans()):
        # pad the tail of each group, leaving at least k eligible tokens and the always-kept ones
        pad = draw(st.integers(0, group_size - k))
        mask = torch.zeros(n, dtype=torch.bool)
        for g in range(groups):
            for j in range(group_size - pad, group_size):
                if g * group_size + j not in always:
                    mask[g * group_size + j] = True
        ineligible = mask
    seed = draw(st.integers(0, 2**16))
    scores = torch.randn(batch, n, generator=torch.Generator().manual_seed(seed)).softmax(-1)
    dispatcher = TopKDispatcher(keep_ratio, always_keep=always, group_size=group_size if groups > 1
                                or draw(st.booleans()) else None)
    return scores, dispatcher, ineligible, group_size, k


@SETTINGS
@given(routing_cases())
def test_indices_unique_sorted_in_range_and_keep_always_kept(case):
    scores, dispatcher, ineligible, group_size, k = case
    routes = dispatcher(scores, ineligible)
    n = scores.shape[1]
    groups = n // group_size
    assert routes.indices.shape == (scores.shape[0], groups * k)
    for row in routes.indices.tolist():
        assert row == sorted(set(row)), "indices must be unique and ascending"
        assert all(0 <= i < n for i in row)
        assert set(dispatcher.always_keep) <= set(row)
        # the same k in every group, each index inside its own group
        per_group = [sum(1 for i in row if i // group_size == g) for g in range(groups)]
        assert per_group == [k] * groups
        if ineligible is not None:
            assert not ineligible[row].any(), "padding tokens must never be selected"


@SETTINGS
@given(routing_cases())
def test_selection_is_the_top_k_of_each_group(case):
    scores, dispatcher, ineligible, group_size, k = case
    routes = dispatcher(scores, ineligible)
    forced = set(dispatcher.always_keep)
    for b, row in enumerate(routes.indices.tolist()):
        chosen = set(row)
        for g in range(scores.shape[1] // group_size):
            members = range(g * group_size, (g + 1) * group_size)
            eligible = [i for i in members if ineligible is None or not ineligible[i]]
            picked = [i for i in eligible if i in chosen and i not in forced]
            left = [i for i in eligible if i not in chosen]
            if picked and left:
                assert min(scores[b, picked]) >= max(scores[b, left])


@SETTINGS
@given(routing_cases(), st.integers(1, 16))
def test_gather_then_scatter(case, channels):
    scores, dispatcher, ineligible, _, _ = case
    routes = dispatcher(scores, ineligible)
    x = torch.randn(scores.shape[0], scores.shape[1], channels)
    rows = routes.gather(x)
    # identity on the selected rows, others untouched
    torch.testing.assert_close(routes.scatter(x, rows), x, rtol=0, atol=0)
    new_rows = torch.randn_like(rows)
    out = routes.scatter(x, new_rows)
    mask = routes.mask()
    torch.testing.assert_close(out[~mask], x[~mask], rtol=0, atol=0)
    torch.testing.assert_close(routes.gather(out), new_rows, rtol=0, atol=0)
    added = routes.scatter_add(x, new_rows)
    torch.testing.assert_close(added[~mask], x[~mask], rtol=0, atol=0)
    torch.testing.assert_close(routes.gather(added), rows + new_rows)


@SETTINGS
@given(routing_cases(), st.integers(1, 3))
def test_routing_of_a_sample_does_not_depend_on_the_batch(case, split):
    scores, dispatcher, ineligible, _, _ = case
    whole = dispatcher(scores, ineligible).indices
    parts = [dispatcher(chunk, ineligible).indices for chunk in scores.split(split)]
    torch.testing.assert_close(torch.cat(parts), whole, rtol=0, atol=0)


@SETTINGS
@given(st.integers(1, 300), st.floats(0.001, 1.0))
def test_k_is_ceil_of_keep_ratio_times_n(n, keep_ratio):
    k = tokens_to_keep(keep_ratio, n)
    assert k == max(1, math.ceil(round(keep_ratio * n, 6)))
    assert 1 <= k <= n


def test_k_is_robust_to_float_noise():
    assert tokens_to_keep(0.3, 10) == 3  # 0.3 * 10 == 3.0000000000000004
    assert tokens_to_keep(0.25, 197) == 50
    assert tokens_to_keep(1.0, 197) == 197


def test_router_is_a_softmax_over_tokens():
    torch.manual_seed(0)
    router = Router(8)
    x = torch.randn(3, 5, 8)
    scores = router(x)
    expected = torch.softmax(x @ router.proj.weight[0] + router.proj.bias[0], dim=1)
    torch.testing.assert_close(scores, expected)
    assert ((scores > 0) & (scores < 1)).all()


def test_routes_mask_and_selected_scores():
    scores = torch.tensor([[0.1, 0.5, 0.2, 0.2]])
    routes = Routes(torch.tensor([[1, 3]]), scores)
    assert routes.mask().tolist() == [[False, True, False, True]]
    torch.testing.assert_close(routes.selected_scores, torch.tensor([[0.5, 0.2]]))


@pytest.mark.parametrize(
    "kwargs,scores,ineligible,error,match",
    [
        ({"keep_ratio": 0.0}, None, None, ValueError, r"\(0, 1\]"),
        ({"keep_ratio": 1.5}, None, None, ValueError, r"\(0, 1\]"),
        ({"keep_ratio": "half"}, None, None, TypeError, "float"),
        ({"group_size": 3}, torch.rand(2, 8), None, ValueError, "must divide"),
        ({"keep_ratio": 0.25, "always_keep": (0, 1, 2)}, torch.rand(2, 8), None, ValueError,
         "always-kept"),
        ({"always_keep": (9,)}, torch.rand(2, 8), None, ValueError, "must be < N=8"),
        ({"always_keep": (0, 0)}, None, None, ValueError, "distinct"),
        ({}, torch.rand(2, 8, 1), None, ValueError, r"\(B, N\)"),
        ({}, torch.rand(2, 8), torch.zeros(7, dtype=torch.bool), ValueError, r"\(N,\)"),
        ({}, torch.rand(2, 8), torch.zeros(8), TypeError, "bool"),
        ({"keep_ratio": 0.5}, torch.rand(2, 8), torch.arange(8) > 2, ValueError, "eligible"),
        ({"always_keep": (7,)}, torch.rand(2, 8), torch.arange(8) > 6, ValueError, "ineligible"),
    ],
)
def test_dispatcher_bad_input(kwargs, scores, ineligible, error, match):
    with pytest.raises(error, match=match):
        dispatcher = TopKDispatcher(**kwargs)
        dispatcher(scores, ineligible)


def test_routes_bad_input():
    routes = Routes(torch.tensor([[0, 2]]), torch.rand(1, 4))
    with pytest.raises(ValueError, match=r"\(B=1, N=4, C\)"):
        routes.gather(torch.randn(1, 5, 3))
    with pytest.raises(ValueError, match=r"\(B, K, C\)"):
        routes.scatter(torch.randn(1, 4, 3), torch.randn(1, 3, 3))
    with pytest.raises(TypeError, match="floating point"):
        routes.scatter_add(torch.randn(1, 4, 3), torch.ones(1, 2, 3, dtype=torch.long))
    # autocast hands bf16 updates to an fp32 stream: they are added in the stream's dtype
    out = routes.scatter_add(torch.zeros(1, 4, 3), torch.ones(1, 2, 3, dtype=torch.bfloat16))
    assert out.dtype == torch.float32 and out.sum().item() == 6.0
    with pytest.raises(TypeError, match="int64"):
        Routes(torch.tensor([[0, 2]], dtype=torch.int32), torch.rand(1, 4))
    with pytest.raises(ValueError, match="batch size"):
        Routes(torch.tensor([[0, 2]]), torch.rand(2, 4))
