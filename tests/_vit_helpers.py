"""Shared helpers for the ViT tests: relative error and saving timm models to checkpoint files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn


@pytest.fixture
def single_thread() -> Iterator[None]:
    """One intra-op thread: the 2-core test machine is shared, and with other processes busy,
    two spinning OpenMP threads make these small-model tests slower (measured 54 s vs 79 s)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||``, b being the reference."""
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def save_checkpoint(state: dict[str, torch.Tensor] | dict, path: Path) -> Path:
    """Write ``state`` as safetensors (by suffix) or with torch.save."""
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


def timm_vit(name: str, **kwargs: object) -> nn.Module:
    """A timm model with random weights, in eval mode.

    Built on the meta device and filled directly: timm's own init of a ViT-H takes seconds. The
    norms get random affine parameters too (not ones/zeros), so loading them is really tested.
    """
    import timm

    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, **kwargs)
    model = model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            owner = model.get_submodule(pname.rsplit(".", 1)[0]) if "." in pname else model
            if isinstance(owner, nn.LayerNorm):
                p.copy_((1.0 if pname.endswith("weight") else 0.0) + 0.1 * noise)
            else:
                p.copy_(0.02 * noise)
        for b in model.buffers():
            b.zero_()
    return model.eval()
