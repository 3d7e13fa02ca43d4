"""The uint8 tensor cache of an image folder (data.cache) and the batch augmentation on tensors."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from train_util import make_image_folder, tiny_recipe

from routevit.train import checkpoint as ckpt
from routevit.train import image_cache, train
from routevit.train.config import recipe_from_dict
from routevit.train.data import ImageSamples, build_transform, find_splits
from routevit.train.image_cache import CachedImages, Geometry, crop_flip, load_or_build, sample_bits

TENSOR_AUGMENT = {"crop": "pad", "pad": 2, "auto_augment": None, "color_jitter": 0.0, "re_prob": 0.0,
                  "mixup": 0.0, "cutmix": 0.0}  # fmt: skip
CACHED = {"data": {"cache": True}, "augment": TENSOR_AUGMENT}


def _samples(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p), int(p.parent.name.split("_")[1])) for p in root.rglob("*.jpg"))


def test_the_cache_is_built_once_and_rebuilt_when_the_file_list_changes(tmp_path: Path, monkeypatch) -> None:
    root = make_image_folder(tmp_path / "data", classes=2, per_class=3, size=16)
    geometry = Geometry(16, 1.0, "bilinear")
    decoded = []
    real_decode = image_cache._decode
    monkeypatch.setattr(image_cache, "_decode", lambda p, g: decoded.append(p) or real_decode(p, g))
    cache_dir = tmp_path / "cache"
    first = load_or_build(_samples(root), geometry, cache_dir)
    assert len(decoded) == 6 and first.images.shape == (6, 3, 16, 16) and first.images.dtype == torch.uint8
    again = load_or_build(_samples(root), geometry, cache_dir)
    assert len(decoded) == 6 and again.path == first.path and torch.equal(again.images, first.images)

    # pixels as PIL decodes them, in the split's order
    expected = np.asarray(Image.open(_samples(root)[4][0]).convert("RGB")).transpose(2, 0, 1)
    assert np.array_equal(first.images[4].numpy(), expected)

    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "class_1" / "img_100.jpg")  # added
    added = load_or_build(_samples(root), geometry, cache_dir)
    assert added.path != first.path and len(added.images) == 7 and len(decoded) == 13

    replaced = root / "class_0" / "img_000.jpg"
    Image.fromarray(np.full((16, 16, 3), 255, np.uint8)).save(replaced)  # same name, new pixels
    stat = replaced.stat()
    os.utime(replaced, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    changed = load_or_build(_samples(root), geometry, cache_dir)
    assert changed.path not in (first.path, added.path) and int(changed.images[0].float().mean()) > 250

    other_size = load_or_build(_samples(root), Geometry(8, 1.0, "bilinear"), cache_dir)
    assert other_size.images.shape[-1] == 8 and other_size.path != changed.path
    assert not list(cache_dir.glob(".*tmp*"))  # written atomically, no temp file left


def test_cached_evaluation_batches_equal_the_pil_transform(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "data", classes=2, per_class=4, size=20)
    recipe = tiny_recipe(root, tmp_path / "out", data={"cache": True, "cache_dir": str(tmp_path / "c")},
                         model={"img_size": 16}, augment={**CACHED["augment"], "crop_pct": 0.8})  # fmt: skip
    splits = find_splits(recipe)
    pil = ImageSamples(splits.val, build_transform(recipe, False))
    a = recipe.augment
    geometry = Geometry(16, a.crop_pct, a.interpolation)
    cached = CachedImages(load_or_build(splits.val, geometry, recipe.data.cache_dir), a.mean, a.std)
    batch = cached.__getitems__(list(range(len(splits.val))))
    reference = torch.stack([pil[i][0] for i in range(len(splits.val))])
    one_level = 1.0 / 255 / min(a.std)  # the cache rounds to uint8 once
    assert batch.images.shape == reference.shape
    assert (batch.images - reference).abs().max() <= one_level + 1e-6
    assert batch.targets.tolist() == [t for _, t in splits.val]


def _find_crop(padded: np.ndarray, out: np.ndarray) -> set[tuple[int, int, bool]]:
    h, w = out.shape[-2:]
    found = set()
    for dy in range(padded.shape[-2] - h + 1):
        for dx in range(padded.shape[-1] - w + 1):
            window = padded[:, dy : dy + h, dx : dx + w]
            for flip in (False, True):
                if np.array_equal(window[..., ::-1] if flip else window, out):
                    found.add((dy, dx, flip))
    return found


def test_crop_flip_returns_crops_of_the_padded_image_uniformly() -> None:
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(1, 256, (400, 3, 6, 7), dtype=np.uint8))
    bits = sample_bits(3, 1, np.arange(400))
    out = crop_flip(images, bits, pad=2, hflip=0.5).numpy()
    seen = []
    for img, o in zip(images.numpy(), out, strict=True):
        padded = np.pad(img, ((0, 0), (2, 2), (2, 2)))
        matches = _find_crop(padded, o)
        assert matches, "an output that is not a (flipped) crop of the padded image"
        seen.append(sorted(matches)[0])
    dys = np.array([s[0] for s in seen])
    flips = np.array([s[2] for s in seen])
    assert set(dys.tolist()) == set(range(5)) and set(s[1] for s in seen) == set(range(5))
    assert 0.4 < flips.mean() < 0.6 and np.bincount(dys).min() > 40  # 80 expected per offset
    never = crop_flip(images, bits, pad=0, hflip=0.0)
    assert torch.equal(never, images)


def test_a_samples_augmentation_depends_on_seed_epoch_and_index_only(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "data", classes=2, per_class=6, size=16)
    cache = load_or_build(_samples(root), Geometry(16, 1.0, "bilinear"), tmp_path / "c")
    ds = CachedImages(cache, (0.5,) * 3, (0.25,) * 3, seed=7, pad=2, hflip=0.5)
    whole = ds.__getitems__([(2, i) for i in range(12)]).images
    alone = torch.cat([ds.__getitems__([(2, i)]).images for i in (11, 3, 0)])
    assert torch.equal(alone, whole[[11, 3, 0]])
    other_epoch = ds.__getitems__([(3, i) for i in range(12)]).images
    other_seed = CachedImages(cache, (0.5,) * 3, (0.25,) * 3, seed=8, pad=2, hflip=0.5)
    assert not torch.equal(other_epoch, whole)
    assert not torch.equal(other_seed.__getitems__([(2, i) for i in range(12)]).images, whole)
    with pytest.raises(ValueError, match="mixes epochs"):
        ds.__getitems__([(2, 0), (3, 1)])


def test_recipe_checks_of_the_tensor_path() -> None:
    base = {"data": {"cache": True}, "augment": {"crop": "pad", "auto_augment": None, "color_jitter": 0.0,
                                                 "re_prob": 0.0}}  # fmt: skip
    recipe_from_dict(base)
    with pytest.raises(ValueError, match="augment.auto_augment must be None with data.cache: true"):
        recipe_from_dict({**base, "augment": {**base["augment"], "auto_augment": "rand-m9"}})
    with pytest.raises(ValueError, match="augment.crop must be 'pad' with data.cache"):
        recipe_from_dict({**base, "augment": {**base["augment"], "crop": "random_resized"}})
    with pytest.raises(ValueError, match="augment.crop: pad needs data.cache: true"):
        recipe_from_dict({"augment": {"crop": "pad"}})
    with pytest.raises(ValueError, match="augment.pad must be >= 0"):
        recipe_from_dict({**base, "augment": {**base["augment"], "pad": -1}})


def test_training_from_the_cache_resumes_to_the_bit(tmp_path: Path, monkeypatch) -> None:
    data = make_image_folder(tmp_path / "data", per_class=10)
    sections = {**CACHED, "data": {"cache": True, "cache_dir": str(tmp_path / "cache")},
                "augment": {**CACHED["augment"], "mixup": 0.8}, "train": {"epochs": 2},
                "run": {"checkpoint_every_steps": 3}}  # fmt: skip
    full = train(tiny_recipe(data, tmp_path / "full", **sections))
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2  # training and validation splits

    original = ckpt.save_checkpoint

    def save_then_sigterm(root, step, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        path = original(root, step, *args, **kwargs)
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return path

    monkeypatch.setattr(ckpt, "save_checkpoint", save_then_sigterm)
    assert train(tiny_recipe(data, tmp_path / "cut", **sections)).status == "interrupted"
    monkeypatch.undo()
    resumed = train(tiny_recipe(data, tmp_path / "cut", **sections), resume=True)
    assert resumed.step == full.step and resumed.replica_digests == full.replica_digests
