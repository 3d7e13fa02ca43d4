"""The ``routevit`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch


def _positive_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 1, got {text!r}")
    return values


def _bench_stack(args: argparse.Namespace) -> int:
    from .bench import compare, format_table
    from .flops import count_macs
    from .layers import Block
    from .layers.encoder import BigLittleEncoder, Schedule

    torch.manual_seed(0)
    dim, heads, little_dim, little_heads, depth, tokens = 768, 12, 192, 3, 12, 197
    schedule = Schedule.big_little_from(depth, first_routed=2, predict_after=(1, 4, 7, 10))
    big_little = BigLittleEncoder(
        dim, heads, little_dim, little_heads, schedule, keep_ratio=args.keep_ratio, always_keep=(0,)
    )
    vanilla = torch.nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
    def make_input(batch: int) -> torch.Tensor:
        return torch.randn(batch, tokens, dim)

    macs = (count_macs(big_little, make_input(1)) / 1e9, count_macs(vanilla, make_input(1)) / 1e9)
    timings = compare(
        big_little,
        vanilla,
        make_input,
        args.batch_sizes,
        warmup=args.warmup,
        repeats=args.repeats,
        bf16=args.bf16,
    )
    print(
        f"Token stacks, {tokens} tokens x {dim} channels, {depth} layers, "
        f"keep_ratio {args.keep_ratio}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(format_table("big.LITTLE B+T stack", "vanilla ViT-B stack", macs, timings))
    return 0


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="routevit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    bench = sub.add_parser("bench", help="same-run speed comparison against the vanilla model")
    bench.add_argument("--batch-sizes", type=_positive_ints, default=[1, 32])
    bench.add_argument("--keep-ratio", type=float, default=0.25)
    bench.add_argument("--warmup", type=int, default=2)
    bench.add_argument("--repeats", type=int, default=7)
    bench.add_argument("--bf16", action="store_true", help="time under bfloat16 autocast")
    bench.set_defaults(func=_bench_stack)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
