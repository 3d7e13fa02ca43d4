"""routevit's models in timm's registry: ``import routevit`` makes ``timm.create_model(name)`` work.

Every registered routevit model (``routevit.list_models()``) becomes a timm entrypoint of the same
name, with a ``pretrained_cfg`` made from its [ModelInfo][routevit.models.registry.ModelInfo]:
input size, mean/std, crop, interpolation, number of classes, first conv and classifier. So
timm's tools that start from a model name work on them: ``timm.create_model``,
``timm.data.resolve_data_config(model=...)`` / ``timm.data.create_transform``, timm's
``benchmark.py`` and ``validate.py`` (``--model blvit_deit_b_t``), and anything else built on
``timm.create_model``. The entrypoint calls [routevit.create_model][routevit.models.registry.create_model], so
the model is exactly routevit's, with the same keyword arguments (``keep_ratio``, ``depth``,
``img_size``, ``num_classes``, ...).

No published weights exist, so ``timm.list_models(pretrained=True)`` does not list them, and
``pretrained=True`` needs a local source: ``pretrained_cfg_overlay={"file": PATH}`` with a
``save_pretrained`` folder (or its ``model.safetensors``), or with a vanilla checkpoint, which
means what routevit's ``pretrained=PATH`` means (e.g. DeiT-B weights for the P path of
``blvit_deit_b_t``). ``checkpoint_path=DIR/model.safetensors`` (what ``validate.py
--checkpoint`` passes) loads a routevit state dict with timm's own loader.

Importing timm costs about two seconds, so ``import routevit`` does not do it: it calls
[register_when_timm_is_imported][routevit.interop.timm_registry.register_when_timm_is_imported],
which registers the models right away if timm is already imported and otherwise the moment
timm's import finishes, whichever of the two a program imports first; a model registered with
``@register_model`` later joins at once.
A name timm already has for a model of its own is left to timm (none today).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import sys
from collections.abc import Callable
from typing import Any

from torch import nn

from ..models.registry import create_model, list_models, model_info, on_register

log = logging.getLogger(__name__)

__all__ = ["register_all", "register_when_timm_is_imported", "registered"]

default_cfgs: dict[str, Any] = {}  # timm's register_model reads the entrypoint module's default_cfgs
_REGISTERED: list[str] = []


def _entrypoint(name: str) -> Callable[..., nn.Module]:
    def create(
        pretrained: bool = False,
        pretrained_cfg: Any = None,
        pretrained_cfg_overlay: dict[str, Any] | None = None,
        cache_dir: Any = None,
        **kwargs: Any,
    ) -> nn.Module:
        from timm.models._builder import resolve_pretrained_cfg

        cfg = resolve_pretrained_cfg(name, pretrained_cfg, pretrained_cfg_overlay)
        source = None
        if pretrained:
            source = cfg.file
            if not source:
                raise ValueError(
                    f"{name} has no published weights: pass pretrained_cfg_overlay={{'file': PATH}} with a "
                    "save_pretrained folder (or a vanilla checkpoint for its P path), or pretrained=False"
                )
        model = create_model(name, pretrained=source, **kwargs)
        model.pretrained_cfg = {**cfg.to_dict(), **model.pretrained_cfg}  # the instance's own facts win
        model.default_cfg = model.pretrained_cfg  # timm's older name for it
        return model

    create.__name__ = create.__qualname__ = name
    create.__module__ = __name__
    create.__doc__ = f"routevit's ``{name}`` (see ``routevit.create_model``)."
    return create


def _register(name: str) -> None:
    import timm
    from timm.models import generate_default_cfgs, register_model
    from timm.models._registry import _model_to_module

    if name in _REGISTERED:
        return
    if timm.is_model(name) and _model_to_module.get(name) != __name__.rsplit(".", 1)[-1]:
        log.warning("timm already has a model named %s; routevit's is not registered with timm", name)
        return
    default_cfgs.update(generate_default_cfgs({name: model_info(name).pretrained_cfg()}))
    setattr(sys.modules[__name__], name, register_model(_entrypoint(name)))
    _REGISTERED.append(name)


def register_all() -> list[str]:
    """Register every routevit model with timm, and from then on each model that
    ``@register_model`` adds; returns the names registered."""
    if sys.modules.get("timm", False) is None:  # a program that blocks timm's import
        return []
    on_register(_register)
    for name in list_models():
        _register(name)
    return list(_REGISTERED)


def registered() -> list[str]:
    """The routevit models that timm knows."""
    return list(_REGISTERED)


class _AfterTimmImport(importlib.abc.MetaPathFinder):
    """Finds ``timm`` with the other finders and runs [`register_all`][] once its module has
    executed; removes itself from ``sys.meta_path`` on first use."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "timm":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)  # every other finder (editable installs too)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            register_all()

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def register_when_timm_is_imported() -> None:
    """Register routevit's models with timm now if timm is imported, else as soon as it is."""
    if "timm" in sys.modules:  # imported, or blocked (None): register_all tells them apart
        register_all()
    elif not any(isinstance(f, _AfterTimmImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterTimmImport())
