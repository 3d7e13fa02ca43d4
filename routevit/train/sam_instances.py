"""Zero-shot instance segmentation with detector boxes: the fourth SAM column of the paper's
Table 2 (COCO mask AP, with ViTDet-H boxes in the paper).

Protocol. Every detection (COCO results format: ``image_id``, ``category_id``, ``bbox [x, y, w,
h]`` in pixels, ``score``) prompts SAM's prompt encoder and mask decoder once with its box; the
image encoder runs once per image. SAM's single output for a box is kept
(``multimask_output=False``, as SAM's paper does for boxes); ``multimask=True`` keeps the best of
the three outputs by predicted IoU instead. Preprocessing and postprocessing are
``SamPredictor``'s: ``ResizeLongestSide``, ``Sam.preprocess`` (normalise, pad),
``apply_boxes_torch``, ``Sam.postprocess_masks`` to the original size, threshold
``Sam.mask_threshold``. The mask gets the detector's score and category; masks are RLE-encoded
with pycocotools and scored by ``COCOeval(iouType="segm")`` (results carry no ``bbox``, so
pycocotools takes each result's area from its mask, the results format for ``segm``).

Detections: those with ``score >= score_threshold`` are kept, then the ``max_detections``
highest-scoring per image (COCOeval scores at most 100 per image). Boxes that stick out of the
image are clipped to it; a box with no area inside the image is an error. The evaluated images
are all images of the annotations (sorted by id; the first ``max_images`` when given), with or
without detections.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .checkpoint import atomic_write_text, load_into, resolve_checkpoint
from .config import load_recipe
from .evaluate import autocast
from .sam_data import _coco_file

logger = logging.getLogger("routevit.train")

# COCOeval.stats, in its order
METRICS = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large",
           "ar1", "ar10", "ar100", "ar_small", "ar_medium", "ar_large")  # fmt: skip
ENTRY = "{image_id, category_id, bbox: [x, y, w, h], score}"
RESULTS_FORMAT = f"a JSON list of {ENTRY} (COCO results format)"


# ---------------------------------------------------------------------------------------------
# inputs


@dataclass(frozen=True)
class ImageDetections:
    """The kept detections of one image, by descending score: boxes ``(n, 4)`` float
    ``(x0, y0, x1, y1)`` in original pixels (clipped to the image), scores ``(n,)``,
    category_ids ``(n,)`` long."""

    boxes: torch.Tensor
    scores: torch.Tensor
    category_ids: torch.Tensor


@dataclass
class InstanceTask:
    """Everything checked before a model runs: the ground truth, the evaluated image ids, the
    kept detections of each image that has any, and those images' files."""

    gt: Any  # pycocotools COCO
    image_ids: list[int]
    detections: dict[int, ImageDetections]
    files: dict[int, Path]
    detections_in_file: int


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_detections(source: str | Path | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A detections file (or an already-loaded list) in COCO results format, checked entry by
    entry; raises ``ValueError`` naming the first entry that is not ``{image_id, category_id,
    bbox [x, y, w, h], score}``."""
    name = "detections"
    if isinstance(source, (str, Path)):
        path, name = Path(source), f"detections file {str(source)!r}"
        if not path.is_file():
            raise FileNotFoundError(f"detections file {str(path)!r} does not exist")
        try:
            source = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{name} is not JSON ({e}); expected {RESULTS_FORMAT}") from None
    if isinstance(source, Mapping):
        hint = " (an instances/ground-truth file?)" if "annotations" in source else ""
        raise ValueError(f"{name}: expected {RESULTS_FORMAT}, got a JSON object with keys "
                         f"{sorted(source)[:6]}{hint}")  # fmt: skip
    if not isinstance(source, Sequence) or isinstance(source, str):
        raise ValueError(f"{name}: expected {RESULTS_FORMAT}, got {type(source).__name__}")
    if len(source) == 0:
        raise ValueError(f"{name} is empty: expected {RESULTS_FORMAT} with at least one detection")
    out = []
    for i, d in enumerate(source):
        where = f"{name}, entry {i}"
        if not isinstance(d, Mapping):
            raise ValueError(f"{where}: expected an object {ENTRY}, got {d!r:.80}")
        missing = [k for k in ("image_id", "category_id", "bbox", "score") if k not in d]
        if missing:
            raise ValueError(f"{where}: expected {ENTRY} (COCO results format); missing {missing}, got "
                             f"keys {sorted(d)}")  # fmt: skip
        for key in ("image_id", "category_id"):
            if not isinstance(d[key], int) or isinstance(d[key], bool):
                raise ValueError(f"{where}: {key} must be an integer id, got {d[key]!r}")
        bbox = d["bbox"]
        if not isinstance(bbox, Sequence) or len(bbox) != 4 or not all(_number(v) for v in bbox):
            raise ValueError(f"{where}: bbox must be 4 finite numbers [x, y, w, h], got {bbox!r:.80}")
        if not _number(d["score"]):
            raise ValueError(f"{where}: score must be a finite number, got {d['score']!r}")
        out.append({"image_id": d["image_id"], "category_id": d["category_id"],
                    "bbox": [float(v) for v in bbox], "score": float(d["score"])})  # fmt: skip
    return out


def load_annotations(path: str | Path) -> Any:
    """A COCO instances JSON as pycocotools ``COCO`` (quietly); LVIS files are refused (their
    AP is the federated protocol of lvis-api, which COCOeval does not implement)."""
    from pycocotools.coco import COCO

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {str(path)!r} does not exist")
    with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints its progress
        gt = COCO(str(path))
    if not gt.imgs or "categories" not in gt.dataset:
        raise ValueError(f"{str(path)!r}: expected COCO instances with 'images' and 'categories'")
    if any("neg_category_ids" in img or "not_exhaustive_category_ids" in img for img in gt.imgs.values()):
        raise ValueError(f"{str(path)!r} is an LVIS file: LVIS AP needs lvis-api's federated "
                         "evaluation; instance AP here is COCO's (COCOeval)")  # fmt: skip
    return gt


def _ids(values: set[int], limit: int = 5) -> str:
    ids = sorted(values)
    return ", ".join(map(str, ids[:limit])) + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


def select_detections(
    detections: Sequence[Mapping[str, Any]], gt: Any, image_ids: Sequence[int],
    score_threshold: float = 0.0, max_detections: int | None = 100,
) -> dict[int, ImageDetections]:  # fmt: skip
    """Check ``detections`` (from :func:`read_detections`) against the annotations ``gt`` and
    keep, per image of ``image_ids``, those with ``score >= score_threshold``, at most
    ``max_detections`` by descending score; boxes become clipped ``(x0, y0, x1, y1)``."""
    unknown = {d["image_id"] for d in detections} - set(gt.imgs)
    if unknown:
        raise ValueError(f"detections name image ids that the annotations lack: {_ids(unknown)} (the "
                         f"annotations have {len(gt.imgs)} images, ids {_ids(set(gt.imgs), 3)})")  # fmt: skip
    unknown = {d["category_id"] for d in detections} - set(gt.cats)
    if unknown:
        raise ValueError(f"detections name category ids that the annotations lack: {_ids(unknown)} "
                         f"(expected one of {_ids(set(gt.cats), 8)})")  # fmt: skip
    if max_detections is not None and max_detections < 1:
        raise ValueError(f"max_detections must be at least 1 (or None), got {max_detections}")
    keep = set(image_ids)
    per_image: dict[int, list[tuple[float, list[float], int]]] = {}
    for i, d in enumerate(detections):
        info = gt.imgs[d["image_id"]]
        w_img, h_img = float(info["width"]), float(info["height"])
        x, y, w, h = d["bbox"]
        x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, w_img), min(y + h, h_img)
        if w <= 0 or h <= 0 or x1 <= x0 or y1 <= y0:
            raise ValueError(
                f"detection {i} (image {d['image_id']}, {int(w_img)}x{int(h_img)}): bbox {d['bbox']} has no "
                "area inside the image; expected [x, y, w, h] in pixels with w, h > 0"
            )
        if d["image_id"] in keep and d["score"] >= score_threshold:
            per_image.setdefault(d["image_id"], []).append((d["score"], [x0, y0, x1, y1], d["category_id"]))
    out = {}
    for img_id, dets in per_image.items():
        dets = sorted(dets, key=lambda t: -t[0])[:max_detections]  # stable: file order on ties
        out[img_id] = ImageDetections(
            torch.tensor([b for _, b, _ in dets], dtype=torch.float32),
            torch.tensor([s for s, _, _ in dets], dtype=torch.float64),
            torch.tensor([c for _, _, c in dets], dtype=torch.long),
        )
    if not out:
        raise ValueError(f"no detection left: {len(detections)} in the file, none with score >= "
                         f"{score_threshold} on the {len(keep)} evaluated images")  # fmt: skip
    return out


def prepare_instances(
    annotations: str | Path, detections: str | Path | Sequence[Mapping[str, Any]], images: str | Path,
    max_images: int | None = None, score_threshold: float = 0.0, max_detections: int | None = 100,
) -> InstanceTask:  # fmt: skip
    """Read and check annotations, detections and image files (no model runs)."""
    gt = load_annotations(annotations)
    images = Path(images)
    if not images.is_dir():
        raise FileNotFoundError(f"image folder {str(images)!r} does not exist")
    dets = read_detections(detections)
    image_ids = sorted(gt.imgs)[:max_images] if max_images is not None else sorted(gt.imgs)
    if not image_ids:
        raise ValueError(f"max_images must be at least 1, got {max_images}")
    kept = select_detections(dets, gt, image_ids, score_threshold, max_detections)
    files = {}
    for img_id in sorted(kept):
        path = _coco_file(gt.imgs[img_id], images)
        if not path.is_file():
            raise ValueError(f"image {img_id}: expected its file at {str(path)!r}, which does not exist")
        files[img_id] = path
    return InstanceTask(gt, image_ids, kept, files, len(dets))


# ---------------------------------------------------------------------------------------------
# predictors


class BoxPromptPredictor(Protocol):
    """What :func:`run_instances` needs, in ``SamPredictor``'s shape: one image, then its boxes."""

    def set_image(self, image: np.ndarray, image_id: int) -> None:
        """``(H, W, 3)`` uint8 RGB image (``image_id`` for predictors that want it)."""
        ...

    def predict_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """``(n, 4)`` ``(x0, y0, x1, y1)`` in original pixels -> ``(n, H, W)`` bool masks."""
        ...


class SamBoxPredictor:
    """SAM's box inference, batched over boxes: ``SamPredictor.set_image`` + ``predict_torch``
    (``multimask``: the best of three outputs by predicted IoU; else SAM's single output).
    ``amp="bf16"`` runs the encoder and decoder under autocast."""

    def __init__(self, sam: nn.Module, multimask: bool = False, amp: str = "none") -> None:
        from segment_anything.utils.transforms import ResizeLongestSide

        self.sam, self.multimask, self.amp = sam, multimask, amp
        self.device = next(sam.parameters()).device
        self.transform = ResizeLongestSide(sam.image_encoder.img_size)

    @torch.no_grad()
    def set_image(self, image: np.ndarray, image_id: int = -1) -> None:
        resized = torch.as_tensor(self.transform.apply_image(image), device=self.device)
        x = self.sam.preprocess(resized.permute(2, 0, 1).contiguous()[None])  # (1, 3, S, S)
        self.original_size, self.input_size = tuple(image.shape[:2]), tuple(resized.shape[:2])
        with autocast(self.device, self.amp):
            self.features = self.sam.image_encoder(x)  # (1, C, g, g)

    @torch.no_grad()
    def predict_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        from .sam_task import decode

        boxes = self.transform.apply_boxes_torch(boxes.to(self.device).float(), self.original_size)
        prompt = {"points": None, "boxes": boxes}
        with autocast(self.device, self.amp):
            pe = self.sam.prompt_encoder.get_dense_pe()
            logits, iou = decode(self.sam, self.features, pe, prompt, multimask=self.multimask)
        if logits.shape[1] > 1:  # (n, 3, 4g, 4g): the output with the highest predicted IoU
            logits = logits.gather(1, iou.argmax(1).view(-1, 1, 1, 1).expand(-1, 1, *logits.shape[-2:]))
        masks = self.sam.postprocess_masks(logits.float(), self.input_size, self.original_size)
        return (masks[:, 0] > self.sam.mask_threshold).cpu()


# ---------------------------------------------------------------------------------------------
# evaluation


class _Images(Dataset):
    """Index -> ``(image_id, (H, W, 3) uint8 array or None, error or None)``; a loader worker
    decodes, the main process raises (one line, not a worker traceback)."""

    def __init__(self, task: InstanceTask) -> None:
        self.ids, self.task = sorted(task.files), task

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray | None, str | None]:
        from PIL import Image

        img_id = self.ids[index]
        path, info = self.task.files[img_id], self.task.gt.imgs[img_id]
        try:
            with open(path, "rb") as f:
                image = np.asarray(Image.open(f).convert("RGB"))
        except Exception as e:  # PIL raises several types for broken files
            return img_id, None, f"cannot read image {img_id} at {str(path)!r}: {e}"
        if image.shape[:2] != (int(info["height"]), int(info["width"])):
            return img_id, None, (f"image {img_id} at {str(path)!r} is {image.shape[1]}x{image.shape[0]} but "
                                  f"the annotations say {info['width']}x{info['height']}")  # fmt: skip
        return img_id, image, None


def _identity(item: Any) -> Any:
    return item


def encode_masks(masks: torch.Tensor) -> list[dict[str, Any]]:
    """``(n, H, W)`` bool -> n compressed RLEs ``{"size": [H, W], "counts": str}`` (pycocotools)."""
    from pycocotools import mask as mask_utils

    # (n, W, H) C-contiguous is (H, W, n) Fortran-contiguous: what pycocotools encodes
    fortran = masks.to(torch.uint8).permute(0, 2, 1).contiguous().numpy().transpose(2, 1, 0)
    rles = mask_utils.encode(np.asfortranarray(fortran))
    return [{"size": r["size"], "counts": r["counts"].decode("ascii")} for r in rles]


def coco_mask_ap(gt: Any, results: Sequence[Mapping[str, Any]], image_ids: Sequence[int]) -> dict[str, Any]:
    """``COCOeval(gt, gt.loadRes(results), "segm")`` on ``image_ids``: the twelve
    ``COCOeval.stats`` in percent under :data:`METRICS` (None where COCOeval says -1: no ground
    truth in that area range), the raw ``stats`` (fractions) and the printed ``summary``."""
    from pycocotools.cocoeval import COCOeval

    if not results:
        raise ValueError("no segmentation results to evaluate")
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        dt = gt.loadRes([dict(r) for r in results])  # loadRes adds fields to its input
        ev = COCOeval(gt, dt, iouType="segm")
        ev.params.imgIds = sorted(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [float(v) for v in ev.stats]
    out: dict[str, Any] = {k: (None if v < 0 else 100.0 * v) for k, v in zip(METRICS, stats, strict=True)}
    summary = [line for line in text.getvalue().splitlines() if line.startswith(" Average")]
    return {**out, "stats": stats, "summary": summary}


def predict_results(
    predictor: BoxPromptPredictor, task: InstanceTask, chunk: int = 64, num_workers: int = 0,
    progress: bool | None = None,
) -> Iterator[dict[str, Any]]:  # fmt: skip
    """COCO segmentation results ``{image_id, category_id, segmentation (RLE), score}``, image
    by image (the predictor sees each image once, then its boxes in chunks of ``chunk``). The
    progress bar shows when ``progress`` is True, or when None and stderr is a terminal."""
    from tqdm import tqdm

    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    loader = DataLoader(_Images(task), batch_size=None, num_workers=num_workers, collate_fn=_identity)
    show = sys.stderr.isatty() if progress is None else progress
    with tqdm(total=len(task.files), unit="image", desc="instance masks", disable=not show) as bar:
        for img_id, image, error in loader:
            if error is not None:
                raise ValueError(error)
            dets = task.detections[img_id]
            predictor.set_image(image, img_id)
            for start in range(0, len(dets.boxes), chunk):
                masks = predictor.predict_boxes(dets.boxes[start : start + chunk])
                n = min(chunk, len(dets.boxes) - start)
                if masks.shape != (n, h := image.shape[0], w := image.shape[1]):
                    raise ValueError(f"the predictor returned masks {tuple(masks.shape)} for {n} boxes on "
                                     f"a {h}x{w} image; expected ({n}, {h}, {w})")  # fmt: skip
                for j, rle in enumerate(encode_masks(masks.bool())):
                    yield {"image_id": img_id, "category_id": int(dets.category_ids[start + j]),
                           "segmentation": rle, "score": float(dets.scores[start + j])}  # fmt: skip
            bar.update(1)


def run_instances(
    predictor: BoxPromptPredictor, task: InstanceTask, chunk: int = 64, num_workers: int = 0,
    progress: bool | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Masks for every kept detection, then COCO mask AP over ``task.image_ids``."""
    start = time.perf_counter()
    results = list(predict_results(predictor, task, chunk, num_workers, progress))
    predicted = time.perf_counter() - start
    out = coco_mask_ap(task.gt, results, task.image_ids)
    out.update(detections=len(results), detections_in_file=task.detections_in_file,
               images=len(task.image_ids), images_with_detections=len(task.detections),
               seconds=time.perf_counter() - start, predict_seconds=predicted)  # fmt: skip
    return out


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA when available, else CPU; ``"cuda"`` without CUDA is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch.cuda.is_available() is False")
    return device


def amp_for(device: torch.device, bf16: bool) -> str:
    """``"bf16"`` (autocast) on CUDA when asked; on CPU bf16 is ignored with a warning."""
    if bf16 and device.type != "cuda":
        logger.warning("bf16 applies on CUDA only; evaluating in float32 on %s", device)
    return "bf16" if bf16 and device.type == "cuda" else "none"


def evaluate_instances_files(
    sam: nn.Module, annotations: str | Path, detections: str | Path | Sequence[Mapping[str, Any]],
    images: str | Path, max_images: int | None = None, score_threshold: float = 0.0,
    max_detections: int | None = 100, multimask: bool = False, chunk: int = 64, device: str = "auto",
    bf16: bool = False, num_workers: int = 0, progress: bool | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Instance mask AP of any ``Sam`` (e.g. ``build_sam("sam_vit_b", checkpoint=...)``) prompted
    by the boxes of ``detections`` on COCO ``annotations`` / ``images``."""
    task = prepare_instances(annotations, detections, images, max_images, score_threshold, max_detections)
    return _run_sam(sam, task, multimask, chunk, resolve_device(device), bf16, num_workers, progress)


def _single_process() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("instance AP runs in one process (COCOeval needs every result); run it "
                         "without torchrun")  # fmt: skip


def _run_sam(sam: nn.Module, task: InstanceTask, multimask: bool, chunk: int, device: torch.device,
             bf16: bool, num_workers: int, progress: bool | None) -> dict[str, Any]:  # fmt: skip
    _single_process()
    amp = amp_for(device, bf16)
    was_training = sam.training
    sam.to(device).eval()
    try:
        result = run_instances(SamBoxPredictor(sam, multimask, amp), task, chunk, num_workers, progress)
    finally:
        sam.train(was_training)
    box = "best of 3 by predicted IoU" if multimask else "single output (multimask_output=False)"
    result.update(device=str(device), amp=amp, multimask=multimask, box_output=box,
                  keep_ratio=getattr(sam.image_encoder, "keep_ratio", None))  # fmt: skip
    return result


def evaluate_instances_checkpoint(
    checkpoint: str | Path, detections: str | Path | None, annotations: str | None = None,
    images: str | None = None, max_images: int | None = None, score_threshold: float = 0.0,
    max_detections: int | None = 100, multimask: bool = False, chunk: int = 64, device: str = "auto",
    bf16: bool = False, num_workers: int | None = None, ema: bool = False, out: str | Path | None = None,
    keep_ratio: float | None = None, progress: bool | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Rebuild a ``task: sam`` checkpoint, evaluate its instance mask AP with ``detections``'
    boxes on ``annotations`` / ``images`` (default: the recipe's ``sam.val_annotations`` /
    ``sam.val_images``; image-reading workers: the recipe's ``data.num_workers``) and write the
    result atomically as JSON to ``out`` (default: ``sam_instances_<checkpoint>.json`` in the run
    folder). Inputs are checked before the model is built."""
    from .sam_task import build_sam_student

    _single_process()
    ckpt = resolve_checkpoint(checkpoint)
    recipe = load_recipe(ckpt / "recipe.yaml")
    if recipe.task != "sam":
        raise ValueError(f"instance AP needs a task: sam checkpoint; {str(ckpt)!r} is a {recipe.task} one")
    annotations = annotations or recipe.sam.val_annotations
    images = images or recipe.sam.val_images
    if detections is None or annotations is None or images is None:
        raise ValueError("instance AP needs --detections FILE (COCO results format), --annotations "
                         "FILE and --images DIR (or sam.val_annotations and sam.val_images in the "
                         "recipe)")  # fmt: skip
    max_images = recipe.sam.val_max_images if max_images is None else max_images
    task = prepare_instances(annotations, detections, images, max_images, score_threshold, max_detections)
    dev = resolve_device(device)
    sam = build_sam_student(recipe, pretrained=False)
    load_into(sam, ckpt, ema=ema)
    if keep_ratio is not None:
        if not callable(getattr(sam.image_encoder, "set_keep_ratio", None)):
            raise ValueError(f"--keep-ratio needs a routed encoder; {recipe.model.name!r} has no routing")
        sam.image_encoder.set_keep_ratio(keep_ratio)
    workers = recipe.data.num_workers if num_workers is None else num_workers
    result = _run_sam(sam, task, multimask, chunk, dev, bf16, workers, progress)
    result.update(checkpoint=str(ckpt), annotations=str(annotations), detections_file=str(detections),
                  images_dir=str(images), ema=ema, score_threshold=score_threshold,
                  max_detections=max_detections, max_images=max_images)  # fmt: skip
    if out is None:
        run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
        out = run / f"sam_instances_{ckpt.name}.json"
    result["json"] = str(out)
    write_result(result, out)
    return result


def write_result(result: Mapping[str, Any], path: str | Path) -> None:
    """``result`` as indented JSON at ``path``, atomically (temp file, fsync, ``os.replace``)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(result, indent=1) + "\n")


def format_instances_table(result: Mapping[str, Any]) -> str:
    """A Markdown table of a :func:`run_instances` result (percent)."""

    def cell(key: str) -> str:
        return "n/a" if result[key] is None else f"{result[key]:.2f}"

    rows = ["| metric | mask AP (%) |", "|---|---|"]
    names = {"ap": "AP (IoU 0.50:0.95)", "ap50": "AP50", "ap75": "AP75", "ap_small": "AP small",
             "ap_medium": "AP medium", "ap_large": "AP large"}  # fmt: skip
    rows += [f"| {label} | {cell(key)} |" for key, label in names.items()]
    box = result.get("box_output", "")
    n, with_dets, images = result["detections"], result["images_with_detections"], result["images"]
    return "\n".join(rows) + f"\n\n{n} detections on {with_dets} of {images} images; box prompts: {box}"
