"""ImageFolder data with DeiT augmentation, a documented validation split, and resumable sampling.

Determinism: a training sample's augmentation is a pure function of ``(seed, epoch, index)``
(the RNGs are seeded per sample, inside the worker, and restored afterwards). So the images a
step sees do not depend on the number of workers, on where a run was resumed, or on how the
global batch is split over processes; that is what makes resume and DDP equivalence testable.

Validation split (``data.holdout_per_class = N``): within each class folder, files are sorted
by their path (lexicographic, as ``sorted()`` on str) and the last N are validation; the rest
is training. ``max_train_per_class`` / ``max_val_per_class`` then keep the first files of each
class of each part.
"""

from __future__ import annotations

import logging
import random
import signal
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.data import Mixup, create_transform
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torchvision.datasets import ImageFolder

from . import image_cache
from .batch import BadImageError, Batch, Sample
from .config import Recipe
from .distributed import DistInfo

logger = logging.getLogger(__name__)

def derive_seed(*parts: int) -> int:
    """A well-mixed 32-bit seed from integers (seed, epoch, index, ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def split_holdout(samples: Sequence[Sample], holdout_per_class: int) -> tuple[list[Sample], list[Sample]]:
    """Per class, the ``holdout_per_class`` lexicographically last paths are validation."""
    by_class: dict[int, list[str]] = defaultdict(list)
    for path, target in samples:
        by_class[target].append(path)
    train: list[Sample] = []
    val: list[Sample] = []
    for target in sorted(by_class):
        paths = sorted(by_class[target])
        if len(paths) <= holdout_per_class:
            raise ValueError(
                f"class {target} has {len(paths)} images, not more than data.holdout_per_class="
                f"{holdout_per_class}; nothing would be left for training"
            )
        cut = len(paths) - holdout_per_class
        train += [(p, target) for p in paths[:cut]]
        val += [(p, target) for p in paths[cut:]]
    return train, val


def first_per_class(samples: Sequence[Sample], limit: int | None) -> list[Sample]:
    """The first ``limit`` (sorted) files of each class; all when ``limit`` is None."""
    if limit is None:
        return list(samples)
    counts: dict[int, int] = defaultdict(int)
    out = []
    for path, target in sorted(samples, key=lambda s: (s[1], s[0])):
        if counts[target] < limit:
            out.append((path, target))
            counts[target] += 1
    return out


@dataclass(frozen=True)
class Splits:
    train: list[Sample]
    val: list[Sample]
    classes: list[str]


def _folder(root: Path, sub: str, key: str) -> ImageFolder:
    path = root / sub
    if not path.is_dir():
        raise FileNotFoundError(f"{key}: data folder {str(path)!r} does not exist")
    try:
        return ImageFolder(str(path))
    except FileNotFoundError as err:  # no class folder, or no file with an image suffix
        raise FileNotFoundError(f"{key} {str(path)!r}: expected class folders of images; {err}") from None


def find_splits(recipe: Recipe) -> Splits:
    """Scan the ImageFolder tree(s) of ``recipe.data`` and apply the split rule."""
    cfg = recipe.data
    if cfg.root is None:
        raise ValueError("no data folder: pass --data DIR or set data.root in the recipe")
    root = Path(cfg.root)
    if not root.is_dir():
        raise FileNotFoundError(f"data.root: data folder {str(root)!r} does not exist")
    train_folder = _folder(root, cfg.train_dir, "data.train_dir")
    if cfg.holdout_per_class > 0:
        train, val = split_holdout(train_folder.samples, cfg.holdout_per_class)
    else:
        train = list(train_folder.samples)
        val = []
        if cfg.val_dir is not None:
            val_folder = _folder(root, cfg.val_dir, "data.val_dir")
            if val_folder.classes != train_folder.classes:
                raise ValueError(
                    f"the class folders of {cfg.val_dir!r} ({len(val_folder.classes)}) differ from those of "
                    f"{cfg.train_dir!r} ({len(train_folder.classes)})"
                )
            val = list(val_folder.samples)
    train = first_per_class(train, cfg.max_train_per_class)
    val = first_per_class(val, cfg.max_val_per_class)
    return Splits(train, val, list(train_folder.classes))


def _load_rgb(path: str):
    from PIL import Image

    with open(path, "rb") as f:
        img = Image.open(f)
        return img.convert("RGB")


class ImageSamples(Dataset):
    """``(path, target)`` samples -> ``(image (3, H, W), target, path_if_unreadable_else_None)``.

    Keys are ``(epoch, index)`` pairs (training: the per-sample RNG seed derives from them) or
    plain indices (evaluation: the transform must then be deterministic).
    """

    def __init__(self, samples: Sequence[Sample], transform, seed: int = 0, on_bad_image: str = "skip"):
        self.samples = list(samples)
        self.transform = transform
        self.seed = seed
        self.on_bad_image = on_bad_image

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]):
        epoch, index = key if isinstance(key, tuple) else (None, key)
        path, target = self.samples[index]
        try:
            img = _load_rgb(path)
        except Exception as e:  # PIL raises several types for broken files
            if self.on_bad_image == "error":
                raise BadImageError(
                    f"cannot read image {path!r}: {e}; set data.on_bad_image=skip to skip such files"
                ) from e
            logger.warning("skipping unreadable image %s: %s", path, e)
            return None, target, path
        if epoch is None:
            return self.transform(img), target, None
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            s = derive_seed(self.seed, epoch, index)
            random.seed(s)
            np.random.seed(s)
            # the CPU generator only: torch.manual_seed also queues a lazy CUDA seeding that
            # records a Python traceback, 1.5 ms per image on a CUDA build without a GPU
            torch.random.default_generator.manual_seed(s)
            out = self.transform(img)
        random.setstate(py_state)
        np.random.set_state(np_state)
        return out, target, None


def collate_skipping(items: list, even: bool = False) -> Batch:
    """Stack the readable samples; with ``even`` drop one more to keep the batch even (Mixup)."""
    good = [(x, t) for x, t, bad in items if bad is None]
    skipped = len(items) - len(good)
    if even and len(good) % 2:
        good = good[:-1]
    if not good:
        raise BadImageError(f"all {len(items)} images of a batch were unreadable")
    images = torch.stack([x for x, _ in good])
    targets = torch.tensor([t for _, t in good], dtype=torch.long)
    return Batch(images, targets, skipped)


def _ignore_stop_signals(worker_id: int) -> None:
    # Ctrl-C / SIGTERM reach the whole process group; the main process handles them (it saves and
    # stops), so a worker dying first would only turn a clean stop into a DataLoader error.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _collate_even(items: list) -> Batch:
    return collate_skipping(items, even=True)


class ResumableSampler(DistributedSampler):
    """DistributedSampler that yields ``(epoch, index)`` keys and can start mid-epoch.

    The permutation depends only on ``seed + epoch`` (as DistributedSampler's), and rank r takes
    every world_size-th index from r; so the union of the ranks' i-th local batches is the i-th
    global batch of a single-process run with the same global batch size.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.start = 0

    def set_position(self, epoch: int, start: int) -> None:
        """Iterate epoch ``epoch`` from its ``start``-th local sample."""
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())[self.start :]
        return iter([(self.epoch, i) for i in indices])

    def __len__(self) -> int:
        return self.num_samples - self.start


class ShardSampler(Sampler[int]):
    """Rank r evaluates indices r, r + world, ... (no padding, so every image counts once)."""

    def __init__(self, n: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, n, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _posterize_zero_bits_ok(img, bits_to_keep: int, **_: object):
    """Posterize that accepts 0 bits (a black image), as older Pillow releases did."""
    from PIL import Image, ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def _patch_posterize(transform):
    # timm's RandAugment maps magnitude 10 (reached by DeiT's m9-mstd0.5 noise) to posterize with
    # 0 bits, which Pillow 13 (here) rejects with a ValueError mid-epoch. Keep the old semantics.
    for t in getattr(transform, "transforms", []):
        for op in getattr(t, "ops", []):
            if "Posterize" in getattr(op, "name", ""):
                op.aug_fn = _posterize_zero_bits_ok
    return transform


def build_transform(recipe: Recipe, training: bool):
    """timm's DeiT transform: ``PIL image -> (3, img_size, img_size)`` float tensor."""
    a = recipe.augment
    if not training:
        return create_transform(
            recipe.model.img_size, is_training=False, interpolation=a.interpolation,
            crop_pct=a.crop_pct, mean=a.mean, std=a.std,
        )  # fmt: skip
    return _patch_posterize(create_transform(
        recipe.model.img_size, is_training=True, scale=a.scale, hflip=a.hflip,
        color_jitter=a.color_jitter, auto_augment=a.auto_augment, interpolation=a.interpolation,
        re_prob=a.re_prob, re_mode=a.re_mode, re_count=1, mean=a.mean, std=a.std,
    ))  # fmt: skip


def build_mixup(recipe: Recipe, num_classes: int) -> Mixup | None:
    """timm's Mixup/CutMix (it also applies label smoothing to the mixed targets), or None."""
    a = recipe.augment
    if a.mixup <= 0 and a.cutmix <= 0:
        return None
    return Mixup(
        mixup_alpha=a.mixup, cutmix_alpha=a.cutmix, prob=a.mixup_prob, switch_prob=a.mixup_switch_prob,
        mode="batch", label_smoothing=a.label_smoothing, num_classes=num_classes,
    )  # fmt: skip


def local_batch_size(global_batch: int, world_size: int) -> int:
    if global_batch % world_size:
        raise ValueError(
            f"train.batch_size (the global batch, {global_batch}) must be divisible by the number of "
            f"processes ({world_size})"
        )
    return global_batch // world_size


def train_loader(
    samples: Sequence[Sample], recipe: Recipe, dist_info: DistInfo, mixup: bool
) -> tuple[DataLoader, ResumableSampler]:
    """Training loader (drop_last) and its sampler; call ``sampler.set_position`` before each epoch.

    With ``data.cache`` the split is read from its uint8 tensor cache and batches are augmented
    on tensors, in this process (no worker: a batch costs about a millisecond)."""
    if recipe.data.cache:
        a = recipe.augment
        ds = image_cache.CachedImages(
            _cache(samples, recipe), a.mean, a.std, recipe.train.seed, a.pad, a.hflip, even=mixup
        )
        return resumable_loader(ds, recipe, dist_info, image_cache.collate_batch, workers=0)
    ds = ImageSamples(samples, build_transform(recipe, True), recipe.train.seed, recipe.data.on_bad_image)
    return resumable_loader(ds, recipe, dist_info, _collate_even if mixup else collate_skipping)


def _cache(samples: Sequence[Sample], recipe: Recipe) -> image_cache.ImageCache:
    a = recipe.augment
    geometry = image_cache.Geometry(recipe.model.img_size, a.crop_pct, a.interpolation)
    return image_cache.load_or_build(samples, geometry, recipe.data.cache_dir, recipe.data.on_bad_image)


def resumable_loader(
    ds: Dataset,
    recipe: Recipe,
    dist_info: DistInfo,
    collate_fn: Callable[[Any], Any],
    workers: int | None = None,
) -> tuple[DataLoader, ResumableSampler]:
    """A training loader of ``ds`` (drop_last, this process's share of the global batch) and its
    resumable sampler; ``ds`` takes ``(epoch, index)`` keys. ``workers``: None for
    ``data.num_workers``."""
    batch = local_batch_size(recipe.train.batch_size, dist_info.world_size)
    sampler = ResumableSampler(ds, dist_info.world_size, dist_info.rank, recipe.train.seed)
    if sampler.num_samples < batch:
        raise ValueError(
            f"each process gets {sampler.num_samples} training images per epoch, fewer than its batch "
            f"of {batch}; lower train.batch_size or use more data"
        )
    workers = recipe.data.num_workers if workers is None else workers
    loader = DataLoader(
        ds, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=True, collate_fn=collate_fn,
        persistent_workers=workers > 0, pin_memory=dist_info.device.type == "cuda",
        generator=torch.Generator(), worker_init_fn=_ignore_stop_signals,
    )  # fmt: skip
    return loader, sampler


def eval_loader(
    samples: Sequence[Sample], recipe: Recipe, dist_info: DistInfo, batch_size: int
) -> DataLoader:
    if recipe.data.cache:
        a = recipe.augment
        ds: Dataset = image_cache.CachedImages(_cache(samples, recipe), a.mean, a.std)
        collate, workers = image_cache.collate_batch, 0
    else:
        ds = ImageSamples(samples, build_transform(recipe, False), on_bad_image=recipe.data.on_bad_image)
        collate, workers = collate_skipping, recipe.data.num_workers
    return DataLoader(
        ds, batch_size=batch_size, sampler=ShardSampler(len(ds), dist_info.rank, dist_info.world_size),
        num_workers=workers, collate_fn=collate,
        pin_memory=dist_info.device.type == "cuda", generator=torch.Generator(),
        worker_init_fn=_ignore_stop_signals,
    )  # fmt: skip
