"""Deployment: torch.compile, torch.export and ONNX give the eager model's outputs.

k is static for a given keep_ratio and input size, so graphs have static shapes; the
selection itself (top-k on the router scores) stays in the graph, so a new input routes anew.
"""

from __future__ import annotations

import io
import os
import warnings

import pytest
import torch
from _vit_helpers import single_thread  # noqa: F401 - used by pytestmark

import routevit

TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "num_heads": 2, "little_dim": 16, "little_heads": 1}

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_model(inference_form: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    model = routevit.create_model("blvit_deit_b_t", depth=4, num_classes=5, keep_ratio=0.25, **TINY)
    return routevit.layers.for_inference(model) if inference_form else model.eval()


FORMS = pytest.mark.parametrize("inference_form", [False, True], ids=["trained", "inference_form"])


@pytest.mark.parametrize(
    "backend",
    [
        "aot_eager",
        pytest.param(
            "inductor",
            marks=pytest.mark.skipif(
                not os.environ.get("ROUTEVIT_SLOW"), reason="inductor: 45-85 s here; ROUTEVIT_SLOW=1"
            ),
        ),
    ],
)
@FORMS
def test_torch_compile_matches_eager_without_graph_breaks(backend: str, inference_form: bool) -> None:
    model = tiny_model(inference_form)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend, fullgraph=True)  # fullgraph: no graph break
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


@FORMS
def test_torch_export_matches_eager_with_dynamic_batch(inference_form: bool) -> None:
    model = tiny_model(inference_form)
    batch = torch.export.Dim("batch", min=1, max=64)
    exported = torch.export.export(model, (torch.randn(2, 3, 32, 32),), dynamic_shapes=({0: batch},))
    x = torch.randn(3, 3, 32, 32)  # another input and batch size: routing is not baked in
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@FORMS
def test_onnx_export_matches_eager(inference_form: bool, dynamo: bool) -> None:
    """Both of torch's exporters: the default (dynamo, which needs onnxscript: the onnx extra
    installs it) and the legacy TorchScript one (``dynamo=False``)."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    if dynamo:
        pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript: routevit[onnx]")
    model = tiny_model(inference_form)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings of the exporter
        torch.onnx.export(
            model,
            (torch.randn(2, 3, 32, 32),),
            buffer,
            dynamo=dynamo,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
        )
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 32, 32)
    (logits,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(logits), model(x), rtol=1e-4, atol=1e-5)
