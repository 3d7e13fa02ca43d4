"""The recipes' architectures, built only from routevit.layers."""

from .registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
