"""Named model configurations, timm-style: ``register_model``, ``create_model``, ``list_models``,
and each model's facts (:class:`ModelInfo`) that the commands read instead of keeping their own
tables: the task, the input size and normalisation, the unrouted twin and the baseline that
``routevit bench`` times it against.

Weights of other projects are read by :mod:`routevit.interop`, which depends on this module and
never the reverse: it registers a loader per task and weight role with
:func:`register_weights_loader`, and the factories call :func:`load_weights`.
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

ModelFactory = Callable[..., nn.Module]
WeightsLoader = Callable[..., Any]  # loader(model, source, *, allow_missing=()) -> LoadReport

TASKS = ("classification", "sam")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# segment_anything's Sam.pixel_mean / pixel_std: ImageNet's, written on SAM's 0-255 scale
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class ModelInfo:
    """What routevit knows about a registered model besides how to build it.

    Attributes:
        name: the registered name.
        task: ``"classification"`` or ``"sam"`` (an image encoder for segment_anything's Sam).
        input_size: ``(C, H, W)`` of the default configuration.
        mean, std: input normalisation in [0, 1] units.
        vanilla: the same network with no routing (a routevit name for SAM encoders, a timm name
            for classifiers), or None for a model that is itself unrouted.
        bench_baseline: the timm model ``routevit bench`` times this one against, or None.
    """

    name: str
    task: str
    input_size: tuple[int, int, int]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    vanilla: str | None = None
    bench_baseline: str | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")


_MODELS: dict[str, tuple[ModelFactory, ModelInfo]] = {}
_LOADERS: dict[tuple[str, str], WeightsLoader] = {}

# Modules under routevit.models whose import registers a model family.
_FAMILIES: tuple[str, ...] = ("vit", "sam")


def register_model(fn: ModelFactory | None = None, /, **facts: Any) -> Any:
    """Decorator: register a factory under its function name with its :class:`ModelInfo` facts
    (``task``, ``input_size``, ``mean``, ``std``, ``vanilla``, ``bench_baseline``); bare
    ``@register_model`` registers a 224px ImageNet classifier::

        @register_model(task="classification", input_size=(3, 224, 224), vanilla="deit_base_patch16_224")
        def my_blvit(pretrained=None, **overrides): ...
    """
    facts = {"task": "classification", "input_size": (3, 224, 224), **facts}

    def decorate(factory: ModelFactory) -> ModelFactory:
        name = factory.__name__
        if name in _MODELS:
            raise ValueError(f"a model named {name!r} is already registered")
        _MODELS[name] = (factory, ModelInfo(name, **facts))
        return factory

    return decorate if fn is None else decorate(fn)


def list_models(pattern: str = "*", task: str | None = None) -> list[str]:
    """Registered model names matching a shell-style ``pattern`` (and ``task``), sorted."""
    _import_model_families()
    return sorted(
        n for n, (_, info) in _MODELS.items() if fnmatch.fnmatch(n, pattern) and task in (None, info.task)
    )


def model_info(name: str) -> ModelInfo:
    """The facts of a registered model; a ValueError naming the registered ones otherwise."""
    _import_model_families()
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available models: {sorted(_MODELS)}")
    return _MODELS[name][1]


def create_model(name: str, **kwargs: object) -> nn.Module:
    """Build a registered model; keyword arguments go to its factory (``pretrained``,
    ``keep_ratio``, and size overrides such as ``num_classes``, ``img_size``, ``depth``)."""
    model_info(name)
    return _MODELS[name][0](**kwargs)


def register_weights_loader(task: str, role: str, loader: WeightsLoader) -> None:
    """Let factories of ``task`` models load a weights ``role`` (``"pretrained"``,
    ``"little_pretrained"``) with ``loader(model, source, allow_missing=...)``, a strict loader
    that returns a load report; called by :mod:`routevit.interop`."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    _LOADERS[(task, role)] = loader


def load_weights(
    model: nn.Module, task: str, *, allow_missing: Sequence[str] = (), **sources: Any
) -> dict[str, Any]:
    """Load each non-None ``role=source`` into ``model`` with the loader registered for it,
    strictly: ``allow_missing`` (shell patterns on the model's parameter names) names what may
    keep its init. Returns each role's load report."""
    reports = {}
    for role, source in sources.items():
        if source is None:
            continue
        if (task, role) not in _LOADERS:  # `import routevit` imports routevit.interop, which registers them
            raise ValueError(f"no weights loader for {role}= of {task} models (import routevit.interop)")
        reports[role] = _LOADERS[(task, role)](model, source, allow_missing=allow_missing)
    return reports


def _import_model_families() -> None:
    """Import the model modules so that their ``@register_model`` decorators have run."""
    for family in _FAMILIES:
        importlib.import_module(f"{__package__}.{family}")
