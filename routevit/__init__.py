"""routevit: token-routing building blocks for big.LITTLE Vision Transformers."""

from . import bench, flops, interop, layers
from .layers import get_attention_backend, set_attention_backend
from .models import create_model, list_models

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "bench",
    "create_model",
    "flops",
    "interop",
    "get_attention_backend",
    "layers",
    "list_models",
    "set_attention_backend",
]
