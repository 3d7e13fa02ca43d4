"""The runtime policy: machine-specific choices of the fast paths, kept out of the layers' math.

The layers compute the same function whatever this policy says; it only picks *how* (matmul
orientation today). Every field is documented with the measurement behind its default, so a
user on another machine can re-tune it (``docs/scripts/mlp_orientation.py`` scans the first)::

    import routevit
    routevit.runtime.set_policy(transposed_mlp_max_rows=0)    # always x @ W^T
    with routevit.runtime.policy(transposed_mlp_max_rows=512):  # for one block of code
        ...
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path

import torch

SCATTER_KERNELS = ("index_add", "index_put")


@functools.cache
def cpu_vendor() -> str:
    """``vendor_id`` of /proc/cpuinfo (e.g. ``AuthenticAMD``, ``GenuineIntel``); "" if unknown."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def default_transposed_mlp_max_rows() -> int:
    """256 on AMD CPUs, where ``W @ x^T`` was measured faster for few rows; 0 elsewhere."""
    return 256 if cpu_vendor() == "AuthenticAMD" else 0


@dataclass(frozen=True)
class RuntimePolicy:
    """Choices the fast paths consult.

    Attributes:
        transposed_mlp_max_rows: up to this many rows (``B * K``) the P path's FFN runs as
            ``W @ x^T`` on the CPU; 0 switches it off. The default depends on the CPU
            (:func:`default_transposed_mlp_max_rows`): on a 2-core AMD EPYC (Zen 3) with MKL
            (768 -> 3072 -> 768) it was 1.12x at 50 rows, ~1.05x from 100 to 1,000 rows, 0.85x
            at 1,100-1,225 rows (SAM's P path), hence 256 there; on a 2-core Intel Xeon
            (AVX-512, AMX) the whole model was 5% slower with it at batch 1 (1.285x vs 1.354x
            DeiT-B, docs/results.md), hence 0 on every other CPU.
        scatter_add: the kernel of :meth:`routevit.layers.Routes.scatter_add` (adding the P
            path's rows back into the stream; the indices are unique). ``"index_add"``
            (``index_add_``) or ``"index_put"`` (``index_put_(..., accumulate=True)``). Measured
            with torch 2.14 on a 2-core Intel Xeon (AVX-512), 50 of 197 rows of width 768:
            index_add 0.020 ms vs index_put 0.105 ms at batch 1, 0.95 vs 3.89 ms at batch 32
            (an earlier torch on an AMD EPYC had index_add ~10x slower, hence the switch).
    """

    transposed_mlp_max_rows: int = field(default_factory=lambda: default_transposed_mlp_max_rows())
    scatter_add: str = "index_add"

    def __post_init__(self) -> None:
        rows = self.transposed_mlp_max_rows
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
            raise ValueError(f"transposed_mlp_max_rows must be an int >= 0, got {rows!r}")
        if self.scatter_add not in SCATTER_KERNELS:
            raise ValueError(f"scatter_add must be one of {SCATTER_KERNELS}, got {self.scatter_add!r}")


_current: list[RuntimePolicy] = [RuntimePolicy()]  # a one-slot box, so setters need no `global`


def get_policy() -> RuntimePolicy:
    return _current[0]


def set_policy(**changes: object) -> RuntimePolicy:
    """Replace fields of the current policy (unknown names are a TypeError); returns the old one."""
    previous = _current[0]
    _current[0] = dataclasses.replace(previous, **changes)
    return previous


class policy:  # noqa: N801 - a function-style context manager, like torch.no_grad
    """``with routevit.runtime.policy(field=value): ...`` restores the previous policy on exit."""

    def __init__(self, **changes: object) -> None:
        self._previous = set_policy(**changes)

    def __enter__(self) -> RuntimePolicy:
        return _current[0]

    def __exit__(self, *exc: object) -> None:
        _current[0] = self._previous


def transposed_mlp(rows: object, device: torch.device) -> bool:
    """Whether an FFN over ``rows`` tokens on ``device`` should run as ``W @ x^T``.

    A symbolic row count (torch.export with a dynamic batch) keeps ``x @ W^T``: comparing it with
    the limit would put a guard on the batch size into the exported program.
    """
    return device.type == "cpu" and isinstance(rows, int) and rows <= _current[0].transposed_mlp_max_rows
