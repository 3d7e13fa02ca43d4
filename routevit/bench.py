"""Same-run speed comparisons of a routed model against a vanilla one.

The two models are timed in alternation (A B, B A, A B, ...) in one process after warm-up, and
the speed-up is the median of the per-pair ratios: on a noisy machine, two timings taken
back to back share the noise that separate runs do not. What is timed is the model's forward
pass only (no data loading), under ``torch.inference_mode``.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .flops import count_macs


@dataclass(frozen=True)
class PairTiming:
    """One batch size's result. ``speedup`` = baseline time / candidate time (median over pairs)."""

    batch_size: int
    candidate_images_per_s: float
    baseline_images_per_s: float
    speedup: float
    pairs: int


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(model: nn.Module, x: torch.Tensor, autocast: contextlib.AbstractContextManager) -> float:
    _sync(x.device)
    start = time.perf_counter()
    with autocast:
        model(x)
    _sync(x.device)
    return time.perf_counter() - start


def time_pair(
    candidate: nn.Module,
    baseline: nn.Module,
    make_input: Callable[[int], torch.Tensor],
    batch_size: int,
    *,
    warmup: int = 2,
    repeats: int = 7,
    bf16: bool = False,
) -> PairTiming:
    """Time ``candidate`` against ``baseline`` on ``make_input(batch_size)``, alternating."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    x = make_input(batch_size)

    def autocast() -> contextlib.AbstractContextManager:
        if not bf16:
            return contextlib.nullcontext()
        return torch.autocast(x.device.type, dtype=torch.bfloat16)

    cand_times: list[float] = []
    base_times: list[float] = []
    with torch.inference_mode():
        for _ in range(warmup):
            _timed(candidate, x, autocast())
            _timed(baseline, x, autocast())
        for i in range(repeats):
            order = (candidate, baseline) if i % 2 == 0 else (baseline, candidate)
            first, second = (_timed(m, x, autocast()) for m in order)
            c, b = (first, second) if i % 2 == 0 else (second, first)
            cand_times.append(c)
            base_times.append(b)
    ratios = [b / c for c, b in zip(cand_times, base_times, strict=True)]
    return PairTiming(
        batch_size=batch_size,
        candidate_images_per_s=batch_size / statistics.median(cand_times),
        baseline_images_per_s=batch_size / statistics.median(base_times),
        speedup=statistics.median(ratios),
        pairs=repeats,
    )


def compare(
    candidate: nn.Module,
    baseline: nn.Module,
    make_input: Callable[[int], torch.Tensor],
    batch_sizes: Sequence[int],
    *,
    warmup: int = 2,
    repeats: int = 7,
    bf16: bool = False,
) -> tuple[tuple[float, float], list[PairTiming]]:
    """GMACs per image (candidate, baseline) and a :class:`PairTiming` per batch size."""
    candidate.eval()
    baseline.eval()
    macs = (count_macs(candidate, make_input(1)) / 1e9, count_macs(baseline, make_input(1)) / 1e9)
    timings = [
        time_pair(candidate, baseline, make_input, bs, warmup=warmup, repeats=repeats, bf16=bf16)
        for bs in batch_sizes
    ]
    return macs, timings


def format_table(
    candidate_name: str, baseline_name: str, macs: tuple[float, float], timings: Sequence[PairTiming]
) -> str:
    """A Markdown table of a :func:`compare` result; ``macs`` = (candidate, baseline) GMACs/image."""
    lines = [
        f"candidate: {candidate_name} ({macs[0]:.2f} GMACs/image); "
        f"baseline: {baseline_name} ({macs[1]:.2f} GMACs/image); MAC ratio {macs[1] / macs[0]:.2f}x",
        "",
        "| batch | candidate img/s | baseline img/s | speed-up (median of pairs) | pairs |",
        "|---:|---:|---:|---:|---:|",
    ]
    for t in timings:
        lines.append(
            f"| {t.batch_size} | {t.candidate_images_per_s:.2f} | {t.baseline_images_per_s:.2f} "
            f"| {t.speedup:.2f}x | {t.pairs} |"
        )
    return "\n".join(lines)
