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
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RuntimePolicy:
    """Choices the fast paths consult.

    Attributes:
        transposed_mlp_max_rows: up to this many rows (``B * K``) the P path's FFN runs as
            ``W @ x^T`` on the CPU. Measured with MKL on 2 cores (768 -> 3072 -> 768): 1.12x at
            50 rows, ~1.05x from 100 to 1,000 rows, but 0.85x at 1,100-1,225 rows (SAM's P
            path), so the switch stays well below that. 0 switches it off.
    """

    transposed_mlp_max_rows: int = 256

    def __post_init__(self) -> None:
        rows = self.transposed_mlp_max_rows
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
            raise ValueError(f"transposed_mlp_max_rows must be an int >= 0, got {rows!r}")


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
