"""A/B timing: the P and E paths of every big.LITTLE sub-layer run concurrently, one core each.

Usage: ``python docs/scripts/ab_concurrent_paths.py [--dtype fp32|bf16] [--rounds 9] [--batch-size 1]``
(prefix ``OMP_WAIT_POLICY=PASSIVE`` to time every variant with sleeping, not spinning, OpenMP threads).

Six variants are timed in one process, in alternating order, ``--rounds`` times each:

* ``deit``: timm's ``deit_base_patch16_224`` with the process's intra-op threads (2 here);
* ``blvit``: ``blvit_deit_b_t`` as shipped: P path, then E path, each on all intra-op threads;
* ``blvit, P || E``: the same weights; in each sub-layer the E path runs on a second Python thread
  while the P path runs on the calling one, both with one intra-op thread (torch releases the GIL
  inside its kernels); the outputs are checked against ``blvit`` first;
* ``evit``: EViT at the bLViT model's MACs (as ``routevit bench --peers`` picks it);
* ``deit, 1 thread`` / ``blvit, 1 thread``: the two models on one intra-op thread, for the ratio
  the concurrent form could reach if the two paths were balanced.

An experiment, not a library feature. Ratios are medians over rounds of per-round time ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import types
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

from routevit.bench import speedups, time_round_robin
from routevit.bench_peers import contenders, prepare
from routevit.layers import BigLittleBlock

THREADS = torch.get_num_threads()
_WORKER = ThreadPoolExecutor(1, initializer=lambda: torch.set_num_threads(1))


def _in_inference_mode(fn: Callable, *args: object) -> torch.Tensor:
    with torch.inference_mode():  # inference mode is per thread
        return fn(*args)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """The calling thread runs its kernels on one intra-op thread inside the block."""
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(THREADS)


def _concurrent_forward(self: BigLittleBlock, x: torch.Tensor, routes=None, grid=None) -> torch.Tensor:
    p, e = self.performance, self.efficiency
    with _one_thread():
        pending = _WORKER.submit(_in_inference_mode, e.attn_branch, x, grid)
        x = self.fuse_attn(x, p.attn_branch(x, routes, grid), pending.result(), routes)
        pending = _WORKER.submit(_in_inference_mode, e.mlp_branch, x)
        return self.fuse_mlp(x, p.mlp_branch(routes.gather(x), routes), pending.result(), routes)


def concurrent_paths(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose big.LITTLE blocks run their two paths concurrently."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, BigLittleBlock):
            module.forward = types.MethodType(_concurrent_forward, module)
    return model


class OneThread(nn.Module):
    """``model`` run with one intra-op thread."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with _one_thread():
            return self.model(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--batch-size", type=int, default=1)
    args = parser.parse_args()
    base, rest = contenders("blvit_deit_b_t")
    deit, blvit, evit = (prepare(c.model, args.dtype, "cpu") for c in (base, rest[0], rest[1]))
    variants = {
        "deit": deit,
        "blvit": blvit,
        "blvit, P || E": concurrent_paths(blvit),
        "evit": evit,
        "deit, 1 thread": OneThread(deit),
        "blvit, 1 thread": OneThread(blvit),
    }
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    x = torch.randn(args.batch_size, 3, 224, 224, dtype=dtype)
    with torch.inference_mode():
        reference, concurrent = blvit(x).float(), variants["blvit, P || E"](x).float()
    print(f"P || E against sequential: max abs difference {(concurrent - reference).abs().max():.3g}")
    times, _ = time_round_robin(list(variants.values()), x, warmup=1, repeats=args.rounds, min_seconds=0.7)
    ratios = speedups(times[:4]) + speedups(times[4:])  # the 1-thread pair against its own DeiT-B
    print(f"{args.dtype}, batch {args.batch_size}, {THREADS} threads, {args.rounds} rounds")
    for name, seconds, ratio in zip(variants, times, ratios, strict=True):
        baseline = "deit, 1 thread" if name.endswith("1 thread") else "deit"
        speed = args.batch_size / statistics.median(seconds)
        print(f"{name:16s} {speed:7.2f} img/s  {ratio:.3f}x {baseline}")


if __name__ == "__main__":
    main()
