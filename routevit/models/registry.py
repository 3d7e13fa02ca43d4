"""Named model configurations, timm-style: ``register_model``, ``create_model``, ``list_models``,
and each model's facts ([`ModelInfo`][]) that the commands read instead of keeping their own
tables: the task, the input size and normalisation, the unrouted twin and the baseline that
``routevit bench`` times it against.

Weights of other projects are read by [routevit.interop][], which depends on this module and
never the reverse: it registers a loader per task and weight role with
[register_weights_loader][routevit.models.registry.register_weights_loader], and the factories
call [load_weights][routevit.models.registry.load_weights]. The same way, [routevit.hub][]
registers the portable folder format (``model.safetensors`` + ``config.json``) that
``create_model(DIR)``, ``create_model(name, pretrained=DIR)`` and ``model.save_pretrained(DIR)``
use ([register_folder_format][routevit.models.registry.register_folder_format]).

Every model that [create_model][routevit.models.registry.create_model] builds carries its facts
as a timm-style ``model.pretrained_cfg`` dict (input size, mean/std, crop, interpolation,
number of classes, first conv, classifier), which ``timm.data.resolve_data_config(model=...)``
reads.
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
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
        crop_pct, interpolation: the evaluation resize (timm's meaning: resize to
            ``size / crop_pct``, centre-crop ``size``); SAM encoders take the whole image (1.0).
        first_conv, classifier: parameter-name prefixes of the first convolution and of the
            classifier (None: no classifier), as in timm's ``pretrained_cfg``.
    """

    name: str
    task: str
    input_size: tuple[int, int, int]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    vanilla: str | None = None
    bench_baseline: str | None = None
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    first_conv: str = "patch_embed.proj"
    classifier: str | None = "head"

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")

    def pretrained_cfg(self, model: nn.Module | None = None) -> dict[str, Any]:
        """These facts as a timm ``pretrained_cfg`` dict; with ``model``, its own input size and
        number of classes (a model built with ``img_size=`` or ``num_classes=`` overrides)."""
        input_size, num_classes = self.input_size, 1000 if self.task == "classification" else 0
        config = getattr(model, "config", None)
        if config is not None and hasattr(config, "img_size"):
            input_size = (config.in_chans, config.img_size, config.img_size)
        if model is not None:
            num_classes = getattr(model, "num_classes", 0)
        return {
            "architecture": self.name,
            "input_size": tuple(input_size),
            "fixed_input_size": True,
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
            "crop_mode": "center",
            "mean": tuple(self.mean),
            "std": tuple(self.std),
            "num_classes": num_classes,
            "first_conv": self.first_conv,
            "classifier": self.classifier,
        }


_MODELS: dict[str, tuple[ModelFactory, ModelInfo]] = {}
_LOADERS: dict[tuple[str, str], WeightsLoader] = {}
# the portable folder format (routevit.hub): "folder" (path -> the folder or None), "load", "save"
_FOLDER_FORMAT: dict[str, Callable[..., Any]] = {}
_REGISTER_HOOKS: list[Callable[[str], None]] = []  # called with each newly registered name

# Modules under routevit.models whose import registers a model family.
_FAMILIES: tuple[str, ...] = ("vit", "sam")


def register_model(fn: ModelFactory | None = None, /, **facts: Any) -> Any:
    """Decorator: register a factory under its function name with its [`ModelInfo`][] facts
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
        for hook in list(_REGISTER_HOOKS):
            hook(name)
        return factory

    return decorate if fn is None else decorate(fn)


def on_register(hook: Callable[[str], None]) -> None:
    """Call ``hook(name)`` for every model registered from now on (once per hook); used by
    [routevit.interop.timm_registry][] to keep timm's registry in step."""
    if hook not in _REGISTER_HOOKS:
        _REGISTER_HOOKS.append(hook)


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


def create_model(name: str | PathLike[str], **kwargs: Any) -> nn.Module:
    """Build a registered model; keyword arguments go to its factory (``pretrained``,
    ``keep_ratio``, and size overrides such as ``num_classes``, ``img_size``, ``depth``).

    ``name`` may also be a folder written by ``save_pretrained`` (``model.safetensors`` +
    ``config.json``), and so may ``pretrained``: the model is then rebuilt from the folder's
    architecture and its weights loaded strictly (``keep_ratio=`` still applies; see
    [routevit.hub.load_pretrained][]). The model's facts are set as ``model.pretrained_cfg``.
    """
    folder = _pretrained_folder(name)
    if folder is not None:
        return _FOLDER_FORMAT["load"](folder, **kwargs)
    folder = _pretrained_folder(kwargs.get("pretrained"))
    if folder is not None:
        rest = {k: v for k, v in kwargs.items() if k != "pretrained"}
        return _FOLDER_FORMAT["load"](folder, name=name, **rest)
    if isinstance(name, PathLike) or "/" in str(name):
        raise ValueError(
            f"{str(name)!r} is neither a registered model name nor a save_pretrained folder (a folder "
            "with config.json and model.safetensors)"
        )
    info = model_info(name)
    model = _MODELS[name][0](**kwargs)
    model.pretrained_cfg = info.pretrained_cfg(model)
    return model


def register_folder_format(
    folder: Callable[[Any], Path | None], load: Callable[..., nn.Module], save: Callable[..., Path]
) -> None:
    """Set the portable folder format: ``folder(path)`` returns the folder that ``path`` names
    (or None), ``load(folder, name=None, **overrides)`` rebuilds its model, ``save(model,
    directory, **info)`` writes one; called by [routevit.hub][]."""
    _FOLDER_FORMAT.update(folder=folder, load=load, save=save)


def save_pretrained(model: nn.Module, directory: str | PathLike[str], **info: Any) -> Path:
    """Write ``model`` as a portable folder with the registered format (see
    [routevit.hub.save_pretrained][]); the models' ``save_pretrained`` methods call this."""
    if "save" not in _FOLDER_FORMAT:  # `import routevit` imports routevit.hub, which registers it
        raise ValueError("no folder format registered (import routevit.hub)")
    return _FOLDER_FORMAT["save"](model, directory, **info)


def _pretrained_folder(source: object) -> Path | None:
    if "folder" not in _FOLDER_FORMAT or not isinstance(source, (str, PathLike)):
        return None
    return _FOLDER_FORMAT["folder"](source)


def register_weights_loader(task: str, role: str, loader: WeightsLoader) -> None:
    """Let factories of ``task`` models load a weights ``role`` (``"pretrained"``,
    ``"little_pretrained"``) with ``loader(model, source, allow_missing=...)``, a strict loader
    that returns a load report; called by [`routevit.interop`][]."""
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
