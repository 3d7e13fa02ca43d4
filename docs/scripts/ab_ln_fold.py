"""Experiment, not a library feature: fold the LayerNorm affines into the P path's k/v and the
E path's qkv weights so both become one 197 x 768 -> 2112 matmul on one shared normalisation
(attention sub-layer of every big.LITTLE block), and time it against the shipped model.

Usage: ``python docs/scripts/ab_ln_fold.py [--batch-size 1] [--rounds 30] [--dtype fp32|bf16]``
(alternating rounds with timm DeiT-B; bf16: weights and input cast).
The LayerNorm affines and alphas are randomised first so the fold is exercised; the script
prints the relative difference of the logits, img/s and medians of per-round ratios.
"""
import argparse
import copy
import statistics
import time
import types

import timm
import torch
import torch.nn.functional as F

import routevit
from routevit.layers.blocks import BigLittleBlock, _score_scale


def prepare(block):
    p, e = block.performance, block.efficiency
    C = p.dim
    gp, bp = p.norm1.weight, p.norm1.bias
    ge, be = e.norm1.weight, e.norm1.bias
    Wp, bqkv = p.attn.qkv.weight, p.attn.qkv.bias
    We, beq = e.attn.qkv.weight, e.attn.qkv.bias
    with torch.no_grad():
        block._W = torch.cat([Wp[C:] * gp, We * ge]).contiguous()
        block._b = torch.cat([Wp[C:] @ bp + bqkv[C:], We @ be + beq])
        block._Wq = (Wp[:C] * gp).contiguous()
        block._bq = Wp[:C] @ bp + bqkv[:C]

def fused_forward(self, x, routes, grid=None):
    p, e = self.performance, self.efficiency
    b, n, C = x.shape
    H, D = p.attn.num_heads, p.attn.head_dim
    h, d, c = e.attn.num_heads, e.attn.head_dim, e.attn.inner_dim
    xhat = F.layer_norm(x, (C,), eps=1e-6)
    proj = F.linear(xhat, self._W, self._b)  # (B, N, 2C + 3c)
    kv = proj[..., : 2 * C].view(b, n, 2, H, D).permute(2, 0, 3, 1, 4)
    q = F.linear(routes.gather(xhat), self._Wq, self._bq)
    k_sel = q.shape[1]
    q = q.view(b, k_sel, H, D).transpose(1, 2)
    p_out = F.scaled_dot_product_attention(q, kv[0], kv[1]).transpose(1, 2).reshape(b, k_sel, C)
    p_update = _score_scale(p.attn.proj(p_out), p.alpha_attn, routes.selected_scores)
    qkv = proj[..., 2 * C:].view(b, n, 3, h, d).permute(2, 0, 3, 1, 4)
    e_out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2]).transpose(1, 2).reshape(b, n, c)
    e_update = e.attn.proj(e_out)
    x = self.fuse_attn(x, p_update, e_update, routes)
    return self.fuse_mlp(x, p.mlp_branch(routes.gather(x), routes), e.mlp_branch(x), routes)

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    torch.manual_seed(0)
    ours = routevit.create_model("blvit_deit_b_t").eval()
    with torch.no_grad():  # non-trivial affines and alphas, so the fold is actually exercised
        for m in ours.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
            if isinstance(m, BigLittleBlock):
                m.performance.alpha_attn.fill_(0.3)
    ours = ours.to(dtype)
    folded = copy.deepcopy(ours)
    for m in folded.modules():
        if isinstance(m, BigLittleBlock):
            prepare(m)
            m.forward = types.MethodType(fused_forward, m)
    deit = timm.create_model("deit_base_patch16_224", pretrained=False).eval()
    x = torch.randn(args.batch_size, 3, 224, 224, dtype=dtype)
    models = {"ours": ours, "ours_folded": folded, "timm": deit.to(dtype)}
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        ref, out = ours(x), folded(x)
        print("max relative logit difference", ((out - ref).abs().max() / ref.abs().max()).item())
        for m in models.values():
            for _ in range(3):
                m(x)
        items = list(models.items())
        for r in range(args.rounds):
            for k, m in items if r % 2 == 0 else items[::-1]:
                start = time.perf_counter()
                m(x)
                times[k].append(time.perf_counter() - start)

    def ratio(slow: str, fast: str) -> float:
        return statistics.median(s / f for s, f in zip(times[slow], times[fast], strict=True))

    for k in models:
        print(k, f"{1 / statistics.median(times[k]):.2f} img/s")
    for slow, fast in [("ours", "ours_folded"), ("timm", "ours"), ("timm", "ours_folded")]:
        print(f"{slow} / {fast}: {ratio(slow, fast):.3f}")


if __name__ == "__main__":
    main()
