"""Time the FFN (768 -> 3072 -> 768) as ``x @ W^T`` (Mlp.forward) and as ``W @ x^T``
(Mlp.forward_transposed) for a range of row counts, in alternation, in one process.

Usage: ``python docs/scripts/mlp_orientation.py [--rows 50,100,...] [--rounds 15]``

The numbers behind ``routevit.runtime.RuntimePolicy.transposed_mlp_max_rows``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from routevit.layers.blocks import Mlp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="50,100,150,200,256,400,600,800,1000,1100,1225,1600")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    torch.manual_seed(0)
    mlp = Mlp(768, 3072).eval()
    print("| rows | x @ W^T ms | W @ x^T ms | speed-up of W @ x^T |\n|---:|---:|---:|---:|")
    for rows in (int(r) for r in args.rows.split(",")):
        x = torch.randn(1, rows, 768)
        variants = {"forward": mlp.forward, "transposed": mlp.forward_transposed}
        times: dict[str, list[float]] = {name: [] for name in variants}
        repeats = max(2, 400 // rows)
        with torch.inference_mode():
            for fn in variants.values():
                fn(x), fn(x)
            for _ in range(args.rounds):
                for name, fn in variants.items():
                    start = time.perf_counter()
                    for _ in range(repeats):
                        fn(x)
                    times[name].append((time.perf_counter() - start) / repeats)
        plain, transposed = (statistics.median(times[name]) for name in variants)
        row = f"| {rows} | {plain * 1e3:.2f} | {transposed * 1e3:.2f} | {plain / transposed:.2f}x |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
