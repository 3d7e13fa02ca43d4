"""Named model configurations, timm-style: ``register_model``, ``create_model``, ``list_models``."""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable

from torch import nn

ModelFactory = Callable[..., nn.Module]

_MODELS: dict[str, ModelFactory] = {}

# Modules under routevit.models whose import registers a model family.
_FAMILIES: tuple[str, ...] = ("vit", "sam")


def register_model(fn: ModelFactory) -> ModelFactory:
    """Decorator: register a factory under its function name."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"a model named {name!r} is already registered")
    _MODELS[name] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``, sorted."""
    _import_model_families()
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def create_model(name: str, **kwargs: object) -> nn.Module:
    """Build a registered model; keyword arguments go to its factory (``pretrained``,
    ``keep_ratio``, and size overrides such as ``num_classes``, ``img_size``, ``depth``)."""
    _import_model_families()
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available models: {sorted(_MODELS)}")
    return _MODELS[name](**kwargs)


def _import_model_families() -> None:
    """Import the model modules so that their ``@register_model`` decorators have run."""
    for family in _FAMILIES:
        importlib.import_module(f"{__package__}.{family}")
