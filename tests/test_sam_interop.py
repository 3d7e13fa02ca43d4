"""Loading SAM checkpoints (official layout, bare encoder, our own), error paths, build_sam with
SamPredictor, ONNX export, the same-weight benchmark encoders, and the optional dependency."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _sam_testing import sam_image_encoder, sam_kwargs

from routevit import create_model
from routevit.interop.sam import build_benchmark_encoders, build_sam, load_sam_encoder
from routevit.layers.encoder import Schedule

modeling = pytest.importorskip("segment_anything.modeling")

SMALL = dict(
    img_size=224, window_size=7, depth=3, embed_dim=64, num_heads=4, global_attn_indexes=(1,),
    little_dim=32, little_heads=2, schedule=Schedule.big_little_from(3, 2, (1,)),
)


def _full_sam(**overrides) -> torch.nn.Module:
    """A segment_anything Sam with a small random image encoder and SAM's prompt encoder/decoder."""
    encoder = sam_image_encoder(**sam_kwargs(**overrides))
    size, grid = overrides["img_size"], overrides["img_size"] // 16
    return modeling.Sam(
        image_encoder=encoder,
        prompt_encoder=modeling.PromptEncoder(
            embed_dim=256, image_embedding_size=(grid, grid), input_image_size=(size, size), mask_in_chans=16
        ),
        mask_decoder=modeling.MaskDecoder(
            num_multimask_outputs=3,
            transformer=modeling.TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
        ),
    ).eval()


@pytest.fixture(scope="module")
def sam_checkpoint(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    sam = _full_sam(**SMALL)
    path = tmp_path_factory.mktemp("sam") / "sam_small.pth"
    torch.save(sam.state_dict(), path)  # the sam_vit_b_01ec64.pth layout
    return sam, path


def test_official_checkpoint_loads_into_the_encoder(sam_checkpoint):
    sam, path = sam_checkpoint
    model = create_model("blvit_sam_b_t", pretrained=path, keep_ratio=1.0, **SMALL).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = sam.image_encoder(x)
        assert ((model(x) - expected).norm() / expected.norm()).item() <= 1e-4
    report = load_sam_encoder(create_model("blvit_sam_b_t", **SMALL), path)
    assert report.layout == "segment_anything" and not report.missing and not report.unexpected
    assert "blocks.1.performance.attn.rel_pos_h" in report.loaded
    assert "blocks.1.mlp.fc1.weight" not in report.loaded
    assert "routers.1.proj.weight" in report.fresh and "blocks.2.fuse_mlp.gamma" in report.fresh


def test_own_checkpoint_round_trips(tmp_path):
    torch.manual_seed(0)
    model = create_model("blvit_sam_b_t", **SMALL).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "alpha" in name or "gamma" in name:
                p.uniform_(0.5, 1.0)
    path = tmp_path / "blvit.pth"
    torch.save({"model": model.state_dict()}, path)
    loaded = create_model("blvit_sam_b_t", pretrained=path, **SMALL).eval()
    report = load_sam_encoder(loaded, path)
    assert report.layout == "routevit" and not report.fresh and not report.missing
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_shape_mismatch_names_the_key_and_both_shapes(sam_checkpoint):
    _, path = sam_checkpoint
    with pytest.raises(ValueError, match=r"pos_embed: the checkpoint has shape \(1, 14, 14, 64\) but the "
                                         r"model expects \(1, 10, 10, 64\)"):
        create_model("blvit_sam_b_t", pretrained=path, **{**SMALL, "img_size": 160})


def test_unexpected_and_missing_keys_are_named(sam_checkpoint, tmp_path):
    sam, _ = sam_checkpoint
    state = {k: v for k, v in sam.image_encoder.state_dict().items() if k != "blocks.0.attn.qkv.weight"}
    state["blocks.7.norm1.weight"] = torch.ones(64)
    model = create_model("blvit_sam_b_t", **SMALL)
    with pytest.raises(ValueError, match=r"missing keys \[blocks\.0\.attn\.qkv\.weight\]; unexpected keys "
                                         r"\[blocks\.7\.norm1\.weight\]"):
        load_sam_encoder(model, state)
    report = load_sam_encoder(model, state, strict=False)
    assert report.missing == ["blocks.0.attn.qkv.weight"] and report.unexpected == ["blocks.7.norm1.weight"]


class _Payload:
    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_files_are_read_with_weights_only(tmp_path):
    hostile = tmp_path / "hostile.pth"
    with open(hostile, "wb") as f:
        pickle.dump({"pos_embed": _Payload()}, f, protocol=2)
    model = create_model("blvit_sam_b_t", **SMALL)
    with pytest.raises(pickle.UnpicklingError):
        load_sam_encoder(model, hostile)
    listing = tmp_path / "list.pth"
    torch.save([1, 2], listing)
    with pytest.raises(TypeError, match="must hold a state dict"):
        load_sam_encoder(model, listing)


def test_build_sam_runs_sam_predictor_unchanged(sam_checkpoint):
    from segment_anything import SamAutomaticMaskGenerator, SamPredictor

    sam_ref, path = sam_checkpoint
    sam = build_sam("blvit_sam_b_t", checkpoint=path, **SMALL)
    assert type(sam.image_encoder).__name__ == "BigLittleSamEncoder"
    torch.testing.assert_close(
        sam.mask_decoder.state_dict()["iou_prediction_head.layers.0.weight"],
        sam_ref.mask_decoder.state_dict()["iou_prediction_head.layers.0.weight"],
    )
    image = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    predictor = SamPredictor(sam)
    predictor.set_image(image)
    masks, scores, low_res = predictor.predict(
        point_coords=np.array([[80, 60]]), point_labels=np.array([1]), box=np.array([10, 10, 100, 90])
    )
    assert masks.shape == (3, 120, 160) and masks.dtype == bool
    assert scores.shape == (3,) and low_res.shape == (3, 56, 56)
    generated = SamAutomaticMaskGenerator(
        sam, points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0
    )
    assert isinstance(generated.generate(image), list)


def test_build_sam_needs_a_full_checkpoint(tmp_path, sam_checkpoint):
    sam, _ = sam_checkpoint
    bare = tmp_path / "encoder_only.pth"
    torch.save(sam.image_encoder.state_dict(), bare)
    with pytest.raises(ValueError, match="no prompt_encoder"):
        build_sam("blvit_sam_b_t", checkpoint=bare, **SMALL)


def test_onnx_export_at_a_fixed_keep_ratio_matches_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    padded = {**SMALL, "img_size": 160}  # 10x10 tokens padded to 14x14 windows; keep_ratio 0.25
    model = create_model("blvit_sam_b_t", **padded).eval()
    x = torch.randn(1, 3, 160, 160)
    buffer = io.BytesIO()
    with torch.no_grad(), pytest.warns(Warning):  # legacy exporter: deprecation, index_add notes
        torch.onnx.export(model, (x,), buffer, dynamo=False, opset_version=17, input_names=["image"])
        expected = model(x)
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"image": x.numpy()})
    assert out.shape == (1, 256, 10, 10)
    assert np.linalg.norm(out - expected.numpy()) / np.linalg.norm(expected.numpy()) <= 1e-4


def test_benchmark_encoders_share_weights():
    encoders = build_benchmark_encoders("blvit_sam_b_t", keep_ratio=1.0, **SMALL)
    assert set(encoders) == {"blvit", "routevit_vanilla", "segment_anything", "timm"}
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        outs = {name: m(x) for name, m in encoders.items()}
    reference = outs.pop("segment_anything")
    for name, out in outs.items():
        assert ((out - reference).norm() / reference.norm()).item() <= 1e-4, name


def test_routevit_imports_without_segment_anything():
    code = (
        "import sys; sys.modules['segment_anything'] = None\n"
        "import routevit\n"
        "from routevit.interop.sam import build_sam\n"
        "assert 'blvit_sam_b_t' in routevit.list_models('*sam*')\n"
        "try:\n    build_sam('blvit_sam_b_t', img_size=64, window_size=2, depth=1, global_attn_indexes=(),"
        " schedule=__import__('routevit.layers.encoder').layers.encoder.Schedule(('full',), ()))\n"
        "except ImportError as e:\n    print(e)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "pip install 'routevit[sam]'" in result.stdout
