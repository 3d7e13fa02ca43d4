"""EViT, ToMe and early prune (routevit.baselines) against plain reference computations: per-sample
loops, explicit softmax attention and an explicit greedy bipartite matching, on tiny timm ViTs."""

from __future__ import annotations

import copy
import math
from functools import cache

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from routevit import flops
from routevit.baselines import LayerTokens, patch_early_prune, patch_evit, patch_tome, token_counts
from routevit.baselines._common import attention_residual
from routevit.baselines.early_prune import early_prune_select
from routevit.baselines.evit import evit_select
from routevit.baselines.tome import tome_merge

timm = pytest.importorskip("timm")
from timm.models.vision_transformer import Block  # noqa: E402

DIM = 48
IMG = (3, 32, 32)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these tiny models gain nothing from more on the shared 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_vit(depth: int = 4, seed: int = 0, **kwargs: object) -> nn.Module:
    """A fresh copy of a tiny random timm ViT (64 patches + CLS, width 48, 3 heads)."""
    return copy.deepcopy(_tiny_vit(depth, seed, tuple(sorted(kwargs.items()))))


@cache
def _tiny_vit(depth: int, seed: int, kwargs: tuple) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=4, embed_dim=DIM, depth=depth, num_heads=3,
        num_classes=10, **dict(kwargs),
    ).eval()


def images(batch: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, *IMG, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- references


def ref_attention(block: nn.Module, x: torch.Tensor, size: torch.Tensor | None = None):
    """One sample ``x`` (N, C): ``x + attn(norm1(x))`` with explicit softmax attention (``+ log size``
    on the logits when given), the probabilities (H, N, N) and the keys (H, N, D)."""
    attn = block.attn
    n, c = x.shape
    q, k, v = attn.qkv(block.norm1(x)).reshape(n, 3, attn.num_heads, attn.head_dim).permute(1, 2, 0, 3)
    logits = q @ k.transpose(-1, -2) * attn.head_dim**-0.5
    if size is not None:
        logits = logits + size.log()[None, None, :]
    probs = logits.softmax(dim=-1)
    out = (probs @ v).transpose(0, 1).reshape(n, c)
    return x + attn.proj(out), probs, k


def ref_mlp(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x + block.mlp(block.norm2(x))


def ref_embed(model: nn.Module, img: torch.Tensor) -> torch.Tensor:
    return model._pos_embed(model.patch_embed(img[None]))[0]


def ref_head(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.head(model.norm(x)[0])  # the class token of one sample (N, C)


def ref_evit_select(x: torch.Tensor, cls: torch.Tensor, keep: int):
    """One sample: x (N, C), cls (N - 1,) attention to the patches."""
    ranked = sorted(range(len(cls)), key=lambda j: -cls[j].item())
    kept, rest = sorted(ranked[:keep]), ranked[keep:]
    total = sum(cls[j] for j in rest)
    fused = sum(cls[j] / total * x[1 + j] for j in rest)
    return torch.cat([x[:1], x[[1 + j for j in kept]], fused[None]]), kept


def ref_bipartite_merge(x: torch.Tensor, size: torch.Tensor, metric: torch.Tensor, r: int):
    """One sample, greedy and explicit: x (N, C), size (N,), metric (N, D) -> merged x and sizes."""
    a_pos, b_pos = list(range(0, len(x), 2)), list(range(1, len(x), 2))
    edges = []
    for a in a_pos[1:]:  # the class token (position 0) never merges
        sims = [torch.dot(metric[a], metric[b]) / (metric[a].norm() * metric[b].norm()) for b in b_pos]
        best = max(range(len(b_pos)), key=lambda j: sims[j].item())
        edges.append((sims[best].item(), a, b_pos[best]))
    edges.sort(key=lambda e: -e[0])
    merged = {a: b for _, a, b in edges[:r]}
    rows, sizes = [], []
    for a in a_pos:
        if a not in merged:
            rows.append(x[a])
            sizes.append(size[a])
    for b in b_pos:
        group = [b] + [a for a, dst in merged.items() if dst == b]
        total = sum(size[i] for i in group)
        rows.append(sum(size[i] * x[i] for i in group) / total)
        sizes.append(total)
    return torch.stack(rows), torch.stack(sizes)


# ----------------------------------------------------------------------------- identity


@pytest.mark.parametrize(
    "patch",
    [
        lambda m: patch_evit(m, 1.0, (1, 2, 3, 4)),
        lambda m: patch_tome(m, 0),
        lambda m: patch_tome(m, [0, 0, 0, 0]),
        lambda m: patch_early_prune(m, 1.0, (1, 3)),
    ],
    ids=["evit", "tome", "tome_list", "early_prune"],
)
def test_no_reduction_is_timm(patch) -> None:
    vanilla = tiny_vit()
    x = images(3)
    with torch.no_grad():
        expected = vanilla(x)
        got = patch(copy.deepcopy(vanilla))(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_state_dict_keys_and_timm_checkpoint_load() -> None:
    vanilla = tiny_vit()
    for patched in (patch_evit(tiny_vit(seed=5), 0.5, (2,)), patch_tome(tiny_vit(seed=5), 4),
                    patch_early_prune(tiny_vit(seed=5), 0.5, 1)):
        assert list(patched.state_dict()) == list(vanilla.state_dict())
        patched.load_state_dict(vanilla.state_dict())  # strict
        for key, value in vanilla.state_dict().items():
            assert torch.equal(patched.state_dict()[key], value)
        assert isinstance(patched.blocks[0] if not hasattr(patched.blocks[1], "_baseline")
                          else patched.blocks[1], Block)


# ----------------------------------------------------------------------------- EViT


def test_evit_select_matches_reference() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 17, 8, generator=gen)
    attn = torch.randn(3, 16, generator=gen).softmax(-1)
    out, kept = evit_select(x, attn, 5)
    assert out.shape == (3, 7, 8)
    for i in range(3):
        ref, ref_kept = ref_evit_select(x[i], attn[i], 5)
        assert kept[i].tolist() == ref_kept
        torch.testing.assert_close(out[i], ref, atol=1e-6, rtol=1e-6)
        assert torch.equal(out[i, 0], x[i, 0])


def test_evit_forward_matches_reference() -> None:
    model = patch_evit(tiny_vit(), 0.5, (2, 3))
    x = images(2)
    with torch.no_grad():
        got = model(x)
        for i in range(2):
            t = ref_embed(model, x[i])
            for layer, block in enumerate(model.blocks, start=1):
                t, probs, _ = ref_attention(block, t)
                if layer in (2, 3):
                    keep = math.ceil(0.5 * (len(t) - 1))
                    t, _ = ref_evit_select(t, probs[:, 0, 1:].mean(0), keep)
                t = ref_mlp(block, t)
            torch.testing.assert_close(got[i], ref_head(model, t), atol=1e-5, rtol=1e-5)
    assert [tuple(c) for c in token_counts(model)] == [(65, 65, 65), (65, 34, 34), (34, 19, 19), (19, 19, 19)]


# ----------------------------------------------------------------------------- ToMe


@pytest.mark.parametrize("r", [1, 3, 6])
def test_tome_merge_matches_naive_matching(r: int) -> None:
    gen = torch.Generator().manual_seed(r)
    x = torch.randn(2, 13, 6, generator=gen)
    size = torch.randint(1, 5, (2, 13, 1), generator=gen).float()
    metric = torch.randn(2, 13, 5, generator=gen)
    out, out_size = tome_merge(x, size, metric, r)
    assert out.shape == (2, 13 - r, 6) and out_size.shape == (2, 13 - r, 1)
    for i in range(2):
        ref, ref_size = ref_bipartite_merge(x[i], size[i, :, 0], metric[i], r)
        torch.testing.assert_close(out[i], ref, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(out_size[i, :, 0], ref_size)
        torch.testing.assert_close(out[i, 0], x[i, 0])  # the class token stays first, unmerged
    assert torch.equal(out_size.sum(1), size.sum(1))


def tome_reference(model: nn.Module, img: torch.Tensor, rs: list[int], proportional: bool = True):
    t = ref_embed(model, img)
    size = torch.ones(len(t))
    for layer, block in enumerate(model.blocks):
        t, _, k = ref_attention(block, t, size if proportional and layer > 0 else None)
        r = min(rs[layer], (len(t) - 1) // 2)
        t, size = ref_bipartite_merge(t, size, k.mean(0), r)
        t = ref_mlp(block, t)
    return ref_head(model, t)


def test_tome_forward_matches_reference() -> None:
    rs = [20, 40]  # the second is clipped to (45 - 1) // 2 = 22
    model = patch_tome(tiny_vit(depth=2), rs)
    assert token_counts(model) == [LayerTokens(65, 45, 45), LayerTokens(45, 23, 23)]
    x = images(2)
    with torch.no_grad():
        got = model(x)
        for i in range(2):
            torch.testing.assert_close(got[i], tome_reference(model, x[i], rs), atol=1e-5, rtol=1e-5)
            # proportional attention matters: without log(size) the output is different
            plain = tome_reference(model, x[i], rs, proportional=False)
            assert (got[i] - plain).abs().max() > 1e-4


def test_tome_sizes_travel_as_arguments_not_state() -> None:
    model = patch_tome(tiny_vit(depth=3), 8)
    x = images(2)
    with torch.no_grad():
        first = model(x)
        model(images(1))  # another batch size in between leaves nothing behind
        torch.testing.assert_close(model(x), first)
        tokens = model.blocks[0](model.norm_pre(model._pos_embed(model.patch_embed(x))))
        assert tokens.shape == (2, 57, DIM)  # the first block alone: every size is 1
        with pytest.raises(RuntimeError, match="needs the token sizes"):
            model.blocks[1](tokens)
        with pytest.raises(ValueError, match=r"\(B, N, 1\)"):
            model.blocks[1].forward_sized(tokens, torch.ones(2, 56, 1))
    for module in model.modules():  # no tensor kept on a module outside parameters and buffers
        assert not [k for k, v in vars(module).items() if isinstance(v, torch.Tensor)], module
    model.set_grad_checkpointing()
    with pytest.raises(RuntimeError, match="gradient checkpointing"):
        model(x)


def test_proportional_attention_is_attention_over_repeated_tokens() -> None:
    """A token of size s attends like s identical copies of itself (ToMe's proportional attention)."""
    block = tiny_vit(depth=1).blocks[0]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 7, DIM, generator=gen)
    size = torch.tensor([1.0, 3.0, 1.0, 2.0, 1.0, 4.0, 1.0])
    repeats = size.long()
    with torch.no_grad():
        got, _, _ = attention_residual(block, x, size.log()[None, None, None, :])
        expanded, _, _ = attention_residual(block, x.repeat_interleave(repeats, dim=1))
        first = torch.cumsum(repeats, 0) - repeats  # the first copy of each token
        torch.testing.assert_close(got[0], expanded[0, first], atol=1e-5, rtol=1e-5)
        unbiased, _, _ = attention_residual(block, x)
        assert (unbiased - got).abs().max() > 1e-3


# ----------------------------------------------------------------------------- early prune


def test_early_prune_select_keeps_cls_and_top_tokens() -> None:
    attn = torch.tensor([[0.0, 0.1, 0.5, 0.05, 0.3, 0.05], [0.9, 0.01, 0.04, 0.03, 0.015, 0.005]])
    assert early_prune_select(attn, 3).tolist() == [[0, 2, 4], [0, 2, 3]]
    assert early_prune_select(attn, 1).tolist() == [[0], [0]]


def test_early_prune_matches_vanilla_blocks_on_gathered_tokens() -> None:
    vanilla = tiny_vit()
    model = patch_early_prune(copy.deepcopy(vanilla), 0.25, (1, 3))
    assert [tuple(c) for c in token_counts(model)] == [(65, 65, 17), (17, 17, 17), (17, 17, 5), (5, 5, 5)]
    x = images(2)
    with torch.no_grad():
        got = model(x)
        for i in range(2):
            t = ref_embed(vanilla, x[i])
            for layer, block in enumerate(vanilla.blocks, start=1):
                _, probs, _ = ref_attention(block, t)
                t = block(t[None])[0]  # timm's own block
                if layer in (1, 3):
                    cls = probs[:, 0].mean(0)
                    keep = math.ceil(0.25 * len(t))
                    top = sorted(range(1, len(t)), key=lambda j: -cls[j].item())[: keep - 1]
                    t = t[[0] + sorted(top)]
            torch.testing.assert_close(got[i], ref_head(vanilla, t), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- MACs


def hand_macs(counts: list[LayerTokens], dim: int = DIM, classes: int = 10) -> int:
    """Linear layers only: qkv + proj on the attention tokens, the 4x MLP on the MLP tokens."""
    embed = 64 * dim * 3 * 4 * 4
    return embed + sum((4 * c.attention + 8 * c.mlp) * dim * dim for c in counts) + dim * classes


def test_macs_follow_token_counts() -> None:
    vanilla = flops.count(tiny_vit(), IMG)
    assert round(vanilla * 1e9) == hand_macs([LayerTokens(65, 65, 65)] * 4)
    # EViT keep 0.5 in layers 2 and 4: 65 -> 34 tokens after layer 2's attention, 34 -> 19 at layer 4
    evit = patch_evit(tiny_vit(), 0.5, (2, 4))
    expected = 64 * DIM * 48 + DIM * DIM * (12 * 65 + 4 * 65 + 8 * 34 + 12 * 34 + 4 * 34 + 8 * 19) + DIM * 10
    assert round(flops.count(evit, IMG) * 1e9) == expected
    vanilla_all = flops.count(tiny_vit(), IMG, include_attention=True)
    for model in (evit, patch_tome(tiny_vit(), 8), patch_early_prune(tiny_vit(), 0.25, 1)):
        macs = flops.count(model, IMG)
        assert macs < vanilla
        assert round(macs * 1e9) == hand_macs(token_counts(model))
        # the attention matmuls see the reduced shapes too
        assert flops.count(model, IMG, include_attention=True) < vanilla_all


# ----------------------------------------------------------------------------- training, batches


PATCHES = {
    "evit": lambda m: patch_evit(m, 0.5, (1, 3)),
    "tome": lambda m: patch_tome(m, [8, 4, 12, 2]),
    "early_prune": lambda m: patch_early_prune(m, 0.3, 2),
}


@cache
def patched(name: str) -> nn.Module:
    return PATCHES[name](tiny_vit(seed=7))


@pytest.mark.parametrize("name", sorted(PATCHES))
def test_trains_and_runs_without_grad(name: str) -> None:
    model = PATCHES[name](tiny_vit(seed=2, drop_path_rate=0.1)).train()
    logits = model(images(3))
    nn.functional.cross_entropy(logits, torch.tensor([1, 2, 3])).backward()
    for key, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), key
        assert param.grad.abs().sum() > 0, key
    model.eval()
    with torch.no_grad():
        for batch in (1, 5):
            assert model(images(batch)).shape == (batch, 10)


@settings(max_examples=8, deadline=None)
@given(name=st.sampled_from(sorted(PATCHES)), batch=st.integers(2, 3), seed=st.integers(0, 100))
def test_a_sample_does_not_depend_on_its_batch(name: str, batch: int, seed: int) -> None:
    model = patched(name)
    x = images(batch, seed)
    with torch.no_grad():
        together = model(x)
        for i in range(batch):
            torch.testing.assert_close(together[i : i + 1], model(x[i : i + 1]), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("keep_rate", [0.0, -0.1, 1.5])
def test_bad_keep_rate(keep_rate: float) -> None:
    with pytest.raises(ValueError, match="keep_rate"):
        patch_evit(tiny_vit(depth=2), keep_rate, (1,))
    with pytest.raises(ValueError, match="keep_rate"):
        patch_early_prune(tiny_vit(depth=2), keep_rate, 1)


def test_bad_keep_rate_type() -> None:
    with pytest.raises(TypeError, match="keep_rate"):
        patch_evit(tiny_vit(depth=2), "0.5", (1,))  # type: ignore[arg-type]


@pytest.mark.parametrize("layers", [(0,), (3,), (1, 1), (-1,)])
def test_bad_layers(layers: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"prune_layers.*\[1, 2\]|distinct"):
        patch_evit(tiny_vit(depth=2), 0.5, layers)
    with pytest.raises(ValueError, match=r"prune_after.*\[1, 2\]|distinct"):
        patch_early_prune(tiny_vit(depth=2), 0.5, layers)


def test_bad_r() -> None:
    with pytest.raises(ValueError, match="r must be >= 0"):
        patch_tome(tiny_vit(depth=2), -1)
    with pytest.raises(ValueError, match="r must be >= 0"):
        patch_tome(tiny_vit(depth=2), [2, -1])
    with pytest.raises(ValueError, match="one count per block"):
        patch_tome(tiny_vit(depth=2), [2, 2, 2])
    with pytest.raises(TypeError, match="r must"):
        patch_tome(tiny_vit(depth=2), 2.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "model, expected",
    [
        (nn.Sequential(nn.Linear(3, 3)), "got Sequential"),
        (lambda: tiny_vit(depth=1, reg_tokens=2), "prefix tokens"),
        (lambda: tiny_vit(depth=1, class_token=False, global_pool="avg"), "no class token"),
        (lambda: tiny_vit(depth=1, global_pool="avg"), "global_pool='avg'"),
        (lambda: patch_tome(tiny_vit(depth=1), 2), "already patched"),
    ],
    ids=["not_vit", "registers", "no_cls", "avg_pool", "patched_twice"],
)
def test_refuses_other_models(model, expected: str) -> None:
    model = model() if callable(model) and not isinstance(model, nn.Module) else model
    for patch in (lambda m: patch_evit(m, 0.5, (1,)), lambda m: patch_tome(m, 2),
                  lambda m: patch_early_prune(m, 0.5, 1)):
        with pytest.raises(ValueError, match=expected):
            patch(model)
    if isinstance(model, nn.Sequential):
        with pytest.raises(ValueError, match="expects a timm VisionTransformer"):
            patch_evit(model, 0.5, (1,))


def test_refuses_attention_masks() -> None:
    model = patch_evit(tiny_vit(depth=2), 0.5, (1,))
    with pytest.raises(ValueError, match="attention mask"):
        model.blocks[0](torch.randn(1, 65, DIM), attn_mask=torch.zeros(65, 65))


def test_patch_picks_a_peer_by_name() -> None:
    from routevit.baselines import patch, patch_evit

    x = torch.randn(2, 3, 32, 32)
    a = patch(_vit_for_patch(), "evit", keep_rate=0.5, prune_layers=[2])
    b = patch_evit(_vit_for_patch(), keep_rate=0.5, prune_layers=[2])
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    with pytest.raises(ValueError, match="valid methods are"):
        patch(_vit_for_patch(), "dynamicvit")


def _vit_for_patch() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, embed_dim=48, depth=3,
                             num_heads=3, num_classes=10).eval()  # fmt: skip
