"""Data: the documented hold-out split, per-sample deterministic augmentation, unreadable images."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from train_util import make_image_folder, tiny_recipe

from routevit.train.data import (
    BadImageError,
    ImageSamples,
    build_transform,
    collate_skipping,
    find_splits,
    split_holdout,
)


def test_holdout_takes_lexicographically_last_files() -> None:
    samples = [(f"/d/a/{n}.jpg", 0) for n in ("10", "2", "03", "1")] + [("/d/b/x.jpg", 1), ("/d/b/y.jpg", 1)]
    train, val = split_holdout(samples, 1)
    assert val == [("/d/a/2.jpg", 0), ("/d/b/y.jpg", 1)]  # "2" > "10" > "1" > "03" as strings
    assert sorted(train) == [("/d/a/03.jpg", 0), ("/d/a/1.jpg", 0), ("/d/a/10.jpg", 0), ("/d/b/x.jpg", 1)]
    with pytest.raises(ValueError, match="nothing would be left for training"):
        split_holdout(samples, 2)


def test_find_splits_on_a_folder(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "d", classes=3, per_class=5)
    splits = find_splits(tiny_recipe(data, tmp_path / "o", data={"max_train_per_class": 2}))
    assert splits.classes == ["class_0", "class_1", "class_2"]
    assert [Path(p).name for p, t in splits.val if t == 0] == ["img_003.jpg", "img_004.jpg"]
    assert [Path(p).name for p, t in splits.train if t == 0] == ["img_000.jpg", "img_001.jpg"]


def test_augmentation_is_a_function_of_epoch_and_index(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "d", per_class=2, size=24)
    recipe = tiny_recipe(data, tmp_path / "o", data={"holdout_per_class": 0, "val_dir": None})
    samples = find_splits(recipe).train
    ds = ImageSamples(samples, build_transform(recipe, training=True), seed=3)
    torch.manual_seed(123)
    before = torch.rand(1)
    a, b = ds[(1, 2)][0], ds[(1, 2)][0]
    assert torch.equal(a, b)  # same key, same image, whatever happened in between
    assert not torch.equal(a, ds[(2, 2)][0])  # another epoch, another augmentation
    torch.manual_seed(123)
    assert torch.equal(before, torch.rand(1))  # the global RNG is left as it was


def test_unreadable_images_are_skipped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = make_image_folder(tmp_path / "d", per_class=3)
    bad = data / "class_0" / "img_001.jpg"
    bad.write_bytes(b"not a jpeg at all")
    recipe = tiny_recipe(data, tmp_path / "o", data={"holdout_per_class": 0, "val_dir": None})
    samples = find_splits(recipe).train
    ds = ImageSamples(samples, build_transform(recipe, training=False))
    with caplog.at_level(logging.WARNING):
        batch = collate_skipping([ds[i] for i in range(len(ds))])
    assert batch.skipped == 1 and batch.images.shape == (5, 3, 16, 16) and len(batch.targets) == 5
    assert str(bad) in caplog.text
    assert (
        collate_skipping([ds[i] for i in range(len(ds))], even=True).images.shape[0] == 4
    )  # Mixup needs even

    strict = ImageSamples(samples, build_transform(recipe, training=False), on_bad_image="error")
    with pytest.raises(BadImageError, match=r"img_001\.jpg.*data.on_bad_image=skip"):
        strict[1]


def test_randaugment_posterize_with_zero_bits_does_not_crash(tmp_path: Path) -> None:
    # DeiT's rand-m9-mstd0.5-inc1 reaches magnitude 10 -> posterize(0 bits); Pillow 13 raises.
    from PIL import Image

    recipe = tiny_recipe(tmp_path, tmp_path, augment={"auto_augment": "rand-m10-n1-inc1"})
    transform = build_transform(recipe, training=True)
    rand_augment = next(t for t in transform.transforms if hasattr(t, "ops"))
    posterize = next(op for op in rand_augment.ops if "Posterize" in op.name)
    posterize.prob = 1.0
    out = posterize(Image.new("RGB", (8, 8), (200, 100, 50)))
    assert out.getextrema() == ((0, 0), (0, 0), (0, 0))
