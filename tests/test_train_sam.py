"""The ``sam`` task: SA-1B / COCO data and prompts, SAM's losses, training steps, resume, and
mIoU evaluation (in-process and through ``routevit eval``), on a 128-pixel, 2-layer SAM."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as mask_utils
from safetensors.torch import load_file

from routevit.cli import main
from routevit.interop.sam import build_sam
from routevit.train import recipe_from_dict, train
from routevit.train.sam_data import (
    CocoMaskDataset,
    SA1BDataset,
    SamEvalTarget,
    collate_sam,
    decode_segmentation,
    find_sa1b,
    jitter_box,
    mask_box,
    preprocess_image,
    resize_masks,
    sample_points,
)
from routevit.train.sam_task import (
    PromptedSam,
    SamLoss,
    SamMaskPredictor,
    dice_loss,
    embedding_distillation_loss,
    evaluate_sam,
    evaluate_sam_files,
    mask_iou,
    sigmoid_focal_loss,
)

pytest.importorskip("segment_anything")

SIZE = 128
TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2, "window_size": 4, "global_attn_indexes": [1],
        "out_chans": 32}  # fmt: skip
BLVIT = {**TINY, "little_dim": 16, "little_heads": 1,
         "schedule": {"kinds": ["full", "big_little"], "predict_after": [1]}}  # fmt: skip


def _shapes(rng: np.random.Generator, h: int, w: int) -> list[np.ndarray]:
    """A rectangle and an ellipse at random places, as (h, w) uint8 masks."""
    rect = np.zeros((h, w), np.uint8)
    y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
    rect[y0 : y0 + rng.integers(8, h // 2), x0 : x0 + rng.integers(8, w // 2)] = 1
    yy, xx = np.mgrid[:h, :w]
    cy, cx, ry, rx = rng.integers(h // 4, 3 * h // 4), rng.integers(w // 4, 3 * w // 4), 10, 14
    ellipse = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.uint8)
    return [rect, ellipse]


def _image(masks: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    h, w = masks[0].shape
    img = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
    for i, m in enumerate(masks):
        img[m.astype(bool)] = (200, 40 + 80 * i, 255 - 100 * i)
    return img


def _rle(m: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(m))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def make_sa1b(root: Path, n: int = 4, h: int = 96, w: int = 80, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        masks = _shapes(rng, h, w)
        Image.fromarray(_image(masks, rng)).save(root / f"sa_{i}.jpg", quality=95)
        anns = [{"id": j, "segmentation": _rle(m), "bbox": mask_utils.toBbox(mask_utils.encode(
            np.asfortranarray(m))).tolist(), "area": int(m.sum())} for j, m in enumerate(masks)]  # fmt: skip
        (root / f"sa_{i}.json").write_text(json.dumps({"image": {"image_id": i, "height": h, "width": w},
                                                        "annotations": anns}))  # fmt: skip
    return root


def make_coco(root: Path, n: int = 2, h: int = 72, w: int = 100, seed: int = 1) -> tuple[Path, Path]:
    """COCO instances JSON: RLE masks, one polygon square, one crowd annotation (ignored)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n):
        masks = _shapes(rng, h, w)
        Image.fromarray(_image(masks, rng)).save(root / "images" / f"{i:04d}.png")
        images.append({"id": i + 1, "file_name": f"{i:04d}.png", "height": h, "width": w})
        for m in masks:
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                         "segmentation": _rle(m), "area": int(m.sum()), "bbox": [0, 0, 1, 1]})  # fmt: skip
        anns.append(
            {
                "id": len(anns) + 1,
                "image_id": i + 1,
                "category_id": 1,
                "iscrowd": 0,
                "segmentation": [[60, 40, 80, 40, 80, 60, 60, 60]],
                "area": 400,
                "bbox": [60, 40, 20, 20],
            }
        )
        anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 1,
                     "segmentation": _rle(masks[0]), "area": 1, "bbox": [0, 0, 1, 1]})  # fmt: skip
    coco = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}
    (root / "instances.json").write_text(json.dumps(coco))
    return root / "instances.json", root / "images"


def _official_layout(state: dict) -> dict:
    """A routevit vanilla Sam state dict in the official SAM checkpoint layout."""
    return {
        k.replace(".mlp.fc1.", ".mlp.lin1.").replace(".mlp.fc2.", ".mlp.lin2."): v for k, v in state.items()
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sam")
    torch.manual_seed(0)
    vanilla = build_sam("sam_vit_b", img_size=SIZE, **TINY)
    with torch.no_grad():
        for name, p in vanilla.image_encoder.named_parameters():
            if "rel_pos" in name or name == "pos_embed":
                p.normal_(0.0, 0.1)
    torch.save(_official_layout(vanilla.state_dict()), root / "sam_tiny.pth")
    annotations, images = make_coco(root / "coco")
    return {"root": root, "ckpt": root / "sam_tiny.pth", "sa1b": make_sa1b(root / "sa1b"),
            "annotations": annotations, "images": images}  # fmt: skip


def sam_recipe(world: dict[str, Path], output: Path, **sections: dict) -> dict:
    values = {
        "task": "sam",
        "model": {"name": "blvit_sam_b_t", "pretrained": str(world["ckpt"]), "img_size": SIZE,
                  "drop_path_rate": 0.0, "keep_ratio": 0.25, "kwargs": BLVIT},
        "distill": {"teacher": "sam_vit_b", "teacher_kwargs": TINY, "lambda_fd": 2.5},
        "data": {"root": str(world["sa1b"]), "train_dir": ".", "num_workers": 0},
        "sam": {"masks_per_image": 2, "val_annotations": str(world["annotations"]),
                "val_images": str(world["images"])},
        "optim": {"lr": 1e-3, "lr_base_batch": None, "warmup_epochs": 0.0},
        "train": {"epochs": 1, "batch_size": 2, "amp": "none", "seed": 0, "device": "cpu"},
        "run": {"output": str(output), "log_every_steps": 1, "progress": "lines"},
    }  # fmt: skip
    for name, fields in sections.items():
        values.setdefault(name, {}).update(fields)
    return values


# --- data and prompts ---------------------------------------------------------------------


def test_rle_and_polygon_decoding_round_trip() -> None:
    rng = np.random.default_rng(0)
    m = (rng.random((23, 31)) > 0.6).astype(np.uint8)
    rle = mask_utils.encode(np.asfortranarray(m))
    assert np.array_equal(decode_segmentation({"size": [23, 31], "counts": rle["counts"]}, 23, 31), m)
    assert np.array_equal(decode_segmentation(_rle(m), 23, 31), m)  # SA-1B's str counts
    flat = m.flatten(order="F")  # uncompressed RLE: run lengths, starting with zeros
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    counts = ([0] if flat[0] else []) + runs
    assert np.array_equal(decode_segmentation({"size": [23, 31], "counts": counts}, 23, 31), m)
    square = decode_segmentation([[2, 3, 12, 3, 12, 9, 2, 9]], 23, 31)
    assert square[4:9, 3:12].all() and square.sum() == mask_utils.area(
        mask_utils.merge(mask_utils.frPyObjects([[2, 3, 12, 3, 12, 9, 2, 9]], 23, 31))
    )
    with pytest.raises(ValueError, match="segmentation must be"):
        decode_segmentation(3, 23, 31)


def test_prompts_inside_masks_box_is_the_bbox_and_deterministic(world: dict[str, Path]) -> None:
    rng = np.random.default_rng(0)
    m = torch.from_numpy(_shapes(rng, 50, 60)[1]).bool()
    pts = sample_points(m, 200, np.random.default_rng(1))
    assert m[pts[:, 1].long(), pts[:, 0].long()].all()
    assert torch.equal(pts, sample_points(m, 200, np.random.default_rng(1)))
    x, y, w, h = mask_utils.toBbox(mask_utils.encode(np.asfortranarray(m.numpy().astype(np.uint8))))
    assert mask_box(m).tolist() == [x, y, x + w, y + h]
    box = mask_box(m)
    jittered = torch.stack(
        [jitter_box(box, np.random.default_rng(s), 0.1, 20.0, (50, 60)) for s in range(50)]
    )
    assert (jittered - box).abs().max() <= 20.0 + 1e-4 and not torch.equal(jittered[0], box)
    assert (jittered[:, 2] > jittered[:, 0]).all() and (jittered[:, [0, 2]] <= 60).all()

    files = find_sa1b(world["sa1b"])
    ds = SA1BDataset(files, SIZE, masks_per_image=2, box_prob=0.5, num_points=(1, 3), seed=0)
    x1, t1 = ds[(0, 1)]
    x2, t2 = ds[(0, 1)]
    _, t3 = ds[(1, 1)]
    assert torch.equal(x1, x2) and all(
        torch.equal(a, b) for a, b in zip(vars(t1).values(), vars(t2).values(), strict=True)
    )
    assert not torch.equal(t1.points, t3.points)
    assert x1.shape == (3, SIZE, SIZE) and t1.masks.shape == (2, SIZE, SIZE) and t1.points.shape == (2, 3, 2)
    for mask, pts in zip(t1.masks, t1.points, strict=True):
        assert mask[pts[:, 1].long(), pts[:, 0].long()].all()
    counts = [ds[(e, 0)][1].num_points.tolist() for e in range(8)]
    assert {c for cs in counts for c in cs} == {0, 1, 3}  # box, one point, three points


def test_preprocessing_is_sams(world: dict[str, Path]) -> None:
    from segment_anything.utils.transforms import ResizeLongestSide

    sam = build_sam("sam_vit_b", img_size=SIZE, **TINY)
    image = np.asarray(Image.open(world["images"] / "0000.png").convert("RGB"))
    resized = ResizeLongestSide(SIZE).apply_image(image)
    expected = sam.preprocess(torch.from_numpy(resized).permute(2, 0, 1)[None].float())[0]
    x, input_size = preprocess_image(image, SIZE)
    assert input_size == resized.shape[:2] and torch.allclose(x, expected, atol=1e-5)
    masks = resize_masks(torch.ones(1, *image.shape[:2]), input_size, SIZE)
    assert masks[0].sum() == input_size[0] * input_size[1] and not masks[0, input_size[0] :].any()


# --- losses -------------------------------------------------------------------------------


def test_loss_pieces_match_the_formulas() -> None:
    from torchvision.ops import sigmoid_focal_loss as tv_focal

    torch.manual_seed(0)
    z = torch.randn(3, 2, 8, 8)
    g = torch.rand(3, 2, 8, 8) > 0.5
    assert torch.allclose(sigmoid_focal_loss(z, g), tv_focal(z, g.float(), 0.25, 2.0, "none").mean((-2, -1)))
    p = torch.sigmoid(z)
    dice = 1 - (2 * (p * g).sum((-2, -1)) + 1) / (p.sum((-2, -1)) + g.sum((-2, -1)) + 1)
    assert torch.allclose(dice_loss(z, g), dice)

    s, t = torch.randn(2, 4, 3, 5), torch.randn(2, 4, 3, 5)
    cos = (s * t).sum(1) / (s.norm(dim=1) * t.norm(dim=1))
    assert torch.allclose(embedding_distillation_loss(s, t), 1 - cos.mean(), atol=1e-6)

    # one mask, three outputs at the ground truth's resolution ("input"): best-of-3 and IoU MSE
    gt = torch.zeros(1, 16, 16, dtype=torch.bool)
    gt[0, 4:12, 4:12] = True
    logits = torch.full((1, 3, 16, 16), -5.0)
    logits[0, 0][gt[0]] = 5.0  # perfect
    logits[0, 1, 4:12, 4:8] = 5.0  # half: IoU 0.5
    iou_pred = torch.tensor([[0.9, 0.2, 0.3]])
    loss = SamLoss(lambda_fd=2.0, resolution="input")
    focal, dice_m, iou = loss.mask_terms(logits, iou_pred, gt)
    g3 = gt[:, None].expand(1, 3, 16, 16)
    per_output = 20 * sigmoid_focal_loss(logits, g3) + dice_loss(logits, g3)
    assert per_output[0].argmin() == 0
    assert torch.allclose(focal, sigmoid_focal_loss(logits, g3)[:, 0])
    assert torch.allclose(dice_m, dice_loss(logits, g3)[:, 0])
    assert torch.allclose(iou, ((iou_pred - torch.tensor([[1.0, 0.5, 0.0]])) ** 2).mean(1))
    # total = 20 focal + dice + iou + lambda_fd * fd, averaged over masks
    outputs = [[(torch.tensor([0]), logits, iou_pred)]]
    target = type("T", (), {"masks": gt})()
    total, parts = loss(outputs, [target], s, t)
    expected = 20 * focal.mean() + dice_m.mean() + iou.mean() + 2.0 * embedding_distillation_loss(s, t)
    assert torch.allclose(total, expected) and set(parts) == {"loss_sup", "loss_focal", "loss_dice",
                                                              "loss_iou", "loss_fd"}  # fmt: skip
    # "low": the ground truth is downsampled (area, >= 0.5) to the logits
    low = SamLoss(resolution="low").mask_terms(logits[:, :, ::2, ::2], iou_pred, gt)
    small = F.avg_pool2d(gt[:, None].float(), 2)[:, 0] >= 0.5
    assert torch.allclose(low[1], dice_loss(logits[:, :1, ::2, ::2], small[:, None])[:, 0])


# --- training -----------------------------------------------------------------------------


def test_one_step_trains_the_encoder_only(world: dict[str, Path], tmp_path: Path) -> None:
    r = recipe_from_dict(sam_recipe(world, tmp_path / "run", train={"batch_size": 4},
                                    sam={"val_annotations": None, "val_images": None}))  # fmt: skip
    result = train(r)
    assert (result.status, result.step) == ("finished", 1)
    events = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    step = next(e for e in events if e["event"] == "train")
    assert all(np.isfinite(step[k]) for k in ("loss", "loss_focal", "loss_dice", "loss_iou", "loss_fd"))
    assert step["loss"] == pytest.approx(step["loss_sup"] + 2.5 * step["loss_fd"], rel=1e-5)
    after = load_file(str(result.last_checkpoint / "model.safetensors"))
    before = build_sam(
        "blvit_sam_b_t", checkpoint=world["ckpt"], img_size=SIZE, **_blvit_kwargs()
    ).state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # (the E path and routers start from a seeded random init, so compare the loaded trunk)
    assert "image_encoder.patch_embed.proj.weight" in changed
    assert any(k.startswith("image_encoder.blocks.1.performance") for k in changed)
    assert not any(k.startswith(("prompt_encoder", "mask_decoder")) for k in changed)  # frozen by default


def _blvit_kwargs() -> dict:
    from routevit.layers.encoder import Schedule

    return {**BLVIT, "schedule": Schedule(("full", "big_little"), (1,)), "keep_ratio": 0.25}


def test_two_steps_checkpoint_resume_identical(world: dict[str, Path], tmp_path: Path) -> None:
    values = sam_recipe(world, tmp_path / "a", run={"checkpoint_every_steps": 1},
                        sam={"train_decoder": True, "val_max_images": 1})  # fmt: skip
    full = train(recipe_from_dict(values))
    assert full.step == 2 and full.best is not None and full.best["metric"] >= 0
    ck = tmp_path / "a" / "checkpoints"
    assert [p.name for p in sorted(ck.glob("step-*"))] == ["step-00000001", "step-00000002"]
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-00000002")
    (tmp_path / "b" / "checkpoints" / "best.json").unlink()
    values["run"]["output"] = str(tmp_path / "b")
    resumed = train(recipe_from_dict(values), resume=True)
    assert resumed.step == 2
    a = load_file(str(ck / "step-00000002" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoints" / "step-00000002" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa = torch.load(ck / "step-00000002" / "state.pt", weights_only=True)
    sb = torch.load(tmp_path / "b" / "checkpoints" / "step-00000002" / "state.pt", weights_only=True)
    for key, value in sa["optimizer"]["state"].items():
        assert all(torch.equal(value[n], sb["optimizer"]["state"][key][n]) for n in value)
    meta = json.loads((ck / "step-00000002" / "meta.json").read_text())
    assert {"val_miou_1pt", "val_miou_3pt", "val_miou_box", "val_miou_avg"} <= set(meta)


# --- evaluation ---------------------------------------------------------------------------


class FakePredictor:
    """Returns the ground truth for boxes, the masks shifted right by 2 pixels for three
    points, nothing for one point."""

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(images), 1)

    def predict(self, embedding: torch.Tensor, target: SamEvalTarget, setting: str) -> torch.Tensor:
        if setting == "box":
            return target.masks.clone()
        if setting == "3pt":
            return torch.roll(target.masks, 2, dims=-1)
        return torch.zeros_like(target.masks)


def test_miou_against_a_hand_computation(world: dict[str, Path]) -> None:
    ds = CocoMaskDataset(world["annotations"], world["images"], SIZE, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate_sam)
    res = evaluate_sam(FakePredictor(), loader, torch.device("cpu"))
    masks = [ds[i][1].masks for i in range(len(ds))]
    assert res["masks"] == sum(len(m) for m in masks) == 6 and res["images"] == 2  # crowd left out
    ious = []
    for m in torch.cat(masks):
        shifted = torch.roll(m, 2, dims=-1)
        ious.append(((m & shifted).sum() / (m | shifted).sum()).item())
    assert res["miou_box"] == pytest.approx(100.0)
    assert res["miou_1pt"] == 0.0
    assert res["miou_3pt"] == pytest.approx(100 * np.mean(ious))
    # points are seeded: same seed, same prompts; another seed, others
    again, other = (CocoMaskDataset(world["annotations"], world["images"], SIZE, seed) for seed in (0, 1))
    assert torch.equal(ds[0][1].points, again[0][1].points)
    assert not torch.equal(ds[0][1].points, other[0][1].points)


def test_mask_predictor_matches_sam_predictor(world: dict[str, Path]) -> None:
    from segment_anything import SamPredictor

    sam = build_sam("blvit_sam_b_t", checkpoint=world["ckpt"], img_size=SIZE, **_blvit_kwargs())
    ds = CocoMaskDataset(world["annotations"], world["images"], SIZE, seed=0)
    x, target = ds[0]
    ours = SamMaskPredictor(sam)
    emb = ours.embed(x[None])[0]
    predictor = SamPredictor(sam)
    predictor.set_image(np.asarray(Image.open(world["images"] / "0000.png").convert("RGB")))
    for setting in ("box", "3pt", "1pt"):
        mine = ours.predict(emb, target, setting)
        for j in range(len(target.masks)):
            if setting == "box":
                kw = {"box": target.boxes[j].numpy(), "multimask_output": False}
            else:
                pts = target.points[j, : 1 if setting == "1pt" else 3].numpy()
                kw = {
                    "point_coords": pts,
                    "point_labels": np.ones(len(pts)),
                    "multimask_output": setting == "1pt",
                }
            masks, scores, _ = predictor.predict(**kw)
            assert np.array_equal(mine[j].numpy(), masks[scores.argmax()])
    result = evaluate_sam_files(sam, world["annotations"], world["images"], max_images=1, device="cpu")
    mine_box = 100 * mask_iou(ours.predict(emb, target, "box"), target.masks).mean().item()
    assert result["masks"] == len(target.masks) and result["miou_box"] == pytest.approx(mine_box, rel=1e-5)


def test_eval_cli_on_a_sam_checkpoint(world: dict[str, Path], tmp_path: Path, capsys) -> None:
    values = sam_recipe(world, tmp_path / "run", sam={"val_annotations": None, "val_images": None},
                        train={"batch_size": 4})  # fmt: skip
    train(recipe_from_dict(values))
    capsys.readouterr()
    out = tmp_path / "eval.json"
    status = main(["eval", str(tmp_path / "run"), "--annotations", str(world["annotations"]), "--images",
                   str(world["images"]), "--device", "cpu", "--workers", "0", "--out", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert status == 0 and "| 3 points (at once) |" in printed and str(out) in printed
    result = json.loads(out.read_text())
    assert result["masks"] == 6 and all(0 <= result[f"miou_{s}"] <= 100 for s in ("1pt", "3pt", "box"))
    trained_ratio = result["keep_ratio"]
    assert main(["eval", str(tmp_path / "run"), "--annotations", str(world["annotations"]), "--images",
                 str(world["images"]), "--device", "cpu", "--workers", "0", "--out", str(out),
                 "--keep-ratio", "0.1"]) == 0  # fmt: skip
    capsys.readouterr()
    assert json.loads(out.read_text())["keep_ratio"] == 0.1 != trained_ratio
    # the same numbers in-process, and a classification-only flag is refused for nothing
    assert main(["eval", str(tmp_path / "run"), "--device", "cpu"]) == 2
    assert "needs --annotations" in capsys.readouterr().err


def test_recipe_keys(tmp_path: Path) -> None:
    unknown = r"unknown recipe key\(s\) \['points'\] in section 'sam'.*'num_points'"
    with pytest.raises(ValueError, match=unknown):
        recipe_from_dict({"task": "sam", "sam": {"points": 3}})
    with pytest.raises(ValueError, match=r"task must be one of \['classification', 'sam'\]"):
        recipe_from_dict({"task": "segment"})
    with pytest.raises(ValueError, match="sam.num_points must be a non-empty list"):
        recipe_from_dict({"sam": {"num_points": [0]}})
    from routevit.train import load_recipe

    assert load_recipe(None, ["task=sam", "sam.box_prob=1.0"]).task == "sam"
    assert PromptedSam  # exported for custom loops
