"""Input validation shared by the layers: every message says what was expected and what came."""

from __future__ import annotations

import torch


def check_tensor(x: object, name: str, rank: int, shape: str) -> torch.Tensor:
    """Raise unless ``x`` is a tensor of the given rank; ``shape`` names the axes, e.g. ``(B, N, C)``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {shape}, got {type(x).__name__}")
    if x.dim() != rank:
        raise ValueError(f"{name} must have shape {shape} ({rank} dims), got {tuple(x.shape)}")
    return x


def check_last_dim(x: torch.Tensor, name: str, expected: int) -> None:
    if x.shape[-1] != expected:
        raise ValueError(
            f"{name} must have {expected} channels in its last dim, got shape {tuple(x.shape)}"
        )


def check_same_device_dtype(reference: torch.Tensor, ref_name: str, **others: torch.Tensor) -> None:
    """Raise a TypeError when a floating tensor's dtype, or any tensor's device, differs."""
    for name, t in others.items():
        if t.device != reference.device:
            raise TypeError(
                f"{name} is on {t.device} but {ref_name} is on {reference.device}; "
                "move both to the same device"
            )
        if t.is_floating_point() and reference.is_floating_point() and t.dtype != reference.dtype:
            raise TypeError(
                f"{name} has dtype {t.dtype} but {ref_name} has dtype {reference.dtype}; "
                "cast both to the same dtype (or run under torch.autocast)"
            )


def check_keep_ratio(keep_ratio: float) -> float:
    if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, (int, float)):
        raise TypeError(f"keep_ratio must be a float in (0, 1], got {type(keep_ratio).__name__}")
    if not 0.0 < float(keep_ratio) <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    return float(keep_ratio)


def has_shape(t: torch.Tensor, *shapes: tuple[int, ...]) -> bool:
    """True if ``t`` has one of ``shapes``. Compares with ``==`` rather than hashing, because
    under ``torch.jit.trace`` (ONNX export) sizes may be 0-dim tensors."""
    return any(
        t.dim() == len(s) and all(bool(a == b) for a, b in zip(t.shape, s, strict=True)) for s in shapes
    )
