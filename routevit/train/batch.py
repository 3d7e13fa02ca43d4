"""What a classification loader yields: a batch of images and class ids."""

from __future__ import annotations

from dataclasses import dataclass

import torch

Sample = tuple[str, int]  # (image path, class id)


class BadImageError(RuntimeError):
    """An image could not be read and ``data.on_bad_image`` is ``'error'``."""


@dataclass
class Batch:
    images: torch.Tensor  # (B, 3, H, W)
    targets: torch.Tensor  # (B,)
    skipped: int  # unreadable images dropped from this batch

    def pin_memory(self) -> Batch:
        """The batch in page-locked memory: what ``DataLoader(pin_memory=True)`` calls on a custom
        batch type (without it the loader returns the batch unpinned and the trainer's
        ``.to(device, non_blocking=True)`` copies block)."""
        return Batch(self.images.pin_memory(), self.targets.pin_memory(), self.skipped)
