"""routevit: token-routing building blocks for big.LITTLE Vision Transformers."""

from . import bench, flops, interop, layers, runtime
from .interop import build_sam
from .layers import get_attention_backend, set_attention_backend
from .models import create_model, list_models, model_info

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "bench",
    "build_sam",
    "create_model",
    "flops",
    "interop",
    "get_attention_backend",
    "layers",
    "list_models",
    "model_info",
    "runtime",
    "set_attention_backend",
]
