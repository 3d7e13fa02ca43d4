"""An image folder decoded once into a uint8 tensor file, and augmentation of whole batches.

With ``data.cache: true`` a split is decoded (PIL, the evaluation geometry: resize the short
side to ``img_size / crop_pct``, centre crop ``img_size``) into one ``(N, 3, S, S)`` uint8
tensor saved under ``data.cache_dir``. The file's name is a hash of the split's file list (each
path with its size and modification time) and of the geometry, so adding, removing, replacing or
touching an image, or changing the geometry, builds a new cache instead of reading a stale one.

Training then augments batches on tensors: a random crop of the image padded by
``augment.pad`` zero pixels on each side, and a horizontal flip with probability
``augment.hflip`` (the standard CIFAR augmentation); Mixup/CutMix and label smoothing work on
tensors as before. As in :mod:`routevit.train.data`, a sample's augmentation is a pure function
of ``(seed, epoch, index)`` (a counter-based hash, not a stateful generator), so resume and DDP
see the same crops as a single uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .._fs import fsync_path
from .batch import BadImageError, Batch, Sample

logger = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the stored layout or the decoding changes


@dataclass(frozen=True)
class Geometry:
    """How an image becomes an ``img_size`` square (the evaluation transform's geometry)."""

    img_size: int
    crop_pct: float
    interpolation: str


@dataclass(frozen=True)
class ImageCache:
    """Decoded images of a split, in the split's order, unreadable files dropped."""

    images: torch.Tensor  # (N, 3, S, S) uint8
    targets: torch.Tensor  # (N,) int64
    path: Path  # the cache file


def default_cache_dir() -> Path:
    """``$ROUTEVIT_CACHE`` or ``~/.cache/routevit``, plus ``images``."""
    base = os.environ.get("ROUTEVIT_CACHE") or Path.home() / ".cache" / "routevit"
    return Path(base) / "images"


def cache_key(samples: Sequence[Sample], geometry: Geometry) -> str:
    """Hash of the file list (path, size, mtime, target, in order) and of the geometry."""
    h = hashlib.sha256()
    h.update(json.dumps({"version": CACHE_VERSION, **geometry.__dict__}, sort_keys=True).encode())
    for path, target in samples:
        st = os.stat(path)
        h.update(f"\n{os.path.abspath(path)}\t{st.st_size}\t{st.st_mtime_ns}\t{target}".encode())
    return h.hexdigest()[:32]


def _decode(path: str, geometry: Geometry) -> np.ndarray:
    from PIL import Image
    from torchvision.transforms import CenterCrop, InterpolationMode, Resize

    with open(path, "rb") as f:
        img = Image.open(f).convert("RGB")
    size = int(geometry.img_size / geometry.crop_pct)
    if img.size != (geometry.img_size, geometry.img_size):
        img = Resize(size, interpolation=InterpolationMode(geometry.interpolation))(img)
        img = CenterCrop(geometry.img_size)(img)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def build_cache(
    samples: Sequence[Sample], geometry: Geometry, on_bad_image: str = "skip"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode ``samples`` into ``(images (N, 3, S, S) uint8, targets (N,))``."""
    s = geometry.img_size
    images = np.empty((len(samples), 3, s, s), dtype=np.uint8)
    keep = np.ones(len(samples), dtype=bool)
    for i, (path, _) in enumerate(samples):
        try:
            images[i] = _decode(path, geometry)
        except Exception as e:  # PIL raises several types for broken files
            if on_bad_image == "error":
                raise BadImageError(
                    f"cannot read image {path!r}: {e}; set data.on_bad_image=skip to skip such files"
                ) from e
            logger.warning("skipping unreadable image %s: %s", path, e)
            keep[i] = False
    targets = np.array([t for _, t in samples], dtype=np.int64)
    return torch.from_numpy(images[keep]), torch.from_numpy(targets[keep])


def load_or_build(
    samples: Sequence[Sample],
    geometry: Geometry,
    cache_dir: str | Path | None = None,
    on_bad_image: str = "skip",
) -> ImageCache:
    """The cache of ``samples`` (built, and written atomically, if it does not exist yet)."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / f"{cache_key(samples, geometry)}.pt"
    if path.is_file():
        saved = torch.load(path, weights_only=True)
        return ImageCache(saved["images"], saved["targets"], path)
    start = time.perf_counter()
    images, targets = build_cache(samples, geometry, on_bad_image)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save({"images": images, "targets": targets}, tmp)
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(folder)
    logger.info("decoded %d images into %s in %.1f s", len(images), path, time.perf_counter() - start)
    return ImageCache(images, targets, path)


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer on uint64 arrays (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def sample_bits(seed: int, epoch: int, index: np.ndarray) -> np.ndarray:
    """64 well-mixed random bits per sample, a pure function of ``(seed, epoch, index)``."""
    with np.errstate(over="ignore"):
        z = _mix64(np.full(index.shape, seed, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15))
        z = _mix64(z ^ np.uint64(epoch & (2**64 - 1)))
        return _mix64(z ^ index.astype(np.uint64))


def crop_flip(images: torch.Tensor, bits: np.ndarray, pad: int, hflip: float) -> torch.Tensor:
    """Random crop of the zero-padded images and horizontal flip, per sample.

    Args:
        images: ``(B, C, H, W)`` uint8.
        bits: ``(B,)`` uint64 from :func:`sample_bits`: the low bytes choose the offsets, bits
            16-39 the flip.
        pad: pixels of zero padding on each side (0: flip only).
        hflip: probability of a flip.
    Returns:
        ``(B, C, H, W)`` uint8.
    """
    b, c, h, w = images.shape
    offsets = 2 * pad + 1
    dy = torch.from_numpy((bits % np.uint64(offsets)).astype(np.int64))
    dx = torch.from_numpy(((bits >> np.uint64(8)) % np.uint64(offsets)).astype(np.int64))
    flip = torch.from_numpy(
        ((bits >> np.uint64(16)) & np.uint64(0xFFFFFF)).astype(np.float64) / 2**24 < hflip
    )
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad)) if pad else images
    cols = dx[:, None] + torch.arange(w)[None]
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    rows = dy[:, None] + torch.arange(h)[None]
    batch = torch.arange(b)[:, None, None, None]
    chan = torch.arange(c)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


class CachedImages(Dataset):
    """A cached split as a dataset that answers whole batches (``__getitems__``).

    Keys are ``(epoch, index)`` pairs (training: augmented) or plain indices (evaluation: as
    decoded). A batch is a :class:`~routevit.train.data.Batch` of normalized float images.
    """

    def __init__(
        self,
        cache: ImageCache,
        mean: Sequence[float],
        std: Sequence[float],
        seed: int = 0,
        pad: int = 0,
        hflip: float = 0.0,
        even: bool = False,
    ) -> None:
        self.cache = cache
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255
        self.seed, self.pad, self.hflip, self.even = seed, pad, hflip, even

    def __len__(self) -> int:
        return len(self.cache.targets)

    def __getitem__(self, key: int | tuple[int, int]) -> Batch:
        return self.__getitems__([key])

    def __getitems__(self, keys: Sequence[int | tuple[int, int]]) -> Batch:
        training = bool(keys) and isinstance(keys[0], tuple)
        index = np.array([k[1] for k in keys] if training else list(keys), dtype=np.int64)
        if self.even and len(index) % 2:  # Mixup pairs images within the batch
            index = index[:-1]
            keys = keys[:-1]
        images = self.cache.images[torch.from_numpy(index)]
        if training:
            epoch = keys[0][0]
            if any(k[0] != epoch for k in keys):
                raise ValueError("a training batch mixes epochs; the sampler yields one epoch at a time")
            images = crop_flip(images, sample_bits(self.seed, epoch, index), self.pad, self.hflip)
        x = (images.float() - self.mean) / self.std
        return Batch(x, self.cache.targets[torch.from_numpy(index)], 0)


def collate_batch(batch: Batch) -> Batch:
    """The loader's collate function for :class:`CachedImages` (the batch is already built)."""
    return batch
