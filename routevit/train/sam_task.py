"""The ``sam`` task: train a big.LITTLE Segment Anything model with SAM's mask losses and
feature distillation from the frozen vanilla SAM encoder, and evaluate promptable mIoU.

Model. The student is ``build_sam(model.name, checkpoint=model.pretrained, ...)``: our image
encoder with SAM's prompt encoder and mask decoder, all loaded from the official SAM checkpoint.
The encoder trains; the prompt encoder and mask decoder train only with ``sam.train_decoder``.
The teacher is the unrouted twin named by ``distill.teacher`` (``sam_vit_b`` / ``sam_vit_h``,
which reproduce segment_anything's ``ImageEncoderViT``), loaded from
``distill.teacher_checkpoint`` (default: ``model.pretrained``, the same SAM checkpoint).

Loss, per mask m and mask output k (logits ``z``, ground truth ``g`` at the loss resolution,
``p = sigmoid(z)``, means over the pixels)::

    focal_mk = mean(alpha_t * (1 - p_t)^gamma * BCE(z, g))      alpha 0.25, gamma 2 (sam.focal_*)
    dice_mk  = 1 - (2 * sum(p * g) + 1) / (sum(p) + sum(g) + 1)
    iou_mk   = |(z > 0) & g| / |(z > 0) | g|                      (no gradient)
    k*       = argmin_k (focal_weight * focal_mk + dice_weight * dice_mk)
    total = focal_weight * mean_m focal_mk* + dice_weight * mean_m dice_mk*
          + iou_weight * mean_m mean_k (iou_pred_mk - iou_mk)^2
          + lambda_fd * (1 - mean_{b,y,x} cos(student_emb[b, :, y, x], teacher_emb[b, :, y, x]))

with weights 20 / 1 / 1 (``sam.focal_weight``, ``dice_weight``, ``iou_weight``) and
``distill.lambda_fd``; embeddings are the encoders' ``(B, 256, 64, 64)`` outputs. A single-point
prompt uses SAM's three outputs (``multimask_output=True``) and only the best of them
(``k*``) gets the mask loss, as in SAM's training; the IoU head learns all three. Box and
multi-point prompts use the single output. ``sam.loss_resolution``: ``"low"`` (default)
downsamples the ground truth to the decoder's ``4 * grid`` logits (256 x 256 at 1024; area
interpolation, threshold 0.5); ``"input"`` upsamples the logits bilinearly to the padded
``img_size`` input instead (the first step of ``Sam.postprocess_masks``).

Evaluation (:func:`evaluate_sam`): per ground-truth mask, three prompt settings: one point (the
first of the mask's sampled points; SAM's three outputs, the one with the highest predicted IoU
kept), three points (the three sampled points at once, all positive; one output) and the box
(the mask's exact box; one output). Points are drawn uniformly inside the mask with the seed
``sam.eval_seed``. Predictions are upsampled to the original image as ``SamPredictor`` does and
thresholded at 0; mIoU is the mean IoU over all masks, in percent.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .checkpoint import load_into, resolve_checkpoint
from .config import Recipe, load_recipe, model_kwargs
from .data import ResumableSampler, ShardSampler, _ignore_stop_signals, resumable_loader
from .distributed import DistInfo, all_reduce_sum, cleanup, init_distributed
from .losses import feature_distillation_loss
from .sam_data import CocoMaskDataset, SA1BDataset, SamEvalTarget, SamTarget, collate_sam, find_sa1b

logger = logging.getLogger("routevit.train")

SETTINGS = ("1pt", "3pt", "box")


# ---------------------------------------------------------------------------------------------
# models


def encoder_overrides(recipe: Recipe, teacher: bool = False) -> dict[str, Any]:
    """The SAM encoder options of a recipe: ``img_size`` (model.img_size), drop path and keep
    ratio (student only), then ``model.kwargs`` / ``distill.teacher_kwargs``."""
    m = recipe.model
    extra = model_kwargs(recipe.distill.teacher_kwargs if teacher else m.kwargs)
    out: dict[str, Any] = {"img_size": m.img_size}
    if not teacher:
        out["drop_path_rate"] = m.drop_path_rate
        if m.keep_ratio is not None:
            out["keep_ratio"] = m.keep_ratio
    return {**out, **extra}


def _is_sam_encoder(name: str) -> bool:
    from routevit.models import list_models

    return name in list_models(task="sam")


def build_sam_student(recipe: Recipe, pretrained: bool = True) -> nn.Module:
    """The student ``Sam`` in train mode. ``model.pretrained``: an official SAM checkpoint file,
    or a routevit SAM run / checkpoint directory; ``pretrained=False`` skips it (before loading
    a checkpoint)."""
    from routevit.interop.sam import build_sam

    m = recipe.model
    if not _is_sam_encoder(m.name):
        raise ValueError(f"task sam needs a SAM encoder as model.name (e.g. blvit_sam_b_t), got {m.name!r}")
    source = m.pretrained if pretrained else None
    if source is not None and not Path(source).exists():
        raise FileNotFoundError(f"model.pretrained {source!r} does not exist")
    if source is not None and Path(source).is_dir():
        sam = build_sam(m.name, **encoder_overrides(recipe))
        load_into(sam, resolve_checkpoint(source))
    else:
        sam = build_sam(m.name, checkpoint=source, allow_missing=m.allow_missing, **encoder_overrides(recipe))
    train_decoder = recipe.sam.train_decoder
    sam.prompt_encoder.requires_grad_(train_decoder)
    sam.mask_decoder.requires_grad_(train_decoder)
    return sam.train()


def build_sam_teacher(recipe: Recipe) -> nn.Module | None:
    """The frozen vanilla encoder (eval mode), or None when ``distill.teacher`` is None."""
    from routevit.models import create_model

    d = recipe.distill
    if d.teacher is None:
        return None
    if not _is_sam_encoder(d.teacher):
        raise ValueError(
            f"task sam distills from a SAM encoder (sam_vit_b, sam_vit_h), got distill.teacher={d.teacher!r}"
        )
    ckpt = d.teacher_checkpoint or recipe.model.pretrained
    if ckpt is None:
        raise ValueError(
            "the SAM teacher needs distill.teacher_checkpoint or model.pretrained (a SAM checkpoint)"
        )
    if not Path(ckpt).is_file():
        raise FileNotFoundError(f"SAM teacher checkpoint {ckpt!r} does not exist (expected a file)")
    teacher = create_model(d.teacher, pretrained=ckpt, **encoder_overrides(recipe, teacher=True))
    logger.info("teacher %s from %s", d.teacher, ckpt)
    return teacher.eval().requires_grad_(False)


class PromptedSam(nn.Module):
    """The step's forward (the one DDP hooks): encoder on the images, then SAM's prompt
    encoder and mask decoder once per (image, prompt kind).

    ``forward(images (B, 3, S, S), targets) -> (embeddings (B, C, g, g), outputs)``;
    ``outputs[i]`` is a list of ``(mask indices (m,), logits (m, K, 4g, 4g), iou_pred (m, K))``
    for image i, K = 3 for single-point prompts and 1 otherwise.
    """

    def __init__(self, sam: nn.Module) -> None:
        super().__init__()
        self.sam = sam

    def forward(self, images: torch.Tensor, targets: list[SamTarget]):
        emb = self.sam.image_encoder(images)
        pe = self.sam.prompt_encoder.get_dense_pe()
        outputs = []
        for i, t in enumerate(targets):
            groups = []
            for n in sorted(set(t.num_points.tolist())):
                idx = torch.nonzero(t.num_points == n).flatten()
                if n == 0:
                    prompt = {"points": None, "boxes": t.boxes[idx].to(emb.device)}
                else:
                    coords = t.points[idx, :n].to(emb.device)
                    labels = torch.ones(coords.shape[:2], dtype=torch.long, device=emb.device)
                    prompt = {"points": (coords, labels), "boxes": None}
                logits, iou = decode(self.sam, emb[i : i + 1], pe, prompt, multimask=n == 1)
                groups.append((idx, logits, iou))
            outputs.append(groups)
        return emb, outputs


def decode(sam: nn.Module, emb: torch.Tensor, pe: torch.Tensor, prompt: dict, multimask: bool):
    """SAM's prompt encoder + mask decoder for one image embedding ``(1, C, g, g)`` and m
    prompts: ``(low-res logits (m, K, 4g, 4g), iou_pred (m, K))``."""
    sparse, dense = sam.prompt_encoder(points=prompt["points"], boxes=prompt["boxes"], masks=None)
    return sam.mask_decoder(
        image_embeddings=emb, image_pe=pe, sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense, multimask_output=multimask,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# losses


def sigmoid_focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0):
    """``mean over (H, W) of alpha_t (1 - p_t)^gamma BCE`` for ``(..., H, W)`` -> ``(...)``:
    torchvision's sigmoid_focal_loss, averaged per mask (``alpha < 0``: no weighting)."""
    from torchvision.ops import sigmoid_focal_loss as per_pixel

    return per_pixel(logits, target.to(logits.dtype), alpha, gamma, reduction="none").mean(dim=(-2, -1))


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """``1 - (2 sum(p g) + smooth) / (sum(p) + sum(g) + smooth)``, ``p = sigmoid``, per mask."""
    target = target.to(logits.dtype)
    p = torch.sigmoid(logits)
    inter = (p * target).sum(dim=(-2, -1))
    return 1 - (2 * inter + smooth) / (p.sum(dim=(-2, -1)) + target.sum(dim=(-2, -1)) + smooth)


def mask_iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of bool masks ``(..., H, W)`` -> ``(...)``; 0 when both are empty."""
    inter = (pred & target).sum(dim=(-2, -1)).float()
    union = (pred | target).sum(dim=(-2, -1)).float()
    return inter / union.clamp(min=1)


def targets_at(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(M, S, S)`` bool ground truth -> ``(M, h, w)`` bool (area interpolation, >= 0.5)."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    return F.interpolate(masks[:, None].float(), size=size, mode="area")[:, 0] >= 0.5


class SamLoss(nn.Module):
    """SAM's supervised loss plus feature distillation (see the module docstring)."""

    def __init__(
        self, focal_weight: float = 20.0, dice_weight: float = 1.0, iou_weight: float = 1.0,
        lambda_fd: float = 2.5, focal_alpha: float = 0.25, focal_gamma: float = 2.0,
        resolution: str = "low",
    ) -> None:  # fmt: skip
        super().__init__()
        self.focal_weight, self.dice_weight, self.iou_weight = focal_weight, dice_weight, iou_weight
        self.lambda_fd, self.alpha, self.gamma = lambda_fd, focal_alpha, focal_gamma
        if resolution not in ("low", "input"):
            raise ValueError(f"loss resolution must be 'low' or 'input', got {resolution!r}")
        self.resolution = resolution

    def mask_terms(self, logits: torch.Tensor, iou_pred: torch.Tensor, gt: torch.Tensor):
        """logits ``(m, K, h, w)``, iou_pred ``(m, K)``, gt ``(m, S, S)`` bool -> per-mask
        ``(focal, dice, iou_mse)``, each ``(m,)``, the mask terms of the best output."""
        logits = logits.float()
        if self.resolution == "input":
            logits = F.interpolate(logits, size=gt.shape[-2:], mode="bilinear", align_corners=False)
        g = targets_at(gt, tuple(logits.shape[-2:]))[:, None].expand_as(logits)
        focal = sigmoid_focal_loss(logits, g, self.alpha, self.gamma)
        dice = dice_loss(logits, g)
        best = (self.focal_weight * focal + self.dice_weight * dice).argmin(dim=1, keepdim=True)
        actual = mask_iou(logits.detach() > 0, g)
        iou_mse = (iou_pred.float() - actual).pow(2).mean(dim=1)
        return focal.gather(1, best)[:, 0], dice.gather(1, best)[:, 0], iou_mse

    def forward(self, outputs, targets: list[SamTarget], student_emb=None, teacher_emb=None):
        """``outputs`` and ``targets`` as :class:`PromptedSam`; returns the total and its
        detached parts ``loss_sup, loss_focal, loss_dice, loss_iou[, loss_fd]``."""
        focal, dice, iou = [], [], []
        for groups, t in zip(outputs, targets, strict=True):
            for idx, logits, iou_pred in groups:
                f, d, i = self.mask_terms(logits, iou_pred, t.masks[idx].to(logits.device))
                focal.append(f), dice.append(d), iou.append(i)
        focal_m, dice_m, iou_m = torch.cat(focal).mean(), torch.cat(dice).mean(), torch.cat(iou).mean()
        sup = self.focal_weight * focal_m + self.dice_weight * dice_m + self.iou_weight * iou_m
        parts = {"loss_sup": sup.detach(), "loss_focal": focal_m.detach(), "loss_dice": dice_m.detach(),
                 "loss_iou": iou_m.detach()}  # fmt: skip
        if teacher_emb is None:
            return sup, parts
        fd = embedding_distillation_loss(student_emb, teacher_emb)
        parts["loss_fd"] = fd.detach()
        return sup + self.lambda_fd * fd, parts


def embedding_distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``1 - mean cos`` over channels at every position of ``(B, C, H, W)`` embeddings."""
    return feature_distillation_loss(student.flatten(2).transpose(1, 2), teacher.flatten(2).transpose(1, 2))


def sam_loss_from_recipe(recipe: Recipe) -> SamLoss:
    s = recipe.sam
    return SamLoss(s.focal_weight, s.dice_weight, s.iou_weight, recipe.distill.lambda_fd, s.focal_alpha,
                   s.focal_gamma, s.loss_resolution)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# data loaders


def sam_train_loader(recipe: Recipe, info: DistInfo) -> tuple[DataLoader, ResumableSampler]:
    """SA-1B loader over ``data.root/data.train_dir`` (drop_last), with the resumable sampler."""
    if recipe.data.root is None:
        raise ValueError("no data folder: pass --data DIR (SA-1B-style images + json) or set data.root")
    files = find_sa1b(Path(recipe.data.root) / recipe.data.train_dir, recipe.sam.max_train_images)
    s = recipe.sam
    ds = SA1BDataset(files, recipe.model.img_size, s.masks_per_image, s.box_prob, s.num_points, s.box_noise,
                     s.box_noise_max, recipe.train.seed, recipe.data.on_bad_image)  # fmt: skip
    return resumable_loader(ds, recipe, info, collate_sam)


def sam_eval_loader(
    annotations: str | Path, images: str | Path, recipe: Recipe, info: DistInfo, batch_size: int,
    max_images: int | None = None, seed: int | None = None, num_workers: int | None = None,
) -> DataLoader:  # fmt: skip
    ds = CocoMaskDataset(annotations, images, recipe.model.img_size,
                         recipe.sam.eval_seed if seed is None else seed, max_images)  # fmt: skip
    workers = recipe.data.num_workers if num_workers is None else num_workers
    return DataLoader(
        ds, batch_size=batch_size, sampler=ShardSampler(len(ds), info.rank, info.world_size),
        num_workers=workers, collate_fn=collate_sam, pin_memory=info.device.type == "cuda",
        worker_init_fn=_ignore_stop_signals,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# evaluation


class MaskPredictor(Protocol):
    """What :func:`evaluate_sam` needs: image embeddings, then masks per prompt setting."""

    def embed(self, images: torch.Tensor) -> torch.Tensor: ...

    def predict(self, embedding: torch.Tensor, target: SamEvalTarget, setting: str) -> torch.Tensor:
        """``(M, H, W)`` bool masks at the original resolution for ``setting`` in SETTINGS."""
        ...


class SamMaskPredictor:
    """SAM's inference for the three settings (as ``SamPredictor.predict_torch``, batched over
    the masks of an image in chunks of ``chunk``)."""

    def __init__(self, sam: nn.Module, chunk: int = 32) -> None:
        from segment_anything.utils.transforms import ResizeLongestSide

        self.sam, self.chunk = sam, chunk
        self.transform = ResizeLongestSide(sam.image_encoder.img_size)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.sam.image_encoder(images)

    def predict(self, embedding: torch.Tensor, target: SamEvalTarget, setting: str) -> torch.Tensor:
        dev, size = embedding.device, target.original_size
        pe = self.sam.prompt_encoder.get_dense_pe()
        out = []
        for start in range(0, len(target.masks), self.chunk):
            sl = slice(start, start + self.chunk)
            if setting == "box":
                boxes = self.transform.apply_boxes_torch(target.boxes[sl], size).to(dev)
                prompt = {"points": None, "boxes": boxes}
            else:
                n = 1 if setting == "1pt" else 3
                coords = self.transform.apply_coords_torch(target.points[sl, :n], size).to(dev)
                labels = torch.ones(coords.shape[:2], dtype=torch.long, device=dev)
                prompt = {"points": (coords, labels), "boxes": None}
            logits, iou = decode(self.sam, embedding[None], pe, prompt, multimask=setting == "1pt")
            if logits.shape[1] > 1:  # SAM's ambiguity resolution: the highest predicted IoU
                logits = logits.gather(1, iou.argmax(1).view(-1, 1, 1, 1).expand(-1, 1, *logits.shape[-2:]))
            masks = self.sam.postprocess_masks(logits.float(), target.input_size, size)
            out.append(masks[:, 0] > self.sam.mask_threshold)
        return torch.cat(out).cpu()


@torch.no_grad()
def evaluate_sam(
    model: nn.Module | MaskPredictor, loader: DataLoader, device: torch.device, amp: str = "none"
) -> dict[str, Any]:
    """mIoU (percent) of the 1-point, 3-point and box settings over every mask of ``loader``
    (summed over ranks when distributed). ``model``: a ``Sam`` or a :class:`MaskPredictor`."""
    from .evaluate import autocast

    sam = model if isinstance(model, nn.Module) else None
    predictor = SamMaskPredictor(model) if sam is not None else model
    was_training = sam.training if sam is not None else False
    if sam is not None:
        sam.eval()
    totals = torch.zeros(len(SETTINGS) + 2, dtype=torch.float64)  # IoU sums, masks, images
    start = time.perf_counter()
    for batch in loader:
        with autocast(device, amp):
            emb = predictor.embed(batch.images.to(device, non_blocking=True))
        for i, target in enumerate(batch.targets):
            totals[-1] += 1
            if len(target.masks) == 0:
                continue
            totals[-2] += len(target.masks)
            for j, setting in enumerate(SETTINGS):
                with autocast(device, amp):
                    pred = predictor.predict(emb[i], target, setting)
                totals[j] += mask_iou(pred.bool(), target.masks).double().sum()
    if sam is not None:
        sam.train(was_training)
    totals = all_reduce_sum(totals.to(device)).cpu()
    masks = int(totals[-2])
    if masks == 0:
        raise ValueError("the evaluation set has no usable mask")
    out: dict[str, Any] = {f"miou_{s}": 100.0 * totals[j].item() / masks for j, s in enumerate(SETTINGS)}
    out["miou_avg"] = sum(out[f"miou_{s}"] for s in SETTINGS) / len(SETTINGS)
    out.update(masks=masks, images=int(totals[-1]), seconds=time.perf_counter() - start)
    return out


def format_table(result: Mapping[str, Any]) -> str:
    """A small Markdown table of an :func:`evaluate_sam` result."""
    rows = [
        "| prompt | mIoU (%) |",
        "|---|---|",
        f"| 1 point (best of 3 by predicted IoU) | {result['miou_1pt']:.2f} |",
        f"| 3 points (at once) | {result['miou_3pt']:.2f} |",
        f"| box | {result['miou_box']:.2f} |",
    ]
    return "\n".join(rows) + f"\n\n{result['masks']} masks in {result['images']} images"


def evaluate_sam_files(
    sam: nn.Module, annotations: str | Path, images: str | Path, max_images: int | None = None,
    seed: int = 0, device: str = "auto", batch_size: int = 1, num_workers: int = 0, amp: str = "none",
) -> dict[str, Any]:  # fmt: skip
    """:func:`evaluate_sam` of any ``Sam`` (e.g. an official one from ``build_sam("sam_vit_b",
    checkpoint=...)``) on COCO/LVIS-format files, with the prompts a checkpoint's evaluation uses."""
    from .config import recipe_from_dict

    recipe = recipe_from_dict({"model": {"img_size": sam.image_encoder.img_size}, "sam": {"eval_seed": seed}})
    info = init_distributed(device)
    try:
        sam.to(info.device)
        loader = sam_eval_loader(annotations, images, recipe, info, batch_size, max_images, seed, num_workers)
        return evaluate_sam(sam, loader, info.device, amp)
    finally:
        cleanup()


def evaluate_sam_checkpoint(
    checkpoint: str | Path,
    annotations: str | None = None,
    images: str | None = None,
    batch_size: int = 1,
    max_images: int | None = None,
    seed: int | None = None,
    num_workers: int | None = None,
    device: str = "auto",
    amp: str | None = None,
    ema: bool = False,
    out: str | Path | None = None,
    keep_ratio: float | None = None,
) -> dict[str, Any]:
    """Rebuild a ``task: sam`` checkpoint and evaluate it on COCO/LVIS-format ``annotations``
    and ``images`` (default: the recipe's ``sam.val_annotations`` / ``sam.val_images``);
    ``keep_ratio`` routes another share of tokens than the encoder was trained with.
    Writes the result as JSON to ``out`` (default: ``sam_eval_<checkpoint>.json`` in the run
    folder) and returns it."""
    ckpt = resolve_checkpoint(checkpoint)
    recipe = load_recipe(ckpt / "recipe.yaml")
    if recipe.task != "sam":
        raise ValueError(f"{str(ckpt)!r} is a {recipe.task} checkpoint, not a sam one")
    annotations = annotations or recipe.sam.val_annotations
    images = images or recipe.sam.val_images
    if annotations is None or images is None:
        raise ValueError("SAM evaluation needs --annotations FILE and --images DIR (or sam.val_annotations "
                         "and sam.val_images in the recipe)")  # fmt: skip
    max_images = recipe.sam.val_max_images if max_images is None else max_images
    info = init_distributed(device)
    try:
        sam = build_sam_student(recipe, pretrained=False)
        load_into(sam, ckpt, ema=ema)
        if keep_ratio is not None:
            if not callable(getattr(sam.image_encoder, "set_keep_ratio", None)):
                raise ValueError(f"--keep-ratio needs a routed encoder; {recipe.model.name!r} has no routing")
            sam.image_encoder.set_keep_ratio(keep_ratio)
        sam.to(info.device)
        loader = sam_eval_loader(annotations, images, recipe, info, batch_size, max_images, seed, num_workers)
        result = evaluate_sam(sam, loader, info.device, amp if amp is not None else "none")
    finally:
        cleanup()
    result.update(
        checkpoint=str(ckpt), annotations=str(annotations), images_dir=str(images),
        seed=recipe.sam.eval_seed if seed is None else seed, ema=ema, device=str(info.device),
        one_point="best of 3 outputs by predicted IoU", three_points="three positive points at once",
        keep_ratio=getattr(sam.image_encoder, "keep_ratio", None),
    )  # fmt: skip
    if out is None:
        run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
        out = run / f"sam_eval_{ckpt.name}.json"
    result["json"] = str(out)
    if info.is_main:
        Path(out).write_text(json.dumps(result, indent=1))
    return result
