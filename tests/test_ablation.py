"""The Table 3 ablation switches (selector, semi_cross, P-only layouts) against explicit math."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import routevit
from routevit import flops
from routevit.baselines.ablation import TABLE3_STEPS, table3_config, table3_overrides
from routevit.layers import BigLittleBlock, ClsAttentionScorer, PerformanceBlock, TopKDispatcher
from routevit.layers.encoder import BigLittleEncoder, Schedule
from routevit.models.vit import BigLittleViT, BigLittleViTConfig

timm = pytest.importorskip("timm")
from _vit_helpers import single_thread, timm_vit  # noqa: E402, F401

SMALL = dict(
    img_size=32, patch_size=4, embed_dim=96, num_heads=3, little_dim=24, little_heads=1,
    depth=6, num_classes=10, keep_ratio=0.25,
)


def _randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights everywhere (norms and alpha too), so every term of the math is exercised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen) + (1.0 if p.dim() == 1 else 0.0))
    return module


def _ln(x, norm):
    w, b = norm.weight.to(x.dtype), norm.bias.to(x.dtype)
    return F.layer_norm(x, norm.normalized_shape, w, b, norm.eps)


def _reference_cls_scores(x, norm, qkv, heads, cls=0):
    """Explicit per-head softmax of the CLS query against every key, averaged over heads."""
    c = x.shape[-1]
    d = c // heads
    xn = _ln(x.double(), norm)
    w, b = qkv.weight.double(), qkv.bias.double()
    q = xn[:, cls] @ w[:c].T + b[:c]  # (B, C)
    k = xn @ w[c : 2 * c].T + b[c : 2 * c]  # (B, N, C)
    per_head = []
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        logits = torch.einsum("bd,bnd->bn", q[:, sl], k[:, :, sl]) / d**0.5
        per_head.append(logits.softmax(dim=-1))
    return torch.stack(per_head).mean(0)


def _vanilla_attention(xn, attn, heads):
    """Explicit multi-head self-attention of one sample's tokens ``(T, C)`` among themselves."""
    c = xn.shape[-1]
    w, b = attn.qkv.weight, attn.qkv.bias
    q, k, v = (xn @ w[i * c : (i + 1) * c].T + b[i * c : (i + 1) * c] for i in range(3))
    d = c // heads
    out = []
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        out.append(torch.softmax(q[:, sl] @ k[:, sl].T / d**0.5, dim=-1) @ v[:, sl])
    return torch.cat(out, dim=-1) @ attn.proj.weight.T + attn.proj.bias


def _mlp(x, mlp):
    return F.gelu(x @ mlp.fc1.weight.T + mlp.fc1.bias) @ mlp.fc2.weight.T + mlp.fc2.bias


# --- the CLS-attention selector -----------------------------------------------------------


def test_cls_attention_scores_and_selection_match_explicit_math():
    torch.manual_seed(0)
    block = _randomize(PerformanceBlock(32, 4))
    x = torch.randn(3, 13, 32, requires_grad=True)
    scores = ClsAttentionScorer()(x, block.norm1, block.attn.qkv, 4)
    reference = _reference_cls_scores(x.detach(), block.norm1, block.attn.qkv, 4)
    torch.testing.assert_close(scores.double(), reference, rtol=1e-5, atol=1e-6)
    assert not scores.requires_grad  # ranking only: no gradient flows to the scores
    assert scores.dtype == x.dtype and torch.allclose(scores.sum(-1), torch.ones(3))

    routes = TopKDispatcher(0.3, always_keep=(0,))(scores)
    k = 4  # ceil(0.3 * 13)
    for b in range(3):
        others = reference[b, 1:].topk(k - 1).indices + 1
        expected = sorted([0, *others.tolist()])
        assert routes.indices[b].tolist() == expected


def test_encoder_scores_with_the_next_routed_layers_p_block():
    """Prediction after layer 1; layer 2 is full, so the scores use layer 3's P-block weights."""
    torch.manual_seed(0)
    schedule = Schedule(("full", "full", "big_little", "performance"), (1, 3))
    enc = _randomize(
        BigLittleEncoder(32, 4, 8, 2, schedule, keep_ratio=0.3, always_keep=(0,), selector="cls_attention")
    ).eval()
    assert len(enc.routers) == 0 and not any("alpha" in n for n, _ in enc.named_parameters())
    x = torch.randn(2, 11, 32)
    _, routes = enc.forward_routes(x)
    x1 = enc.blocks[0](x)
    p3 = enc.blocks[2].performance
    torch.testing.assert_close(
        routes[0].scores.double(), _reference_cls_scores(x1, p3.norm1, p3.attn.qkv, 4), rtol=1e-5, atol=1e-6
    )
    x3 = enc.blocks[2](enc.blocks[1](x1), routes[0])
    p4 = enc.blocks[3]
    torch.testing.assert_close(
        routes[1].scores.double(), _reference_cls_scores(x3, p4.norm1, p4.attn.qkv, 4), rtol=1e-5, atol=1e-6
    )


@settings(max_examples=20, deadline=None)
@given(
    batch=st.integers(1, 5),
    tokens=st.integers(2, 20),
    keep=st.floats(0.05, 1.0),
    seed=st.integers(0, 2**16),
)
def test_cls_selection_is_batch_independent_and_keeps_cls(batch, tokens, keep, seed):
    gen = torch.Generator().manual_seed(seed)
    block = PerformanceBlock(16, 2)
    x = torch.randn(batch, tokens, 16, generator=gen)
    scorer, dispatcher = ClsAttentionScorer(), TopKDispatcher(keep, always_keep=(0,))
    together = dispatcher(scorer(x, block.norm1, block.attn.qkv, 2))
    idx = together.indices
    assert (idx[:, 0] == 0).all()  # CLS kept (and sorted first)
    assert (idx[:, 1:] > idx[:, :-1]).all() and int(idx.max()) < tokens
    for b in range(batch):
        alone = dispatcher(scorer(x[b : b + 1], block.norm1, block.attn.qkv, 2))
        assert torch.equal(alone.indices[0], idx[b])
        torch.testing.assert_close(alone.scores[0], together.scores[b])


# --- semi_cross=False ---------------------------------------------------------------------


@pytest.mark.parametrize("score_scaling", [True, False])
def test_no_semi_cross_p_block_equals_attention_on_gathered_tokens(score_scaling):
    torch.manual_seed(0)
    block = _randomize(PerformanceBlock(32, 4, semi_cross=False, score_scaling=score_scaling)).eval()
    x = torch.randn(3, 12, 32)
    scores = torch.rand(3, 12).softmax(-1)
    routes = TopKDispatcher(0.4, always_keep=(0,))(scores)
    out = block(x, routes)
    expected = x.clone()
    for b in range(3):
        rows = routes.indices[b]
        scale_a = scale_m = torch.ones(len(rows), 1)
        if score_scaling:
            s = scores[b, rows].unsqueeze(-1)
            scale_a, scale_m = block.alpha_attn * s + 1, block.alpha_mlp * s + 1
        xs = x[b, rows]
        xs = xs + scale_a * _vanilla_attention(_ln(xs, block.norm1), block.attn, 4)
        xs = xs + scale_m * _mlp(_ln(xs, block.norm2), block.mlp)
        expected[b, rows] = xs
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("score_scaling", [True, False])
def test_no_semi_cross_at_keep_ratio_1_is_a_timm_block(score_scaling):
    torch.manual_seed(0)
    norm = partial(nn.LayerNorm, eps=1e-6)
    ref = _randomize(timm.models.vision_transformer.Block(32, 4, qkv_bias=True, norm_layer=norm)).eval()
    ours = PerformanceBlock(32, 4, semi_cross=False, score_scaling=score_scaling).eval()
    missing, unexpected = ours.load_state_dict(ref.state_dict(), strict=False)
    assert not unexpected and set(missing) == ({"alpha_attn", "alpha_mlp"} if score_scaling else set())
    x = torch.randn(2, 9, 32)
    routes = TopKDispatcher(1.0)(torch.rand(2, 9).softmax(-1))
    torch.testing.assert_close(ours(x, routes), ref(x), rtol=1e-5, atol=1e-5)


def test_no_semi_cross_is_refused_for_windowed_attention():
    with pytest.raises(ValueError, match="semi_cross=False"):
        PerformanceBlock(16, 2, rel_pos_size=(4, 4), semi_cross=False)
    with pytest.raises(ValueError, match="semi_cross=False"):
        BigLittleBlock(16, 2, 8, 1, rel_pos_size=(4, 4), semi_cross=False)
    from routevit.layers import WindowGrid

    block = PerformanceBlock(16, 2, semi_cross=False)
    x = torch.randn(1, 16, 16)
    routes = TopKDispatcher(0.5, group_size=4)(torch.rand(1, 16))
    with pytest.raises(ValueError, match="global attention only"):
        block(x, routes, grid=WindowGrid(4, 4, 2))
    with pytest.raises(TypeError, match="semi_cross must be a bool"):
        PerformanceBlock(16, 2, semi_cross="no")


# --- the Table 3 steps --------------------------------------------------------------------


def _model(step: str) -> BigLittleViT:
    torch.manual_seed(0)
    return routevit.create_model("blvit_deit_s_t", **SMALL, **table3_overrides(step))


def test_table3_config_fields_and_layouts():
    base = BigLittleViTConfig(**SMALL)
    expected = {
        "early_prune": ("b_t_p_only", "cls_attention", False),
        "e_block": ("b_t", "cls_attention", False),
        "predictor": ("b_t", "router", False),
        "semi_ca": ("b_t", "router", True),
    }
    for step in TABLE3_STEPS:
        cfg = table3_config(step, base)
        assert (cfg.layout, cfg.selector, cfg.semi_cross) == expected[step]
        assert cfg.embed_dim == 96 and cfg.keep_ratio == 0.25
    assert table3_config("semi_ca", base) == base  # the last architecture row is the paper's model
    early = table3_config("early_prune", base).schedule
    assert early == base.schedule.performance_only()
    assert early.kinds == ("full",) + ("performance",) * 5 and early.predict_after == (1, 4)
    custom = _with_schedule(base, Schedule(("full", "big_little", "performance"), (1,)))
    p_only = Schedule(("full", "performance", "performance"), (1,))
    assert table3_config("early_prune", custom).layout == p_only
    assert table3_config("predictor").layout == "b_t"  # default base: the paper's B+T


def _with_schedule(cfg: BigLittleViTConfig, schedule: Schedule) -> BigLittleViTConfig:
    return replace(cfg, layout=schedule, depth=schedule.depth)


def test_every_step_trains_routes_and_is_counted(single_thread):  # noqa: F811
    macs = {}
    for step in TABLE3_STEPS:
        model = _model(step).train()
        x = torch.randn(3, 3, 32, 32)
        model(x).logsumexp(-1).sum().backward()
        no_grad = [n for n, p in model.named_parameters() if p.grad is None]
        assert not no_grad, f"{step}: parameters without a gradient: {no_grad}"
        has_routers = any(n.startswith("encoder.routers.") for n, _ in model.named_parameters())
        assert has_routers == (step in ("predictor", "semi_ca"))
        model.eval()
        with torch.no_grad():
            feats, routes = model.forward_features_with_routes(x[:1])
            assert feats.shape == (1, 65, 96) and len(routes) == 2
            assert model.route_masks(routes).shape == (1, 2, 8, 8)
            assert all(r.num_selected == 17 for r in routes)  # ceil(0.25 * 65)
            model.set_keep_ratio(0.5)
            assert all(r.num_selected == 33 for r in model.forward_features_with_routes(x)[1])
            model.set_keep_ratio(0.25)
        macs[step] = flops.count(model, (3, 32, 32))
        assert macs[step] == pytest.approx(flops.analytic_vit(model.config), rel=1e-9)
        assert flops.count(model, (3, 32, 32), include_attention=True) == pytest.approx(
            flops.analytic_vit(model.config, include_attention=True), rel=1e-9
        )
    assert macs["early_prune"] < macs["e_block"] < macs["semi_ca"]
    assert macs["predictor"] < macs["semi_ca"]
    assert macs["e_block"] == pytest.approx(macs["predictor"], rel=0.01)


def test_early_prune_leaves_unselected_tokens_unchanged():
    model = _model("early_prune").eval()
    seen = {}
    model.encoder.blocks[1].register_forward_hook(lambda m, args, out: seen.update(x=args[0], out=out))
    with torch.no_grad():
        _, routes = model.forward_features_with_routes(torch.randn(2, 3, 32, 32))
    assert isinstance(model.encoder.blocks[1], PerformanceBlock)
    mask = routes[0].mask()
    assert torch.equal(seen["out"][~mask], seen["x"][~mask])
    assert not torch.allclose(seen["out"][mask], seen["x"][mask])


@pytest.mark.parametrize("step", TABLE3_STEPS)
def test_timm_weights_load_for_every_step(step, single_thread):  # noqa: F811
    from routevit.interop.timm import load_timm_weights

    vit = timm_vit("deit_tiny_patch16_224", img_size=32, patch_size=4, embed_dim=96, depth=6, num_heads=3,
                   num_classes=10)
    model = _model(step)
    report = load_timm_weights(model, vit.state_dict(), strict=True)
    assert report.ok and not report.missing and not report.unexpected
    routers = {n for n in report.fresh if n.startswith("encoder.routers.")}
    assert bool(routers) == (step in ("predictor", "semi_ca"))  # no routers: nothing to report
    if step == "early_prune":  # P-only, no semi-cross, everything selected: the vanilla ViT itself
        model.set_keep_ratio(1.0)
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(model.eval()(x), vit(x), rtol=1e-4, atol=1e-4)


def test_defaults_are_the_paper_model():
    cfg = BigLittleViTConfig()
    assert cfg.selector == "router" and cfg.semi_cross is True
    model = routevit.create_model("blvit_deit_s_t", **SMALL)
    p = model.encoder.blocks[1].performance
    assert p.semi_cross and p.score_scaling and p.alpha_attn is not None
    assert model.encoder.scorer is None and list(model.encoder.routers) == ["1", "4"]


def test_bad_values_name_the_valid_ones():
    with pytest.raises(ValueError, match=r"selector 'foo'.*'router', 'cls_attention'"):
        routevit.create_model("blvit_deit_s_t", **SMALL, selector="foo")
    with pytest.raises(ValueError, match=r"selector 'foo'.*'router', 'cls_attention'"):
        BigLittleEncoder(32, 4, 8, 2, Schedule(("full", "performance"), (1,)), selector="foo")
    with pytest.raises(ValueError, match=r"step 'foo'.*'early_prune', 'e_block', 'predictor', 'semi_ca'"):
        table3_config("foo")
    with pytest.raises(ValueError, match="semi_cross must be a bool"):
        BigLittleViTConfig(semi_cross="no")
    with pytest.raises(ValueError, match="b_t_p_only"):
        BigLittleViTConfig(layout="nope")
    with pytest.raises(ValueError, match="no routed layer follows prediction layer 2"):
        BigLittleEncoder(32, 4, 8, 2, Schedule(("full", "performance"), (1, 2)), always_keep=(0,),
                         selector="cls_attention")
    with pytest.raises(ValueError, match="must be in always_keep"):
        BigLittleEncoder(32, 4, 8, 2, Schedule(("full", "performance"), (1,)), selector="cls_attention")
    with pytest.raises(ValueError, match="Linear"):
        ClsAttentionScorer()(torch.randn(1, 4, 8), nn.LayerNorm(8), nn.Linear(8, 8), 2)
