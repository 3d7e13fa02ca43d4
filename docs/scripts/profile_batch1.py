"""Where a forward pass of blvit_deit_b_t and timm's DeiT-B spends its time, op by op.

Usage: ``python docs/scripts/profile_batch1.py [--batch-size 1] [--passes 5]``

Both models are profiled with torch.profiler after warm-up, in alternation, in one process.
Linear layers are grouped by their matmul shape as executed (``A rows x inner -> B columns``
of ``addmm(bias, A, B)``; the P path's FFN runs as ``W @ x^T``, so its rows are the weight's)
and reported with the achieved GMAC/s, so small-matrix efficiency shows next to the MAC count.

Last, the fixed cost per forward pass that does not shrink with the MACs (Python, op
dispatch, a parallel region per op): both models rebuilt at width 24 with the same depth,
heads, layer layout and tokens, where the arithmetic is negligible, and timed in alternation.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import timm
import torch
from torch.profiler import ProfilerActivity, profile

import routevit

GROUPS = {
    "aten::addmm": "Linear (addmm)",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "attention (CPU flash)",
    "aten::gelu": "GELU",
    "aten::native_layer_norm": "LayerNorm",
    "aten::copy_": "copies",
    "aten::index_select": "gather / scatter",
    "aten::index_put_": "gather / scatter",
    "aten::index_add_": "gather / scatter",
    "aten::gather": "gather / scatter",
    "aten::scatter_add_": "gather / scatter",
    "aten::topk": "routing (topk, sort)",
    "aten::sort": "routing (topk, sort)",
}


def profile_model(model: torch.nn.Module, x: torch.Tensor, passes: int):
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(passes):
            model(x)
    groups: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    gemms: dict[tuple[int, int, int], list[float]] = defaultdict(lambda: [0.0, 0])
    total = 0.0
    for event in prof.key_averages(group_by_input_shape=True):
        ms = event.self_cpu_time_total / 1e3 / passes
        total += ms
        name = GROUPS.get(event.key, "other")
        groups[name][0] += ms
        groups[name][1] += event.count / passes
        if event.key == "aten::addmm":
            _, mat, weight_t = event.input_shapes[:3]
            rows = mat[0]
            shape = (rows, mat[1], weight_t[1])
            gemms[shape][0] += ms
            gemms[shape][1] += event.count / passes
    return total, groups, gemms


def fixed_cost_ms(model_name: str, baseline: str, batch_size: int, rounds: int = 50) -> dict[str, float]:
    """Median ms per forward of both models at width 24 (3 heads; E path width 6)."""
    torch.manual_seed(0)
    tiny = {
        model_name: routevit.create_model(
            model_name, embed_dim=24, num_heads=3, little_dim=6, little_heads=3
        ),
        baseline: timm.create_model(baseline, pretrained=False, embed_dim=24, num_heads=3),
    }
    x = torch.randn(batch_size, 3, 224, 224)
    times: dict[str, list[float]] = {name: [] for name in tiny}
    with torch.inference_mode():
        for model in tiny.values():
            model.eval()
            model(x)
        for _ in range(rounds):
            for name, model in tiny.items():
                start = time.perf_counter()
                model(x)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--model", default="blvit_deit_b_t")
    parser.add_argument("--baseline", default="deit_base_patch16_224")
    args = parser.parse_args()
    torch.manual_seed(0)
    models = {
        args.model: routevit.create_model(args.model).eval(),
        f"timm {args.baseline}": timm.create_model(args.baseline, pretrained=False).eval(),
    }
    x = torch.randn(args.batch_size, 3, 224, 224)
    with torch.inference_mode():
        for model in models.values():
            for _ in range(3):
                model(x)
    for name, model in models.items():
        total, groups, gemms = profile_model(model, x, args.passes)
        print(f"\n## {name}: {total:.1f} ms per forward (self CPU time, batch {args.batch_size})")
        print("| op | ms | calls |\n|---|---:|---:|")
        for group, (ms, calls) in sorted(groups.items(), key=lambda kv: -kv[1][0]):
            print(f"| {group} | {ms:.1f} | {calls:.0f} |")
        print("\n| matmul rows x inner -> columns | calls | ms | GMAC/s |\n|---|---:|---:|---:|")
        for (m, k, n), (ms, calls) in sorted(gemms.items(), key=lambda kv: -kv[1][0]):
            gmacs = m * k * n * calls / 1e9
            print(f"| {m} x {k} -> {n} | {calls:.0f} | {ms:.1f} | {gmacs / (ms / 1e3):.1f} |")

    fixed = fixed_cost_ms(args.model, args.baseline, args.batch_size)
    print(f"\n## fixed cost per forward (width-24 twins, batch {args.batch_size})")
    for name, ms in fixed.items():
        print(f"- {name}: {ms:.1f} ms")


if __name__ == "__main__":
    main()
