"""The GPU check's shared parts: the context a section gets, the section record, helpers."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

SECTIONS: tuple[str, ...] = ("env", "bench", "attention", "sync", "train", "sam")
# Expected seconds of each section on one H200 (full sizes), kept free while the bench compiles.
ESTIMATE_S: dict[str, float] = {"env": 5, "bench": 240, "attention": 40, "sync": 30, "train": 80, "sam": 45}



class Skip(Exception):
    """A section or part that cannot run here; the message is the reason."""


@dataclass
class Context:
    device: torch.device
    tiny: bool  # tiny models and inputs (dry run, or no CUDA)
    deadline: float  # time.monotonic() at which the budget ends
    batch_sizes: tuple[int, ...]
    workdir: Path
    reserve_s: float = 0.0  # seconds the sections after the current one are expected to need

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def left(self) -> float:
        return self.deadline - time.monotonic()


@dataclass
class Section:
    name: str
    status: str = "not run"
    seconds: float = 0.0
    lines: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# helpers


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out + [""]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds_per_call(fn: Callable[[], Any], device: torch.device, warmup: int, iters: int) -> float:
    """Median seconds of one ``fn()`` over ``iters`` timed calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _autocast(device: torch.device, dtype: torch.dtype | None = torch.bfloat16):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _first_line(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300].replace("|", "/")


@contextlib.contextmanager
def _restored_torch_settings() -> Iterator[None]:
    """Sections that train change process-wide settings (deterministic algorithms, TF32)."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    precision = torch.get_float32_matmul_precision()
    benchmark = torch.backends.cudnn.benchmark
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.set_float32_matmul_precision(precision)
        torch.backends.cudnn.benchmark = benchmark


def _xformers_status() -> str:
    from ..layers.attention import _xformers_ops

    ops = _xformers_ops()
    if ops is not None:
        import xformers

        return f"imports (xformers {getattr(xformers, '__version__', '?')})"
    try:
        import xformers.ops  # noqa: F401 - to show why it does not
    except Exception as error:  # noqa: BLE001 - any failure is the answer
        return f"does not import ({_first_line(error)})"
    return "does not import"


# The miniature of docs/tutorials/peers.md: CIFAR-size DeiT and its B+T-style bLViT.
TINY_VIT = {"img_size": 32, "patch_size": 4, "embed_dim": 96, "depth": 6, "num_heads": 3, "num_classes": 10}
TINY_BLVIT = {"img_size": 32, "patch_size": 4, "embed_dim": 96, "num_heads": 3, "little_dim": 24,
              "little_heads": 1, "depth": 6, "num_classes": 10, "keep_ratio": 0.25}  # fmt: skip
