"""Why few-row matmuls are slow inside a model: the weights come from memory, not from cache.

Usage: ``python docs/scripts/weight_bandwidth.py``

For the P path's matmul shapes at batch 1 (50 selected tokens) and a vanilla layer's (197
tokens), fp32 and bf16, it times ``F.linear`` two ways in one process: *hot* (the same weight
every call, as a micro-benchmark usually does: it stays in cache) and *cold* (24 different
weights in turn, 226 MB in fp32, as in a forward pass where every weight is read once). It prints
GMAC/s and the weight bytes streamed per second. A matmul whose cold speed is well below its hot
speed pays for bringing its weights in once per call; more MACs per weight byte (more rows, i.e.
a larger batch) hide that cost.

Last, the ceiling: the same 24 weights only read (``torch.sum`` over each, no matmul), in GB/s,
so the weight bytes of a whole model give a floor under its batch-1 forward time, and a cold
matmul far below that rate is held back by the GEMM, not by the memory (docs/results.md).
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

SHAPES = ((50, 768, 3072), (50, 3072, 768), (50, 768, 768), (197, 768, 3072))


def main() -> None:
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| dtype | rows x in -> out | cold ms | cold GMAC/s | weights GB/s (cold) | hot ms | hot GMAC/s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for dtype in (torch.float32, torch.bfloat16):
        for m, k, n in SHAPES:
            weights = [torch.randn(n, k, dtype=dtype) for _ in range(24)]
            bias, x = torch.randn(n, dtype=dtype), torch.randn(m, k, dtype=dtype)

            def cold(weights=weights, bias=bias, x=x) -> None:
                for w in weights:
                    F.linear(x, w, bias)

            for _ in range(2):
                cold()
            runs = []
            for _ in range(5):
                t = time.perf_counter()
                cold()
                runs.append((time.perf_counter() - t) / len(weights))
            cold_s = statistics.median(runs)
            hot = []
            for _ in range(30):
                t = time.perf_counter()
                F.linear(x, weights[0], bias)
                hot.append(time.perf_counter() - t)
            hot_s = statistics.median(hot[5:])
            macs, nbytes = m * k * n, n * k * weights[0].element_size()
            name = str(dtype).split(".")[1]
            print(f"| {name} | {m} x {k} -> {n} | {1e3 * cold_s:.3f} | {macs / cold_s / 1e9:.0f} "
                  f"| {nbytes / cold_s / 1e9:.1f} | {1e3 * hot_s:.3f} "
                  f"| {macs / hot_s / 1e9:.0f} |")  # fmt: skip

    print("\n| dtype | weights read, MB | read-only GB/s (median of 5) |\n|---|---:|---:|")
    for dtype in (torch.float32, torch.bfloat16):
        weights = [torch.randn(3072, 768, dtype=dtype) for _ in range(24)]
        nbytes = sum(w.numel() * w.element_size() for w in weights)
        runs = []
        for _ in range(7):
            t = time.perf_counter()
            for w in weights:
                w.sum()
            runs.append(time.perf_counter() - t)
        rate = nbytes / statistics.median(runs[2:]) / 1e9
        print(f"| {str(dtype).split('.')[1]} | {nbytes / 1e6:.0f} | {rate:.1f} |")


if __name__ == "__main__":
    main()
