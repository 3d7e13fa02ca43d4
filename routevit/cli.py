"""The ``routevit`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _positive_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 1, got {text!r}")
    return values


def _ratios(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated keep ratios, got {text!r}") from None


def _bench(args: argparse.Namespace) -> int:
    from .bench_pairs import run

    report = run(
        args.model,
        batch_sizes=args.batch_sizes,
        keep_ratio=args.keep_ratio,
        warmup=args.warmup,
        repeats=args.repeats,
        bf16=args.bf16,
        sweep=args.sweep,
        sweep_batch=args.sweep_batch,
        compile_models=args.compile,
        device=args.device,
    )
    print(report)
    if args.out:
        with open(args.out, "w") as out:
            out.write(report + "\n")
    return 0


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="routevit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    bench = sub.add_parser("bench", help="same-run speed comparison against the vanilla models")
    bench.add_argument("--model", default="blvit_deit_b_t", help="big.LITTLE model to time")
    bench.add_argument("--batch-sizes", type=_positive_ints, default=[1, 32])
    bench.add_argument("--keep-ratio", type=float, default=None, help="default: the model's own")
    bench.add_argument("--warmup", type=int, default=2)
    bench.add_argument("--repeats", type=int, default=7)
    bench.add_argument("--bf16", action="store_true", help="time under bfloat16 autocast")
    bench.add_argument("--sweep", type=_ratios, default=[], help="keep ratios to sweep, e.g. 0.1,0.25,1")
    bench.add_argument("--sweep-batch", type=int, default=1)
    bench.add_argument("--compile", action="store_true", help="torch.compile both models first")
    bench.add_argument("--device", default="cpu")
    bench.add_argument("--out", help="also write the Markdown report to this file")
    bench.set_defaults(func=_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
