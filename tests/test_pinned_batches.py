"""DataLoader(pin_memory=True) pins the trainer's batch types.

torch's pin-memory step calls ``batch.pin_memory()`` on a custom type and returns any object
without that method unchanged (so ``.to(device, non_blocking=True)`` would copy from pageable
memory and block). This machine has no accelerator to pin for, so ``Tensor.pin_memory`` is
replaced by a recorder; torch's own pin-memory step is what the loader thread runs.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data._utils.pin_memory import pin_memory as loader_pin_memory

from routevit.train.data import Batch, collate_skipping
from routevit.train.sam_data import SamBatch, SamTarget, collate_sam


@pytest.fixture
def pinned(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Ids of the tensors returned by the recording ``Tensor.pin_memory``."""
    out: list[int] = []

    def record(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        copy = self.clone()
        out.append(id(copy))
        return copy

    monkeypatch.setattr(torch.Tensor, "pin_memory", record)
    return out


def test_classification_batch_pins(pinned):
    items = [(torch.randn(3, 4, 4), 1, None), (torch.randn(3, 4, 4), 0, "unreadable"),
             (torch.randn(3, 4, 4), 2, None)]  # fmt: skip
    batch = collate_skipping(items)
    out = loader_pin_memory(batch)
    assert isinstance(out, Batch) and out.skipped == 1
    assert id(out.images) in pinned and id(out.targets) in pinned
    assert torch.equal(out.images, batch.images) and out.targets.tolist() == [1, 2]


def test_sam_batch_pins_its_images(pinned):
    target = SamTarget(torch.zeros(1, 8, 8, dtype=torch.bool), torch.zeros(1, 4), torch.zeros(1, 1, 2),
                       torch.ones(1, dtype=torch.long))  # fmt: skip
    batch = collate_sam([(torch.randn(3, 8, 8), target), (None, None)])
    out = loader_pin_memory(batch)
    assert isinstance(out, SamBatch) and out.skipped == 1 and out.targets == [target]
    assert id(out.images) in pinned and torch.equal(out.images, batch.images)
