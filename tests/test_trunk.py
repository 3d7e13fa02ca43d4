"""One trunk for every model family: its extension points (block factory, routing policies, the
scorer protocol), the blocks' common signature and the runtime policy."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import routevit
from routevit.layers import (
    BigLittleBlock,
    BigLittleEncoder,
    Block,
    BlockSpec,
    ClsAttentionScorer,
    DimMatchedBlock,
    PerformanceBlock,
    Router,
    Routes,
    Schedule,
    TokenScorer,
    TopKDispatcher,
    WindowGrid,
    WindowTopK,
    b_t_schedule,
    default_block_fn,
)
from routevit.models.sam import BigLittleSamEncoder


class ZeroEfficiency(nn.Module):
    """A user's own E block: contributes nothing (so a big.LITTLE layer must act as P-only)."""

    def attn_branch(self, x: torch.Tensor, grid: WindowGrid | None = None) -> torch.Tensor:
        return torch.zeros_like(x)

    def mlp_branch(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def zero_e_block_fn(kind: str, spec: BlockSpec) -> nn.Module:
    if kind != "big_little":
        return default_block_fn(kind, spec)
    return BigLittleBlock(
        spec.dim, spec.num_heads, 0, 1, drop_path=spec.drop_path, efficiency=ZeroEfficiency()
    )


def test_both_model_families_run_on_the_one_trunk():
    vit = routevit.create_model("blvit_deit_s_t", img_size=32, depth=4)
    sam = routevit.create_model(
        "blvit_sam_b_t", img_size=64, depth=4, embed_dim=32, num_heads=2, little_dim=8, little_heads=1,
        window_size=2, global_attn_indexes=(3,), schedule=b_t_schedule(4),
    )
    assert isinstance(vit.encoder, BigLittleEncoder) and isinstance(sam, BigLittleEncoder)
    assert all(g is None for g in vit.encoder.grids)
    assert [g.window for g in sam.grids] == [2, 2, 2, 0]
    assert isinstance(sam.policy, WindowTopK)


def test_a_users_e_block_in_a_stock_schedule_matches_the_p_only_layer():
    """A zero E path leaves the unselected tokens alone and adds only the P update to the
    selected ones, which is what the P-only layer does: compare the two trunks layer by layer."""
    torch.manual_seed(0)
    schedule = b_t_schedule(4)
    ours = BigLittleEncoder(
        32, 4, 8, 2, schedule, keep_ratio=0.3, always_keep=(0,), block_fn=zero_e_block_fn
    )
    p_only = BigLittleEncoder(32, 4, 8, 2, schedule.performance_only(), keep_ratio=0.3, always_keep=(0,))
    assert isinstance(ours.blocks[1].efficiency, ZeroEfficiency)
    reference = {k: v for k, v in ours.state_dict().items() if "fuse_" not in k}
    reference = {k.replace(".performance.", "."): v for k, v in reference.items()}
    p_only.load_state_dict(reference)
    for block in ours.blocks[1:]:
        block.performance.alpha_attn.data.fill_(0.5)
    for block in p_only.blocks[1:]:
        block.alpha_attn.data.fill_(0.5)
    x = torch.randn(2, 17, 32)
    (out, routes), (want, want_routes) = ours.forward_routes(x), p_only.forward_routes(x)
    torch.testing.assert_close(out, want)
    assert all(torch.equal(a.indices, b.indices) for a, b in zip(routes, want_routes, strict=True))


def test_every_block_has_the_common_signature():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 16)
    routes = TopKDispatcher(0.5)(torch.rand(2, 6).softmax(-1))
    blocks = (Block(16, 2), DimMatchedBlock(16, 8, 2), PerformanceBlock(16, 2), BigLittleBlock(16, 2, 8, 2))
    for block in blocks:
        assert block(x, routes=routes, grid=None).shape == x.shape
    with pytest.raises(TypeError, match="WindowGrid was passed as routes"):
        Block(16, 2)(x, WindowGrid(2, 3))
    with pytest.raises(TypeError, match="pass routes"):
        PerformanceBlock(16, 2)(x)
    with pytest.raises(TypeError, match="attn_branch"):
        BigLittleBlock(16, 2, 8, 2, efficiency=nn.Linear(2, 2))


def test_router_and_cls_attention_answer_the_scorer_protocol():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8)
    block = BigLittleBlock(8, 2, 4, 1)
    router, cls = Router(8), ClsAttentionScorer(0)
    assert isinstance(router, TokenScorer) and isinstance(cls, TokenScorer)
    torch.testing.assert_close(router.score(x, block), router(x))
    p = block.performance
    torch.testing.assert_close(cls.score(x, block), cls(x, p.norm1, p.attn.qkv, p.attn.num_heads))
    with pytest.raises(ValueError, match="next_block"):
        cls.score(x, None)


def test_window_policy_picks_the_top_k_real_tokens_of_every_window():
    """Against an explicit loop over windows: the k best real tokens of each window."""
    torch.manual_seed(0)
    grid = WindowGrid(5, 5, 3)  # pads to 6x6: 4 windows holding 9, 6, 6, 4 real tokens
    policy = WindowTopK(grid, keep_ratio=0.5)  # ceil(ceil(12.5) / 4) = 4 per window
    assert policy.tokens_per_window == 4 and policy.max_keep_ratio() == pytest.approx(16 / 25)
    scores = torch.rand(3, 25).softmax(-1)
    routes = policy(scores)
    for b in range(3):
        expected = []
        for wy in range(2):
            for wx in range(2):
                rows, cols = range(3 * wy, min(3 * wy + 3, 5)), range(3 * wx, min(3 * wx + 3, 5))
                members = [y * 5 + x for y in rows for x in cols]
                best = sorted(members, key=lambda t: -scores[b, t].item())[:4]
                expected.extend(sorted(best))
        assert routes.indices[b].tolist() == expected
    with pytest.raises(ValueError, match="largest keep_ratio for this geometry is 0.64"):
        policy.set_keep_ratio(0.7)


def test_sam_set_keep_ratio_updates_its_config():
    sam = BigLittleSamEncoder(
        img_size=64, depth=2, embed_dim=16, num_heads=2, little_dim=8, little_heads=1, window_size=2,
        global_attn_indexes=(), schedule=Schedule(("full", "big_little"), (1,)),
    )
    sam.set_keep_ratio(0.5)
    assert sam.config.keep_ratio == sam.keep_ratio == 0.5 and sam.tokens_per_window == 2


def test_runtime_policy_chooses_the_ffn_orientation_without_changing_the_result(monkeypatch):
    torch.manual_seed(0)
    block = PerformanceBlock(8, 2).double()
    x = torch.randn(1, 10, 8, dtype=torch.float64)
    routes = TopKDispatcher(0.3)(torch.rand(1, 10, dtype=torch.float64).softmax(-1))
    selected = routes.gather(x)
    calls = []
    transposed = block.mlp.forward_transposed
    monkeypatch.setattr(block.mlp, "forward_transposed", lambda t: calls.append(1) or transposed(t))
    before = routevit.runtime.get_policy()
    with routevit.runtime.policy(transposed_mlp_max_rows=256):
        default = block.mlp_branch(selected, routes)
    assert calls == [1]  # 3 rows <= the limit: W @ x^T
    with routevit.runtime.policy(transposed_mlp_max_rows=0):
        assert routevit.runtime.get_policy().transposed_mlp_max_rows == 0
        switched_off = block.mlp_branch(selected, routes)
    assert calls == [1] and routevit.runtime.get_policy() == before
    torch.testing.assert_close(default, switched_off)
    with pytest.raises(ValueError, match="transposed_mlp_max_rows"):
        routevit.runtime.set_policy(transposed_mlp_max_rows=-1)
    with pytest.raises(TypeError):
        routevit.runtime.set_policy(no_such_field=1)


def test_the_default_ffn_orientation_follows_the_cpu(monkeypatch):
    from routevit import runtime

    for vendor, rows in (("AuthenticAMD", 256), ("GenuineIntel", 0), ("", 0)):
        monkeypatch.setattr(runtime, "cpu_vendor", lambda v=vendor: v)
        assert runtime.RuntimePolicy().transposed_mlp_max_rows == rows


def test_routes_of_the_trunk_are_per_prediction_layer():
    enc = BigLittleEncoder(16, 2, 8, 2, b_t_schedule(8), keep_ratio=0.25, always_keep=(0,))
    _, routes = enc.forward_routes(torch.randn(2, 9, 16))
    assert len(routes) == 3 and all(isinstance(r, Routes) and r.num_selected == 3 for r in routes)


def test_a_routing_policy_must_implement_the_interface():
    from routevit.layers import GlobalTopK, RoutingPolicy

    class Incomplete(RoutingPolicy):
        def forward(self, scores):
            return GlobalTopK()(scores)

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()
