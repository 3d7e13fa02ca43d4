"""Same-run speed and memory comparisons of a routed model against a vanilla one.

The two models are timed in alternation (A B, B A, A B, ...) in one process after warm-up, and
the speed-up is the median of the per-pair ratios: on a noisy machine, two timings taken
back to back share the noise that separate runs do not. What is timed is the model's forward
pass only (no data loading), under ``torch.inference_mode``; CUDA is timed with events.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


@dataclass(frozen=True)
class PairTiming:
    """One batch size's result. ``speedup`` = baseline time / candidate time (median over pairs);
    peak memory is that of the activations (weights excluded), in MiB; each of the ``pairs``
    timed runs per model made ``calls_per_run`` forward passes."""

    batch_size: int
    candidate_images_per_s: float
    baseline_images_per_s: float
    speedup: float
    pairs: int
    calls_per_run: int
    candidate_peak_mib: float
    baseline_peak_mib: float


def _storage_pointers(t: torch.Tensor) -> list[int]:
    """The storages behind ``t``: its own, or for a wrapper tensor subclass (e.g. torchao's
    quantized weights, which have no storage of their own) those of its inner tensors."""
    if hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return [ptr for name in names for ptr in _storage_pointers(getattr(t, name))]
    return [t.untyped_storage().data_ptr()]


class _LiveTensorBytes(TorchDispatchMode):
    """Tracks the bytes of tensor storages created inside the mode and still alive.

    torch keeps no allocator statistics on the CPU, so the peak is measured from the tensors
    themselves: every op's outputs are counted until the last tensor on their storage dies.
    Storages that existed before (weights, the input) are not counted.
    """

    def __init__(self, existing: Iterable[torch.Tensor]) -> None:
        super().__init__()
        self._existing = {ptr for t in existing for ptr in _storage_pointers(t)}
        self._live: dict[int, list[int]] = {}  # storage pointer -> [bytes, live tensors]
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key == 0 or key in self._existing:
            return
        entry = self._live.get(key)
        if entry is None:
            entry = self._live[key] = [storage.nbytes(), 0]
            self.current += entry[0]
            self.peak = max(self.peak, self.current)
        entry[1] += 1
        weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        entry = self._live[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self._live[key]


def peak_activation_bytes(model: nn.Module, x: torch.Tensor, bf16: bool = False) -> int:
    """Peak bytes of the intermediate tensors of one ``model(x)`` call (weights excluded)."""
    # no_grad, not inference_mode: under inference_mode a dispatch mode receives composite ops
    # (einsum: timm's SAM relative positions) whole, and runs them below CPU autocast, which
    # then fails on the bf16 / fp32 operands it should have cast (torch 2.14)
    with torch.no_grad(), _autocast(x, bf16):
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
            torch.cuda.reset_peak_memory_stats(x.device)
            base = torch.cuda.memory_allocated(x.device)
            model(x)
            torch.cuda.synchronize(x.device)
            return torch.cuda.max_memory_allocated(x.device) - base
        tracker = _LiveTensorBytes([x, *model.parameters(), *model.buffers()])
        with tracker:
            model(x)
        return tracker.peak


def _autocast(x: torch.Tensor, bf16: bool) -> contextlib.AbstractContextManager:
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(x.device.type, dtype=torch.bfloat16)


def _seconds(model: nn.Module, x: torch.Tensor, bf16: bool, calls: int = 1) -> float:
    """Seconds per forward pass, averaged over ``calls`` back-to-back passes."""
    if x.device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        with _autocast(x, bf16):
            for _ in range(calls):
                model(x)
        end.record()
        torch.cuda.synchronize(x.device)
        return start.elapsed_time(end) / 1e3 / calls
    start_s = time.perf_counter()
    with _autocast(x, bf16):
        for _ in range(calls):
            model(x)
    return (time.perf_counter() - start_s) / calls


def time_round_robin(
    models: Sequence[nn.Module],
    x: torch.Tensor,
    *,
    warmup: int = 2,
    repeats: int = 7,
    bf16: bool = False,
    min_seconds: float = 0.0,
) -> tuple[list[list[float]], int]:
    """Seconds per forward pass of every model on ``x``, all timed in each round.

    Round ``i`` runs the models in order, the next round in reverse (A B C, C B A, ...), so
    each model's timing in a round shares the machine's state with the others'. Returns
    ``(times, calls)``: ``times[m][i]`` is model ``m`` in round ``i``; each timed run made
    ``calls`` back-to-back passes, fixed from the last warm-up round so that the slowest
    model's run lasts about ``min_seconds`` (no warm-up: one pass).
    """
    if repeats < 1 or warmup < 0 or min_seconds < 0:
        raise ValueError(
            f"repeats must be >= 1, warmup >= 0 and min_seconds >= 0, got {repeats}, {warmup} "
            f"and {min_seconds}"
        )
    times: list[list[float]] = [[] for _ in models]
    calls = 1
    order = list(range(len(models)))
    with torch.inference_mode():
        for _ in range(warmup):
            slowest = max(_seconds(m, x, bf16) for m in models)
            calls = max(1, math.ceil(min_seconds / slowest))
        for i in range(repeats):
            for m in order if i % 2 == 0 else order[::-1]:
                times[m].append(_seconds(models[m], x, bf16, calls))
    return times, calls


def speedups(times: Sequence[Sequence[float]], reference: int = 0) -> list[float]:
    """Median over rounds of ``reference``'s time / each model's time (``times`` as returned by
    [`time_round_robin`][])."""
    ref = times[reference]
    return [statistics.median(r / t for r, t in zip(ref, own, strict=True)) for own in times]


def time_pair(
    candidate: nn.Module,
    baseline: nn.Module,
    make_input: Callable[[int], torch.Tensor],
    batch_size: int,
    *,
    warmup: int = 2,
    repeats: int = 7,
    bf16: bool = False,
    min_seconds: float = 0.0,
) -> PairTiming:
    """Time ``candidate`` against ``baseline`` on ``make_input(batch_size)``, alternating
    ([`time_round_robin`][] with the two models).

    ``min_seconds``: each timed run repeats the forward pass (the same number of times for
    both models, fixed from the last warm-up pair) until the slower model's run lasts about
    this long (no warm-up: one pass); a run of several passes averages out noise that a
    single short pass shows.
    """
    x = make_input(batch_size)
    (cand_times, base_times), calls = time_round_robin(
        (candidate, baseline), x, warmup=warmup, repeats=repeats, bf16=bf16, min_seconds=min_seconds
    )
    mib = 2.0**20
    return PairTiming(
        batch_size=batch_size,
        candidate_images_per_s=batch_size / statistics.median(cand_times),
        baseline_images_per_s=batch_size / statistics.median(base_times),
        speedup=speedups((base_times, cand_times))[1],
        pairs=repeats,
        calls_per_run=calls,
        candidate_peak_mib=peak_activation_bytes(candidate, x, bf16) / mib,
        baseline_peak_mib=peak_activation_bytes(baseline, x, bf16) / mib,
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
    min_seconds: float = 0.0,
) -> list[PairTiming]:
    """A [`PairTiming`][] per batch size (both models are put in eval mode)."""
    candidate.eval()
    baseline.eval()
    kw = {"warmup": warmup, "repeats": repeats, "bf16": bf16, "min_seconds": min_seconds}
    return [time_pair(candidate, baseline, make_input, bs, **kw) for bs in batch_sizes]


def format_table(
    candidate_name: str,
    baseline_name: str,
    macs: tuple[float, float],
    timings: Sequence[PairTiming],
) -> str:
    """A Markdown table of [`compare`][] results; ``macs`` = (candidate, baseline) GMACs/image."""
    lines = [
        f"candidate: {candidate_name} ({macs[0]:.2f} GMACs/image); baseline: {baseline_name} "
        f"({macs[1]:.2f} GMACs/image); MAC ratio {macs[1] / macs[0]:.2f}x",
        "",
        "| batch | candidate img/s | baseline img/s | speed-up (median of pairs) | pairs x passes "
        "| candidate peak MiB | baseline peak MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in timings:
        lines.append(
            f"| {t.batch_size} | {t.candidate_images_per_s:.2f} | {t.baseline_images_per_s:.2f} "
            f"| {t.speedup:.2f}x | {t.pairs} x {t.calls_per_run} | {t.candidate_peak_mib:.1f} "
            f"| {t.baseline_peak_mib:.1f} |"
        )
    return "\n".join(lines)
