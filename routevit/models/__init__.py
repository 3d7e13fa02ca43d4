"""The recipes' architectures, built only from routevit.layers, and the registry of their facts."""

from .registry import ModelInfo, create_model, list_models, model_info, register_model

__all__ = ["ModelInfo", "create_model", "list_models", "model_info", "register_model"]
