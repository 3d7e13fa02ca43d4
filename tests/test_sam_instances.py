"""Zero-shot instance segmentation AP with detector boxes (``routevit eval --task instances``):
AP against an independent numpy computation on generated COCO data, the real SAM path end to
end on a tiny checkpoint (and against ``SamPredictor``), and one-line errors on bad input."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from safetensors.torch import save_file

from routevit.cli import main
from routevit.train import recipe_from_dict
from routevit.train.config import save_recipe
from routevit.train.sam_instances import (
    SamBoxPredictor,
    coco_mask_ap,
    encode_masks,
    evaluate_instances_files,
    load_annotations,
    predict_results,
    prepare_instances,
    run_instances,
)

pytest.importorskip("segment_anything")

SIZE = 128
TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2, "window_size": 4, "global_attn_indexes": [1],
        "out_chans": 32}  # fmt: skip
BLVIT = {**TINY, "little_dim": 16, "little_heads": 1,
         "schedule": {"kinds": ["full", "big_little"], "predict_after": [1]}}  # fmt: skip
SIZES = [(72, 100), (90, 64), (64, 80)]  # (H, W) of the generated images
THRESHOLDS = np.linspace(0.5, 0.95, 10)


def _rle(m: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _box(m: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(m)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min())]


def make_instances(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """Three images of different sizes; per image a polygon rectangle (category 1), an RLE
    ellipse (category 2) and a small RLE square (category 1)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i, (h, w) in enumerate(SIZES):
        img = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
        x0, y0, rw, rh = int(rng.integers(2, w // 3)), int(rng.integers(2, h // 3)), 36 + 2 * i, 30 + 3 * i
        polygon = [[x0, y0, x0 + rw, y0, x0 + rw, y0 + rh, x0, y0 + rh]]
        yy, xx = np.mgrid[:h, :w]
        cy, cx = int(rng.integers(h // 3, 2 * h // 3)), int(rng.integers(w // 3, 2 * w // 3))
        ellipse = ((yy - cy) / 11.0) ** 2 + ((xx - cx) / 15.0) ** 2 <= 1
        square = np.zeros((h, w), bool)
        square[h - 10 : h - 3, w - 10 : w - 3] = True
        rect = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygon, h, w))).astype(bool)
        for m, color in ((rect, (200, 40, 60)), (ellipse, (40, 200, 90)), (square, (90, 90, 220))):
            img[m] = color
        Image.fromarray(img).save(root / "images" / f"{i:04d}.png")
        images.append({"id": 10 + i, "file_name": f"{i:04d}.png", "height": h, "width": w})
        for seg, m, cat in ((polygon, rect, 1), (_rle(ellipse), ellipse, 2), (_rle(square), square, 1)):
            anns.append({"id": len(anns) + 1, "image_id": 10 + i, "category_id": cat, "iscrowd": 0,
                         "segmentation": seg, "area": int(m.sum()), "bbox": _box(m)})  # fmt: skip
    cats = [{"id": 1, "name": "box"}, {"id": 2, "name": "blob"}]
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path, root / "images"


def _write(path: Path, value: object) -> Path:
    path.write_text(json.dumps(value))
    return path


@pytest.fixture(scope="module")
def coco(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("instances")
    annotations, images = make_instances(root)
    gt = load_annotations(annotations)
    return {"root": root, "annotations": annotations, "images": images, "gt": gt}


class OraclePredictor:
    """The ground-truth mask of the annotation whose box the prompt is."""

    def __init__(self, gt) -> None:
        self.gt = gt

    def set_image(self, image: np.ndarray, image_id: int) -> None:
        self.anns = self.gt.imgToAnns[image_id]

    def predict_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        out = []
        for b in boxes.tolist():
            (ann,) = [a for a in self.anns if np.allclose(b, np.add(a["bbox"], [0, 0, *a["bbox"][:2]]))]
            out.append(torch.from_numpy(self.gt.annToMask(ann)).bool())
        return torch.stack(out)


def fill_box(box_xywh: list[float], hw: tuple[int, int]) -> np.ndarray:
    """The pixels whose centres lie inside the box."""
    x, y, w, h = box_xywh
    yy, xx = np.mgrid[: hw[0], : hw[1]] + 0.5
    return (xx >= x) & (xx < x + w) & (yy >= y) & (yy < y + h)


class BoxFillPredictor:
    """Each box prompt becomes the filled box (an independent stand-in for SAM)."""

    def set_image(self, image: np.ndarray, image_id: int) -> None:
        self.hw = image.shape[:2]

    def predict_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        masks = [fill_box([x0, y0, x1 - x0, y1 - y0], self.hw) for x0, y0, x1, y1 in boxes.tolist()]
        return torch.from_numpy(np.stack(masks))


def reference_ap(gt, dets: list[dict], masks: list[np.ndarray], threshold: float) -> float:
    """COCO's AP at one IoU threshold, from scratch: per category, greedy matching by score to
    the best unmatched ground truth (numpy mask IoU), precision envelope, 101 recall points;
    the mean over categories that have ground truth."""
    aps = []
    for cat in sorted(gt.cats):
        gts = {img: [gt.annToMask(a).astype(bool) for a in gt.imgToAnns[img] if a["category_id"] == cat]
               for img in gt.imgs}  # fmt: skip
        npos = sum(len(g) for g in gts.values())
        if npos == 0:
            continue
        records = []
        for img, g in gts.items():
            mine = sorted((d["score"], m) for d, m in zip(dets, masks, strict=True)
                          if d["image_id"] == img and d["category_id"] == cat)[::-1]  # fmt: skip
            matched = [False] * len(g)
            for score, m in mine:
                ious = [(m & gm).sum() / (m | gm).sum() for gm in g]
                free = [j for j in range(len(g)) if not matched[j] and ious[j] >= threshold]
                best = max(free, key=lambda j: ious[j]) if free else None
                if best is not None:
                    matched[best] = True
                records.append((score, best is not None))
        records.sort(key=lambda r: -r[0])
        tp = np.cumsum([r[1] for r in records])
        fp = np.cumsum([not r[1] for r in records])
        recall, precision = tp / npos, tp / np.maximum(tp + fp, 1)
        envelope = np.maximum.accumulate(precision[::-1])[::-1]
        points = [envelope[np.argmax(recall >= r)] if (recall >= r).any() else 0.0
                  for r in np.linspace(0, 1, 101)]  # fmt: skip
        aps.append(np.mean(points))
    return 100.0 * float(np.mean(aps))


def _gt_detections(gt, scores: np.random.Generator | None = None) -> list[dict]:
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "score": float(scores.random()) if scores is not None else 0.9}
            for a in gt.anns.values()]  # fmt: skip


# --- AP -----------------------------------------------------------------------------------


def test_ground_truth_masks_on_ground_truth_boxes_give_ap_100(coco: dict) -> None:
    dets = _gt_detections(coco["gt"], np.random.default_rng(0))
    task = prepare_instances(coco["annotations"], dets, coco["images"])
    result = run_instances(OraclePredictor(coco["gt"]), task, chunk=2, progress=False)
    assert result["ap"] == result["ap50"] == result["ap75"] == pytest.approx(100.0)
    assert result["ap_small"] == pytest.approx(100.0) and result["ap_medium"] == pytest.approx(100.0)
    assert result["ap_large"] is None  # no ground truth above 96^2 pixels: COCOeval's -1
    assert (result["detections"], result["images"], result["images_with_detections"]) == (9, 3, 3)
    assert result["stats"][0] == pytest.approx(1.0) and len(result["summary"]) == 12


def test_encoded_masks_round_trip() -> None:
    masks = torch.rand(3, 23, 31) > 0.5
    decoded = mask_utils.decode([{**r, "counts": r["counts"].encode()} for r in encode_masks(masks)])
    assert decoded.shape == (23, 31, 3) and np.array_equal(decoded.transpose(2, 0, 1), masks.numpy())


def test_shifted_boxes_give_the_independently_computed_ap(coco: dict) -> None:
    gt, rng = coco["gt"], np.random.default_rng(3)
    dets = []
    for a in sorted(gt.anns.values(), key=lambda a: a["id"])[:-1]:  # the last one is missed
        h, w = gt.imgs[a["image_id"]]["height"], gt.imgs[a["image_id"]]["width"]
        x, y, bw, bh = a["bbox"]
        dx, dy = rng.integers(-4, 5, 2)
        x, y = float(np.clip(x + dx, 0, w - bw)), float(np.clip(y + dy, 0, h - bh))
        dets.append({"image_id": a["image_id"], "category_id": a["category_id"], "bbox": [x, y, bw, bh],
                     "score": float(rng.random())})  # fmt: skip
    # an extra box at the top edge and a poor box over the whole image, both scored high
    dets.append({"image_id": 10, "category_id": 1, "bbox": [60.0, 0.0, 12.0, 8.0], "score": 0.99})
    dets.append({"image_id": 11, "category_id": 2, "bbox": [0.0, 0.0, 64.0, 90.0], "score": 0.98})
    masks = [fill_box(d["bbox"], (gt.imgs[d["image_id"]]["height"], gt.imgs[d["image_id"]]["width"]))
             for d in dets]  # fmt: skip

    task = prepare_instances(coco["annotations"], dets, coco["images"])
    result = run_instances(BoxFillPredictor(), task, chunk=3, progress=False)
    expected = [reference_ap(gt, dets, masks, t) for t in THRESHOLDS]
    assert result["ap"] == pytest.approx(np.mean(expected), abs=1e-6)
    assert result["ap50"] == pytest.approx(expected[0], abs=1e-6)
    assert result["ap75"] == pytest.approx(expected[5], abs=1e-6)
    assert 0 < result["ap"] < result["ap50"] < 100
    print(f"shifted boxes: AP {result['ap']:.4f} (numpy {np.mean(expected):.4f}), AP50 {result['ap50']:.4f}, "
          f"AP75 {result['ap75']:.4f}")  # fmt: skip

    # the cap keeps the best-scoring detection of each image; the threshold drops low scores
    capped_task = prepare_instances(coco["annotations"], dets, coco["images"], max_detections=1)
    capped = run_instances(BoxFillPredictor(), capped_task, progress=False)
    top = [max((d for d in dets if d["image_id"] == img), key=lambda d: d["score"]) for img in gt.imgs]
    top_masks = [masks[dets.index(d)] for d in top]
    assert capped["detections"] == 3
    assert capped["ap"] == pytest.approx(np.mean([reference_ap(gt, top, top_masks, t) for t in THRESHOLDS]))
    kept = [(d, m) for d, m in zip(dets, masks, strict=True) if d["score"] >= 0.5]
    high_task = prepare_instances(coco["annotations"], dets, coco["images"], score_threshold=0.5)
    high = run_instances(BoxFillPredictor(), high_task, progress=False)
    ref = [reference_ap(gt, [d for d, _ in kept], [m for _, m in kept], t) for t in THRESHOLDS]
    assert high["detections"] == len(kept) and high["ap"] == pytest.approx(np.mean(ref), abs=1e-6)
    # --max-images: only the first image counts (its ground truth and its detections)
    first = prepare_instances(coco["annotations"], dets, coco["images"], max_images=1)
    assert first.image_ids == [10] and set(first.detections) == {10}


def test_single_instance_ap_is_the_share_of_thresholds_its_iou_passes(tmp_path: Path) -> None:
    h, w = 60, 80
    yy, xx = np.mgrid[:h, :w]
    blob = ((yy - 30) / 14.0) ** 2 + ((xx - 40) / 20.0) ** 2 <= 1
    (tmp_path / "im").mkdir()
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(tmp_path / "im" / "a.jpg")
    annotations = _write(tmp_path / "gt.json", {
        "images": [{"id": 7, "file_name": "a.jpg", "height": h, "width": w}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "iscrowd": 0, "segmentation": _rle(blob),
                         "area": int(blob.sum()), "bbox": _box(blob)}],
        "categories": [{"id": 3, "name": "blob"}]})  # fmt: skip
    shifted = np.roll(blob, (3, 4), axis=(0, 1))
    iou = (blob & shifted).sum() / (blob | shifted).sum()
    assert np.abs(THRESHOLDS - iou).min() > 1e-3

    class Shifted:
        def set_image(self, image: np.ndarray, image_id: int) -> None: ...

        def predict_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(shifted)[None].expand(len(boxes), h, w)

    dets = [{"image_id": 7, "category_id": 3, "bbox": _box(blob), "score": 0.5}]
    result = run_instances(Shifted(), prepare_instances(annotations, dets, tmp_path / "im"), progress=False)
    assert result["ap"] == pytest.approx(100 * np.mean(iou >= THRESHOLDS))
    assert result["ap50"] == pytest.approx(100.0 * (iou >= 0.5))
    assert result["ap75"] == pytest.approx(100.0 * (iou >= 0.75))
    print(f"single instance: IoU {iou:.4f}, AP {result['ap']:.1f}, AP50 {result['ap50']:.1f}, "
          f"AP75 {result['ap75']:.1f}")  # fmt: skip


# --- the real encoder and checkpoint path --------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``task: sam`` checkpoint directory with random weights (recipe.yaml + model.safetensors)."""
    from routevit.train.sam_task import build_sam_student

    recipe = recipe_from_dict({
        "task": "sam",
        "model": {"name": "blvit_sam_b_t", "img_size": SIZE, "drop_path_rate": 0.0, "keep_ratio": 0.25,
                  "kwargs": BLVIT},
        "data": {"num_workers": 0}, "train": {"device": "cpu"},
    })  # fmt: skip
    torch.manual_seed(0)
    sam = build_sam_student(recipe, pretrained=False)
    with torch.no_grad():
        for name, p in sam.image_encoder.named_parameters():
            if "rel_pos" in name or name == "pos_embed" or name.endswith(("alpha_attn", "alpha_mlp")):
                p.normal_(0.0, 0.1)
    ckpt = tmp_path_factory.mktemp("run") / "checkpoints" / "step-00000001"
    ckpt.mkdir(parents=True)
    save_recipe(recipe, ckpt / "recipe.yaml")
    save_file({k: v.detach().contiguous().clone() for k, v in sam.state_dict().items()},
              str(ckpt / "model.safetensors"))  # fmt: skip
    return ckpt


def _load(ckpt: Path):
    from routevit.train.checkpoint import load_weights
    from routevit.train.config import load_recipe
    from routevit.train.sam_task import build_sam_student

    sam = build_sam_student(load_recipe(ckpt / "recipe.yaml"), pretrained=False)
    sam.load_state_dict(load_weights(ckpt))
    return sam.eval()


def test_real_sam_path_matches_sam_predictor_and_cocoeval(coco: dict, checkpoint: Path, capsys) -> None:
    from segment_anything import SamPredictor

    gt = coco["gt"]
    rng = np.random.default_rng(1)
    dets = _gt_detections(gt, rng) + [{"image_id": 12, "category_id": 2, "bbox": [70.0, 50.0, 20.0, 30.0],
                                       "score": 0.3}]  # sticks out of the 80x64 image: clipped  # fmt: skip
    dets_file = _write(coco["root"] / "dets.json", dets)
    status = main(["eval", str(checkpoint.parent.parent), "--task", "instances", "--annotations",
                   str(coco["annotations"]), "--detections", str(dets_file), "--images", str(coco["images"]),
                   "--device", "cpu", "--workers", "0", "--box-chunk", "3", "--bf16"])  # fmt: skip
    printed = capsys.readouterr().out
    out = checkpoint.parent.parent / "sam_instances_step-00000001.json"
    assert status == 0 and "| AP50 |" in printed and str(out) in printed
    result = json.loads(out.read_text())
    assert result["detections"] == 10 and result["amp"] == "none"  # bf16 is for CUDA only
    assert result["multimask"] is False and result["keep_ratio"] == 0.25
    assert all(v is None or 0 <= v <= 100 for v in (result[k] for k in ("ap", "ap50", "ap75", "ap_small")))

    # the same masks as SamPredictor.predict(box=..., multimask_output=False), and the same AP as
    # a direct COCOeval call on results built from them
    sam = _load(checkpoint)
    predictor = SamPredictor(sam)
    expected = []
    for img_id in sorted(gt.imgs):
        info = gt.imgs[img_id]
        predictor.set_image(np.asarray(Image.open(coco["images"] / info["file_name"]).convert("RGB")))
        for d in sorted((d for d in dets if d["image_id"] == img_id), key=lambda d: -d["score"]):
            x, y, w, h = d["bbox"]
            box = np.array([max(x, 0), max(y, 0), min(x + w, info["width"]), min(y + h, info["height"])])
            masks, _, _ = predictor.predict(box=box, multimask_output=False)
            expected.append({"image_id": img_id, "category_id": d["category_id"], "score": d["score"],
                             "segmentation": _rle(masks[0])})  # fmt: skip
    task = prepare_instances(coco["annotations"], dets, coco["images"])
    ours = list(predict_results(SamBoxPredictor(sam), task, chunk=4, progress=False))
    assert [r["segmentation"] for r in ours] == [r["segmentation"] for r in expected]
    coverage = [mask_utils.area(r["segmentation"]) / np.prod(r["segmentation"]["size"]) for r in ours]
    assert 0 < min(coverage) and max(coverage) < 1  # random weights, but not trivial masks
    with contextlib.redirect_stdout(io.StringIO()):
        direct = coco_mask_ap(gt, expected, sorted(gt.imgs))
    assert [result[k] for k in ("ap", "ap50", "ap75")] == [direct[k] for k in ("ap", "ap50", "ap75")]
    print(f"tiny random SAM: AP {result['ap']:.3f}, AP50 {result['ap50']:.3f}, AP75 {result['ap75']:.3f}")

    # best of three by predicted IoU, as SamPredictor users pick it
    task.detections = {10: task.detections[10]}
    task.files = {10: task.files[10]}
    multi = list(predict_results(SamBoxPredictor(sam, multimask=True), task, progress=False))
    predictor.set_image(np.asarray(Image.open(coco["images"] / gt.imgs[10]["file_name"]).convert("RGB")))
    for r, box in zip(multi, task.detections[10].boxes.numpy(), strict=True):
        masks, scores, _ = predictor.predict(box=box, multimask_output=True)
        assert r["segmentation"] == _rle(masks[scores.argmax()])


def test_options_reach_the_result(coco: dict, checkpoint: Path, tmp_path: Path, capsys) -> None:
    dets = _write(tmp_path / "d.json", _gt_detections(coco["gt"], np.random.default_rng(2)))
    out = tmp_path / "sub" / "ap.json"
    status = main(["eval", str(checkpoint), "--task", "instances", "--annotations", str(coco["annotations"]),
                   "--detections", str(dets), "--images", str(coco["images"]), "--device", "cpu",
                   "--multimask", "--keep-ratio", "0.5", "--max-images", "2", "--max-detections", "2",
                   "--score-threshold", "0.1", "--out", str(out)])  # fmt: skip
    capsys.readouterr()
    result = json.loads(out.read_text())
    assert status == 0 and not list(out.parent.glob(".*tmp*"))  # written by a rename
    assert (result["multimask"], result["keep_ratio"], result["images"], result["max_detections"]) == (
        True, 0.5, 2, 2)  # fmt: skip
    assert result["detections"] <= 4 and result["score_threshold"] == 0.1
    # the Python entry point for any Sam (an official one, say) gives the same numbers
    sam = _load(checkpoint)
    sam.image_encoder.set_keep_ratio(0.5)
    same = evaluate_instances_files(sam, coco["annotations"], dets, coco["images"], max_images=2,
                                    max_detections=2, score_threshold=0.1, multimask=True, device="cpu",
                                    progress=False)  # fmt: skip
    assert [same[k] for k in ("ap", "ap50", "stats")] == [result[k] for k in ("ap", "ap50", "stats")]


# --- bad input ----------------------------------------------------------------------------


def _bad_cases(coco: dict, tmp: Path) -> list[tuple[str, dict, str]]:
    ok = {"image_id": 10, "category_id": 1, "bbox": [2.0, 2.0, 10.0, 10.0], "score": 0.5}
    instances = json.loads(coco["annotations"].read_text())
    (tmp / "broken.json").write_text("[{")
    gone = {**instances, "images": [*instances["images"], {"id": 99, "file_name": "gone.png", "height": 8,
                                                            "width": 8}]}  # fmt: skip
    return [
        ("unknown image", {"detections": [ok, {**ok, "image_id": 404}]},
         "image ids that the annotations lack: 404"),
        ("unknown category", {"detections": [{**ok, "category_id": 9}]},
         "category ids that the annotations lack"),
        ("empty", {"detections": []}, "is empty: expected a JSON list"),
        ("outside", {"detections": [{**ok, "bbox": [150.0, 10.0, 20.0, 20.0]}]},
         "has no area inside the image"),
        ("negative size", {"detections": [{**ok, "bbox": [20.0, 10.0, -5.0, 20.0]}]}, "w, h > 0"),
        ("instances file", {"detections": coco["annotations"]},
         r"got a JSON object .*instances/ground-truth"),
        ("missing keys", {"detections": [{"image_id": 10, "bbox": [1, 2, 3, 4]}]},
         r"missing \['category_id', 'score'\]"),
        ("bad bbox", {"detections": [{**ok, "bbox": [1, 2, 3]}]},
         r"bbox must be 4 finite numbers \[x, y, w, h\]"),
        ("not json", {"detections": tmp / "broken.json"}, "is not JSON"),
        ("threshold", {"detections": [ok], "score_threshold": 0.9}, "no detection left"),
        ("missing image", {"detections": [{**ok, "image_id": 99, "bbox": [0, 0, 4, 4]}],
                           "annotations": _write(tmp / "gone.json", gone)}, "image 99: expected its file at"),
    ]  # fmt: skip


def test_bad_input_gets_one_clear_error(coco: dict, checkpoint: Path, tmp_path: Path, capsys) -> None:
    for name, case, message in _bad_cases(coco, tmp_path):
        annotations, dets = case.pop("annotations", coco["annotations"]), case.pop("detections")
        with pytest.raises(ValueError, match=message):
            prepare_instances(annotations, dets, coco["images"], **case)
        if not isinstance(dets, Path):
            dets = _write(tmp_path / f"{name.replace(' ', '_')}.json", dets)
        args = ["eval", str(checkpoint), "--task", "instances", "--detections", str(dets), "--images",
                str(coco["images"]), "--annotations", str(annotations)]  # fmt: skip
        if name == "threshold":
            args += ["--score-threshold", "0.9"]
        assert main(args) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("routevit eval: error: "), (name, err)

    # an image whose size is not the annotations' fails while reading, in one line too
    dets = [{"image_id": 10, "category_id": 1, "bbox": [2.0, 2.0, 10.0, 10.0], "score": 0.5}]
    task = prepare_instances(coco["annotations"], dets, coco["images"])
    task.files[10] = coco["images"] / "0001.png"
    with pytest.raises(ValueError, match=r"is 64x90 but the annotations say 100x72"):
        run_instances(BoxFillPredictor(), task, progress=False)
    # the options of one task are refused on the other
    assert main(["eval", str(checkpoint), "--detections", "x.json", "--device", "cpu"]) == 2
    assert "--detections apply to --task instances only" in capsys.readouterr().err
    assert main(["eval", str(checkpoint), "--task", "instances", "--device", "cpu"]) == 2
    assert "needs --detections FILE" in capsys.readouterr().err
