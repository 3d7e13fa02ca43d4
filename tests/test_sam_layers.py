"""Window grids, decomposed relative positions and windowed (semi-cross) attention blocks,
checked against segment_anything's own functions and blocks."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn

from routevit.layers import (
    Block,
    PerformanceBlock,
    Routes,
    TopKDispatcher,
    WindowGrid,
    decomposed_rel_pos,
    rel_pos_lookup,
)

sam_encoder = pytest.importorskip("segment_anything.modeling.image_encoder")


@pytest.mark.parametrize("hw,window", [((10, 10), 7), ((14, 14), 7), ((9, 12), 4), ((6, 6), 0)])
def test_partition_matches_sam_and_round_trips(hw, window):
    grid = WindowGrid(*hw, window)
    x = torch.randn(2, hw[0] * hw[1], 5)
    windows = grid.partition(x)
    if window:
        ref, pad_hw = sam_encoder.window_partition(x.view(2, *hw, 5), window)
        assert pad_hw == grid.padded_hw
        torch.testing.assert_close(windows, ref.view(windows.shape), rtol=0, atol=0)
    assert windows.shape == (2 * grid.num_windows, grid.window_tokens, 5)
    torch.testing.assert_close(grid.unpartition(windows), x, rtol=0, atol=0)


def test_slot_to_token_agrees_with_partition_and_local_position():
    grid = WindowGrid(10, 10, 7)
    raster = torch.arange(1, grid.num_tokens + 1, dtype=torch.float32).view(1, -1, 1)
    slots = grid.partition(raster).reshape(-1).long() - 1  # padding becomes -1
    index = grid.slot_to_token()
    assert torch.equal(index, torch.where(slots < 0, torch.tensor(grid.num_tokens), slots))
    real = index < grid.num_tokens
    slot_in_window = torch.arange(index.numel()) % grid.window_tokens
    assert torch.equal(grid.local_position(index[real]), slot_in_window[real])
    per_window = real.view(grid.num_windows, -1).sum(1)
    assert per_window.min().item() == grid.min_real_tokens() == 9


def test_sam_1024_geometry():
    grid = WindowGrid(64, 64, 14)
    assert grid.padded_hw == (70, 70) and grid.num_windows == 25 and grid.min_real_tokens() == 64


@pytest.mark.parametrize("bad", [(0, 4, 2), (4, 4, -1), (4.0, 4, 2)])
def test_window_grid_rejects_bad_sizes(bad):
    with pytest.raises((ValueError, TypeError), match="WindowGrid"):
        WindowGrid(*bad)


def test_partition_rejects_wrong_token_count():
    with pytest.raises(ValueError, match="10x10 = 100 grid tokens"):
        WindowGrid(10, 10, 7).partition(torch.randn(1, 99, 3))


def test_decomposed_rel_pos_matches_sam_for_all_and_for_selected_queries():
    torch.manual_seed(0)
    b, heads, (gh, gw), d = 2, 3, (5, 7), 8
    q = torch.randn(b, heads, gh * gw, d)
    table_h, table_w = torch.randn(2 * gh - 1, d), torch.randn(2 * gw - 1, d)
    zeros = torch.zeros(b * heads, gh * gw, gh * gw)
    ref = sam_encoder.add_decomposed_rel_pos(
        zeros, q.reshape(b * heads, gh * gw, d), table_h, table_w, (gh, gw), (gh, gw)
    ).view(b, heads, gh * gw, gh * gw)
    torch.testing.assert_close(decomposed_rel_pos(q, table_h, table_w, (gh, gw)), ref)
    pos = torch.stack([torch.randperm(gh * gw)[:6].sort().values for _ in range(b)])  # (B, 6)
    q_sel = q.gather(2, pos[:, None, :, None].expand(b, heads, 6, d))
    ours = decomposed_rel_pos(q_sel, table_h, table_w, (gh, gw), q_pos=pos)
    torch.testing.assert_close(ours, ref.gather(2, pos[:, None, :, None].expand(b, heads, 6, gh * gw)))


def test_rel_pos_lookup_interpolates_like_sam():
    table = torch.randn(9, 4)  # made for 5 positions, used for 7
    torch.testing.assert_close(rel_pos_lookup(7, table), sam_encoder.get_rel_pos(7, 7, table))


def _sam_block(dim: int, heads: int, window: int, hw: tuple[int, int]) -> nn.Module:
    block = sam_encoder.Block(
        dim, heads, norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=True, window_size=window,
        input_size=hw,
    )
    with torch.no_grad():
        block.attn.rel_pos_h.normal_()
        block.attn.rel_pos_w.normal_()
        block.norm1.weight.normal_(1.0, 0.2)
    return block.eval()


def _ours(block: nn.Module, sam: nn.Module) -> nn.Module:
    state = {k.replace("mlp.lin", "mlp.fc"): v for k, v in sam.state_dict().items()}
    missing, unexpected = block.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"alpha_attn", "alpha_mlp"}
    return block.eval()


def _window_routes(grid: WindowGrid, batch: int, k: int, generator: torch.Generator) -> Routes:
    """Random per-window routes, built without the encoder: k real tokens of every window."""
    slots = grid.slot_to_token().view(grid.num_windows, -1)
    rows = []
    for _ in range(batch):
        picks = []
        for window in slots:
            real = window[window < grid.num_tokens]
            picks.append(real[torch.randperm(len(real), generator=generator)[:k]].sort().values)
        rows.append(torch.cat(picks))
    return Routes(torch.stack(rows), torch.rand(batch, grid.num_tokens, generator=generator).softmax(-1))


@pytest.mark.parametrize("window", [7, 0])
def test_full_block_with_grid_matches_sam_block(window):
    torch.manual_seed(1)
    hw, dim = (10, 10), 32
    sam = _sam_block(dim, 4, window, hw)
    grid = WindowGrid(*hw, window)
    ours = _ours(Block(dim, 4, rel_pos_size=grid.window_hw), sam)
    x = torch.randn(2, 100, dim)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, grid=grid), sam(x.view(2, *hw, dim)).view(2, 100, dim))


@pytest.mark.parametrize("window", [7, 0])
def test_performance_block_is_the_sam_block_on_the_selected_tokens(window):
    """Semi-cross attention with per-window routes, padding and relative positions: every
    selected token gets exactly SAM's update at its own position; the others pass through."""
    torch.manual_seed(2)
    hw, dim = (10, 10), 32
    sam = _sam_block(dim, 4, window, hw)
    grid = WindowGrid(*hw, window)
    ours = _ours(PerformanceBlock(dim, 4, rel_pos_size=grid.window_hw), sam)
    routes = _window_routes(WindowGrid(*hw, 7), 2, 5, torch.Generator().manual_seed(0))
    x = torch.randn(2, 100, dim)
    with torch.no_grad():
        out = ours(x, routes, grid)
        ref = sam(x.view(2, *hw, dim)).view(2, 100, dim)
    selected = routes.mask()
    torch.testing.assert_close(out[selected], ref[selected])
    torch.testing.assert_close(out[~selected], x[~selected], rtol=0, atol=0)


def test_semi_cross_attention_needs_positions_with_relative_terms():
    block = PerformanceBlock(16, 2, rel_pos_size=(4, 4))
    routes = _window_routes(WindowGrid(4, 4, 4), 1, 3, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="q_pos"):
        block.attn(torch.randn(1, 3, 16), torch.randn(1, 16, 16))
    with pytest.raises(ValueError, match="grid"):
        block(torch.randn(1, 16, 16), routes)


def test_dispatcher_k_override_and_unchecked_eligibility():
    torch.manual_seed(3)
    scores = torch.rand(3, 12)
    ineligible = torch.zeros(12, dtype=torch.bool)
    ineligible[[4, 5, 10, 11]] = True  # two groups of 6, 4 eligible each
    dispatcher = TopKDispatcher(0.9, group_size=6)
    checked = dispatcher(scores, ineligible, k=4).indices
    unchecked = dispatcher(scores, ineligible, k=4, check_eligible=False).indices
    assert torch.equal(checked, unchecked) and checked.shape == (3, 8)
    assert not ineligible[checked].any()
    with pytest.raises(ValueError, match="only 4 eligible"):
        dispatcher(scores, ineligible, k=5)
    for bad in (0, 7, 2.0, True):
        with pytest.raises(ValueError, match="k must be an int"):
            dispatcher(scores, k=bad)


@pytest.mark.parametrize("hw,window", [((10, 10), 7), ((9, 12), 4), ((6, 6), 0)])
def test_project_windows_is_partition_then_linear_with_padding_at_the_bias(hw, window):
    grid = WindowGrid(*hw, window)
    x, linear = torch.randn(2, hw[0] * hw[1], 6), nn.Linear(6, 5)
    slots = grid.slot_to_token()
    real = slots < grid.num_tokens
    assert torch.equal(grid.token_to_slot()[slots[real]], real.nonzero()[:, 0])
    with torch.no_grad():
        projected = grid.project_windows(x, linear)
        torch.testing.assert_close(projected, linear(grid.partition(x)))
