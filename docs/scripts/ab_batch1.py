"""A/B timing at batch 1: the P path's FFN orientation, and oneDNN-prepacked Linear weights.

Usage: ``python docs/scripts/ab_batch1.py [--rounds 30] [--batch-size 1] [--threads N]``

Five variants are timed in one process, in alternating order, ``--rounds`` times each:

* ``ours``: ``blvit_deit_b_t`` as shipped (P-path FFN as ``W @ x^T`` for few rows);
* ``ours, x @ W^T FFN``: the same model with that switch off
  (``routevit.runtime.set_policy(transposed_mlp_max_rows=0)``);
* ``timm``: timm's ``deit_base_patch16_224``;
* ``ours, oneDNN`` / ``timm, oneDNN``: every ``F.linear`` of the model replaced by oneDNN's
  matmul with weights reordered once in advance (``torch.ops.mkldnn._reorder_linear_weight``,
  a private op that inductor's freezing pass uses); an experiment, not a library feature.

Each ratio is the median over rounds of the per-round ratio of two variants' times.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import timm
import torch
import torch.nn.functional as F

import routevit

_PLAIN_LINEAR = F.linear
_packed: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}


def _onednn_linear(x, weight, bias=None):
    key = (weight.data_ptr(), tuple(weight.shape))
    if key not in _packed:
        _packed[key] = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), 64)
    return torch.ops.mkldnn._linear_pointwise(x, _packed[key], bias, "none", [], "")


@contextlib.contextmanager
def variant(onednn: bool = False, transposed_ffn: bool = True):
    saved = routevit.runtime.set_policy()  # the current policy, unchanged
    if not transposed_ffn:
        routevit.runtime.set_policy(transposed_mlp_max_rows=0)
    if onednn:  # nn.Linear and our attention both call torch.nn.functional.linear
        F.linear = _onednn_linear
    try:
        yield
    finally:
        F.linear = _PLAIN_LINEAR
        routevit.runtime.set_policy(transposed_mlp_max_rows=saved.transposed_mlp_max_rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ours = routevit.create_model("blvit_deit_b_t").eval()
    deit = timm.create_model("deit_base_patch16_224", pretrained=False).eval()
    variants = {
        "ours": (ours, {}),
        "ours, x @ W^T FFN": (ours, {"transposed_ffn": False}),
        "timm": (deit, {}),
        "ours, oneDNN": (ours, {"onednn": True}),
        "timm, oneDNN": (deit, {"onednn": True}),
    }
    x = torch.randn(args.batch_size, 3, 224, 224)
    times: dict[str, list[float]] = {name: [] for name in variants}
    with torch.inference_mode():
        reference = {name: model(x) for name, (model, _) in variants.items() if not _}
        for name, (model, kw) in variants.items():
            with variant(**kw):
                for _ in range(3):
                    out = model(x)
            ref = reference["ours" if model is ours else "timm"]
            print(f"{name}: max |logit difference| vs as shipped {(out - ref).abs().max().item():.1e}")
        items = list(variants.items())
        for r in range(args.rounds):
            for name, (model, kw) in items if r % 2 == 0 else items[::-1]:
                with variant(**kw):
                    start = time.perf_counter()
                    model(x)
                    times[name].append(time.perf_counter() - start)

    def ratio(slow: str, fast: str) -> float:
        return statistics.median(s / f for s, f in zip(times[slow], times[fast], strict=True))

    print(f"\nbatch {args.batch_size}, {args.rounds} rounds, {torch.get_num_threads()} threads")
    for name in variants:
        print(f"{name}: {args.batch_size / statistics.median(times[name]):.2f} img/s")
    for slow, fast in [("timm", "ours"), ("timm", "ours, x @ W^T FFN"), ("ours, x @ W^T FFN", "ours"),
                       ("timm, oneDNN", "ours, oneDNN"), ("timm", "timm, oneDNN"), ("ours", "ours, oneDNN")]:
        print(f"{slow} / {fast}: {ratio(slow, fast):.3f}")


if __name__ == "__main__":
    main()
