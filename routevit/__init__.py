"""routevit: token-routing building blocks for big.LITTLE Vision Transformers."""

from . import bench, flops, hub, interop, layers, runtime
from ._version import __version__
from .hub import load_pretrained, save_pretrained
from .interop import build_sam
from .interop.timm_registry import register_when_timm_is_imported
from .layers import get_attention_backend, set_attention_backend
from .models import create_model, list_models, model_info

register_when_timm_is_imported()  # then timm.create_model("blvit_deit_b_t") works

__all__ = [
    "__version__",
    "bench",
    "build_sam",
    "create_model",
    "flops",
    "interop",
    "get_attention_backend",
    "hub",
    "layers",
    "list_models",
    "load_pretrained",
    "model_info",
    "runtime",
    "save_pretrained",
    "set_attention_backend",
]
