"""Segment Anything data: SA-1B-style training folders, COCO/LVIS-format evaluation sets, prompts.

Training data (SA-1B layout): every image ``xxx.jpg`` under ``data.root/data.train_dir``
(searched recursively) has a ``xxx.json`` beside it holding ``{"image": {...}, "annotations":
[{"segmentation": {"size": [h, w], "counts": "..."}, "bbox": [x, y, w, h], ...}, ...]}``,
COCO run-length encoded masks that pycocotools decodes. Evaluation data is one COCO or LVIS
instances JSON (polygons or RLE, decoded with pycocotools' ``COCO.annToMask``) and its images.

Preprocessing is SAM's: the longest side is resized to ``img_size`` (segment_anything's
``ResizeLongestSide``), pixels are normalised with SAM's mean/std, and the image is padded at
the bottom/right to ``img_size x img_size``. Training masks go through the same resize
(bilinear on the 0/1 mask, threshold 0.5) and padding; evaluation masks stay at the original
resolution (predictions are brought back there, as ``SamPredictor`` does).

Prompts (all coordinates are pixel indices ``(x, y)``, SAM's convention; boxes are
``(x0, y0, x1, y1)`` with ``x1 = x_max + 1``, i.e. COCO's ``[x, y, x + w, y + h]`` of the mask):

* a point is a pixel drawn uniformly among the mask's pixels (with replacement);
* the box is the mask's tight bounding box, in training optionally jittered by Gaussian noise
  with a standard deviation of ``box_noise`` times the box side, clipped to ``box_noise_max``
  pixels (SAM's "10% of the side, at most 20 pixels").

Determinism: a training sample is a pure function of ``(seed, epoch, index)``, an evaluation
sample of ``(seed, index)`` (one ``numpy`` Generator per sample).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..models.registry import SAM_PIXEL_MEAN, SAM_PIXEL_STD
from .data import BadImageError, derive_seed

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


# ---------------------------------------------------------------------------------------------
# masks and prompts


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A COCO segmentation (compressed RLE with str or bytes counts, uncompressed RLE, or
    polygons) -> ``(height, width)`` uint8 0/1 mask, decoded by pycocotools."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, Mapping):
        counts = segmentation.get("counts")
        if isinstance(counts, list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(dict(segmentation), height, width)
        elif isinstance(counts, (str, bytes)):
            rle = {"size": list(segmentation["size"]), "counts": counts}
            if isinstance(counts, str):
                rle["counts"] = counts.encode("ascii")
        else:
            raise ValueError(f"an RLE segmentation needs 'counts' (str or list), got {type(counts).__name__}")
    elif isinstance(segmentation, list):  # polygons
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    else:
        raise ValueError(f"a segmentation must be an RLE mapping or a polygon list, got {segmentation!r}")
    return np.ascontiguousarray(mask_utils.decode(rle), dtype=np.uint8)


def mask_box(mask: torch.Tensor) -> torch.Tensor:
    """``(H, W)`` bool mask -> ``(4,)`` float box ``(x0, y0, x_max + 1, y_max + 1)`` (COCO's
    bbox of the mask as corners). The mask must not be empty."""
    ys = torch.nonzero(mask.any(1)).flatten()
    xs = torch.nonzero(mask.any(0)).flatten()
    if len(ys) == 0:
        raise ValueError("the mask is empty; it has no box")
    return torch.tensor([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], dtype=torch.float32)


def sample_points(mask: torch.Tensor, n: int, rng: np.random.Generator) -> torch.Tensor:
    """``n`` pixels drawn uniformly (with replacement) among the ``True`` pixels of ``mask``
    ``(H, W)``: ``(n, 2)`` float ``(x, y)``."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if len(ys) == 0:
        raise ValueError("the mask is empty; no point can be drawn inside it")
    pick = torch.from_numpy(rng.integers(0, len(ys), size=n))
    return torch.stack([xs[pick], ys[pick]], dim=1).float()


def jitter_box(
    box: torch.Tensor, rng: np.random.Generator, noise: float, max_px: float, hw: tuple[int, int]
) -> torch.Tensor:
    """SAM's box noise: each coordinate moves by ``N(0, (noise * side)^2)`` clipped to
    ``+-max_px``; the result is clamped to the ``hw`` image and kept non-degenerate."""
    if noise <= 0 or max_px <= 0:
        return box.clone()
    w, h = float(box[2] - box[0]), float(box[3] - box[1])
    std = np.array([w, h, w, h]) * noise
    delta = np.clip(rng.normal(0.0, 1.0, 4) * std, -max_px, max_px)
    out = box + torch.from_numpy(delta).float()
    x0, x1 = sorted((float(out[0].clamp(0, hw[1])), float(out[2].clamp(0, hw[1]))))
    y0, y1 = sorted((float(out[1].clamp(0, hw[0])), float(out[3].clamp(0, hw[0]))))
    return torch.tensor([x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)], dtype=torch.float32)


# ---------------------------------------------------------------------------------------------
# SAM's preprocessing


def preprocess_image(image: np.ndarray, img_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """``(H, W, 3)`` uint8 RGB -> ``((3, img_size, img_size)`` float, ``(h, w)`` after resizing),
    exactly as ``SamPredictor.set_image`` followed by ``Sam.preprocess``."""
    from segment_anything.utils.transforms import ResizeLongestSide

    resized = ResizeLongestSide(img_size).apply_image(image)
    h, w = resized.shape[:2]
    x = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1).float()
    mean = torch.tensor(SAM_PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(SAM_PIXEL_STD).view(3, 1, 1)
    x = (x - mean) / std
    return F.pad(x, (0, img_size - w, 0, img_size - h)), (h, w)


def resize_masks(masks: torch.Tensor, input_size: tuple[int, int], img_size: int) -> torch.Tensor:
    """``(M, H, W)`` 0/1 masks -> ``(M, img_size, img_size)`` bool in the padded input frame
    (bilinear resize to ``input_size``, threshold 0.5, zero padding)."""
    h, w = input_size
    if masks.shape[0] == 0:
        return torch.zeros(0, img_size, img_size, dtype=torch.bool)
    resized = F.interpolate(masks[:, None].float(), size=(h, w), mode="bilinear", align_corners=False)
    return F.pad(resized[:, 0] >= 0.5, (0, img_size - w, 0, img_size - h))


def _load_rgb(path: str | Path) -> np.ndarray:
    from PIL import Image

    with open(path, "rb") as f:
        return np.asarray(Image.open(f).convert("RGB"))


# ---------------------------------------------------------------------------------------------
# samples and batches


@dataclass
class SamTarget:
    """Training targets of one image, in the padded ``img_size`` input frame.

    masks ``(M, S, S)`` bool; boxes ``(M, 4)`` (jittered); points ``(M, P, 2)`` with
    ``P = max(num_points)``; ``num_points`` ``(M,)``: how many of the points prompt mask m,
    0 when the box prompts it.
    """

    masks: torch.Tensor
    boxes: torch.Tensor
    points: torch.Tensor
    num_points: torch.Tensor


@dataclass
class SamEvalTarget:
    """Evaluation targets of one image at its original resolution ``(H, W)``: masks
    ``(M, H, W)`` bool, boxes ``(M, 4)`` (exact), points ``(M, P, 2)``, and the resized size
    ``input_size`` ``(h, w)`` that maps the coordinates into the model's frame."""

    masks: torch.Tensor
    boxes: torch.Tensor
    points: torch.Tensor
    input_size: tuple[int, int]
    original_size: tuple[int, int]


@dataclass
class SamBatch:
    images: torch.Tensor  # (B, 3, S, S)
    targets: list[Any]  # SamTarget or SamEvalTarget per image
    skipped: int  # images dropped from this batch (unreadable, or no usable mask)

    def pin_memory(self) -> SamBatch:
        """The images in page-locked memory (called by ``DataLoader(pin_memory=True)``), so the
        trainer's non-blocking copy to the GPU is asynchronous. The targets stay as they are: they
        are indexed per prompt kind before each (small) copy, which makes an unpinned tensor anyway."""
        return SamBatch(self.images.pin_memory(), self.targets, self.skipped)


def collate_sam(items: list) -> SamBatch:
    good = [(x, t) for x, t in items if x is not None]
    if not good:
        raise BadImageError(f"none of the {len(items)} images of a batch was usable")
    return SamBatch(torch.stack([x for x, _ in good]), [t for _, t in good], len(items) - len(good))


def find_sa1b(root: str | Path, max_images: int | None = None) -> list[tuple[Path, Path]]:
    """``(image, annotation json)`` pairs under ``root`` (recursive), sorted by image path;
    the first ``max_images`` when given. Images without a JSON beside them are skipped."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"SA-1B data folder {str(root)!r} does not exist")
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    pairs = [(p, p.with_suffix(".json")) for p in images if p.with_suffix(".json").is_file()]
    if len(pairs) < len(images):
        logger.warning(
            "%d image(s) under %s have no .json beside them; skipped", len(images) - len(pairs), root
        )
    if not pairs:
        raise ValueError(
            f"no SA-1B samples under {str(root)!r}: expected images xxx.jpg, each with its "
            "annotations in xxx.json beside it"
        )
    return pairs[:max_images] if max_images is not None else pairs


class SA1BDataset(Dataset):
    """SA-1B-style training samples: key ``(epoch, index)`` -> ``(image (3, S, S), SamTarget)``,
    or ``(None, None)`` for an unreadable image (``on_bad_image="skip"``) or one without a
    mask that survives resizing.

    Per image, ``masks_per_image`` annotations are drawn without replacement (all if fewer);
    each mask gets its box prompt with probability ``box_prob``, else ``n`` points with ``n``
    drawn uniformly from ``num_points``.
    """

    def __init__(
        self,
        files: Sequence[tuple[Path, Path]],
        img_size: int,
        masks_per_image: int,
        box_prob: float = 0.5,
        num_points: Sequence[int] = (1, 3),
        box_noise: float = 0.1,
        box_noise_max: float = 20.0,
        seed: int = 0,
        on_bad_image: str = "skip",
    ) -> None:
        self.files = list(files)
        self.img_size = img_size
        self.masks_per_image = masks_per_image
        self.box_prob = box_prob
        self.num_points = tuple(num_points)
        self.box_noise, self.box_noise_max = box_noise, box_noise_max
        self.seed = seed
        self.on_bad_image = on_bad_image

    def __len__(self) -> int:
        return len(self.files)

    def _read(self, index: int) -> tuple[np.ndarray, list[dict]] | None:
        image_path, json_path = self.files[index]
        try:
            image = _load_rgb(image_path)
            anns = json.loads(json_path.read_text())["annotations"]
        except Exception as e:  # PIL / json raise several types for broken files
            if self.on_bad_image == "error":
                raise BadImageError(
                    f"cannot read sample {str(image_path)!r}: {e}; set data.on_bad_image=skip to skip "
                    "such files"
                ) from e
            logger.warning("skipping unreadable sample %s: %s", image_path, e)
            return None
        return image, anns

    def __getitem__(self, key: int | tuple[int, int]):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        read = self._read(index)
        if read is None:
            return None, None
        image, anns = read
        rng = np.random.default_rng(derive_seed(self.seed, epoch, index))
        x, input_size = preprocess_image(image, self.img_size)
        h0, w0 = image.shape[:2]
        masks = []
        for i in rng.permutation(len(anns)):  # the first masks_per_image that survive resizing
            seg = decode_segmentation(anns[i]["segmentation"], h0, w0)
            m = resize_masks(torch.from_numpy(seg)[None], input_size, self.img_size)[0]
            if m.any():
                masks.append(m)
            if len(masks) == self.masks_per_image:
                break
        if not masks:
            logger.warning(
                "skipping %s: no mask survives resizing to %d", self.files[index][0], self.img_size
            )
            return None, None
        target = self.prompts(torch.stack(masks), input_size, rng, train=True)
        return x, target

    def prompts(
        self, masks: torch.Tensor, input_size: tuple[int, int], rng: np.random.Generator, train: bool
    ) -> SamTarget:
        """Boxes (jittered when ``train``), points and the prompt choice for ``masks`` ``(M, S, S)``."""
        p = max(self.num_points)
        boxes, points, counts = [], [], []
        for m in masks:
            box = mask_box(m)
            boxes.append(
                jitter_box(box, rng, self.box_noise, self.box_noise_max, input_size) if train else box
            )
            points.append(sample_points(m, p, rng))
            use_box = rng.random() < self.box_prob
            counts.append(0 if use_box else int(self.num_points[rng.integers(len(self.num_points))]))
        return SamTarget(
            masks, torch.stack(boxes), torch.stack(points), torch.tensor(counts, dtype=torch.long)
        )


def _coco_file(img: Mapping[str, Any], images: Path) -> Path:
    """An image's path: ``file_name`` (COCO), else the tail of ``coco_url`` (LVIS), tried as
    ``images/<split>/<name>`` and ``images/<name>``."""
    if "file_name" in img:
        return images / img["file_name"]
    url = img.get("coco_url")
    if not url:
        raise ValueError(f"image {img.get('id')} has neither file_name nor coco_url")
    split, name = url.rstrip("/").split("/")[-2:]
    nested = images / split / name
    return nested if nested.is_file() else images / name


class CocoMaskDataset(Dataset):
    """COCO/LVIS instances for promptable segmentation: index -> ``(image (3, S, S),
    SamEvalTarget)``; images sorted by id, crowd and empty annotations left out, each mask with
    its exact box and ``num_points`` points drawn uniformly inside it (seeded by ``(seed, index)``).
    """

    def __init__(
        self,
        annotations: str | Path,
        images: str | Path,
        img_size: int,
        seed: int = 0,
        max_images: int | None = None,
        num_points: int = 3,
    ) -> None:
        from pycocotools.coco import COCO

        annotations, self.images = Path(annotations), Path(images)
        if not annotations.is_file():
            raise FileNotFoundError(f"annotation file {str(annotations)!r} does not exist")
        if not self.images.is_dir():
            raise FileNotFoundError(f"image folder {str(self.images)!r} does not exist")
        with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints its progress
            self.coco = COCO(str(annotations))
        self.ids = []
        for img_id in sorted(self.coco.imgs):
            if self._annotations(img_id):
                self.ids.append(img_id)
        if max_images is not None:
            self.ids = self.ids[:max_images]
        if not self.ids:
            raise ValueError(f"{str(annotations)!r} has no image with a non-crowd annotation")
        self.img_size, self.seed, self.num_points = img_size, seed, num_points

    def _annotations(self, img_id: int) -> list[dict]:
        anns = self.coco.imgToAnns.get(img_id, [])
        return sorted((a for a in anns if not a.get("iscrowd", 0)), key=lambda a: a["id"])

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        img_id = self.ids[index]
        info = self.coco.imgs[img_id]
        path = _coco_file(info, self.images)
        try:
            image = _load_rgb(path)
        except Exception as e:
            raise BadImageError(f"cannot read evaluation image {str(path)!r}: {e}") from e
        rng = np.random.default_rng(derive_seed(self.seed, index))
        hw = (int(info["height"]), int(info["width"]))
        if tuple(image.shape[:2]) != hw:
            raise ValueError(
                f"{str(path)!r} is {image.shape[1]}x{image.shape[0]} but its annotations say {hw[1]}x{hw[0]}"
            )
        masks = [torch.from_numpy(self.coco.annToMask(a)).bool() for a in self._annotations(img_id)]
        masks = [m for m in masks if m.any()]  # an empty mask has no point and no box
        x, input_size = preprocess_image(image, self.img_size)
        if not masks:
            empty = torch.zeros(0, *hw, dtype=torch.bool)
            return x, SamEvalTarget(
                empty, torch.zeros(0, 4), torch.zeros(0, self.num_points, 2), input_size, hw
            )
        stacked = torch.stack(masks)
        boxes = torch.stack([mask_box(m) for m in stacked])
        points = torch.stack([sample_points(m, self.num_points, rng) for m in stacked])
        return x, SamEvalTarget(stacked, boxes, points, input_size, hw)
