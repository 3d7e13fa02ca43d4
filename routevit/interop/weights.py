"""The one reader of weights files: every path that loads a checkpoint (``create_model(pretrained=)``,
``build_sam``, recipes' ``model.pretrained`` and teacher, ``routevit eval`` / ``visualize``, resume)
reads it here, and every load is checked here.

Only tensors are read: ``.safetensors`` files, or ``torch.load(..., weights_only=True)`` for
``.pth``/``.pt``/``.bin``. A file holding other Python objects is refused with
:class:`UnsafeCheckpointError`, which says why and never suggests turning the safety off.

Loading is strict: a model entry the checkpoint should fill and does not, or a checkpoint entry
the model has no place for, is a :class:`CheckpointMismatchError` that lists them grouped by
name pattern, unless the caller names what may stay fresh with ``allow_missing`` (shell
patterns on the model's parameter names, e.g. ``allow_missing=("head.*",)`` to fine-tune on
other classes). A checkpoint that fills none of the model's entries is always an error.
"""

from __future__ import annotations

import fnmatch
import logging
import pickle
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

StateDict = Mapping[str, torch.Tensor]
Source = str | PathLike[str] | StateDict

TORCH_SUFFIXES = (".pth", ".pt", ".bin")
SAFETENSORS_SUFFIXES = (".safetensors",)


@dataclass
class LoadReport:
    """What a load did, by the model's parameter names; every loader returns one.

    ``layout``: the checkpoint's layout (``"segment_anything"`` or ``"routevit"`` for SAM
    encoders, ``"timm"`` for ViT checkpoints). ``loaded``: model keys filled from the checkpoint.
    ``fresh``: model keys that a vanilla checkpoint cannot have (E path, routers, alpha, gamma)
    and that keep their init.
    ``missing``: model keys the checkpoint should have filled but lacks. ``unexpected``:
    checkpoint keys that were not used. ``notes``: adaptations made (resampling, skipped head).
    """

    loaded: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    layout: str = ""

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unexpected

    def summary(self) -> str:
        """One line: the counts, and the missing / unexpected keys grouped by name pattern."""
        parts = [f"loaded {len(self.loaded)}", f"fresh {len(self.fresh)}"]
        if self.missing:
            parts.append(f"missing {group_keys(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected {group_keys(self.unexpected)}")
        parts.extend(self.notes)
        return "; ".join(parts)


class UnsafeCheckpointError(pickle.UnpicklingError, ValueError):
    """A ``torch.save`` file holding Python objects other than tensors (not unpickled)."""


class NotAStateDictError(TypeError, ValueError):
    """A readable file whose content is not a ``{name: tensor}`` mapping."""


class CheckpointMismatchError(ValueError):
    """A readable state dict whose entries do not fit the model (missing, unexpected, or of
    another shape); raised before anything is copied, so the model is left as it was."""


def _pattern(key: str, depth: int | None, collapse: bool) -> str:
    parts = ["*" if collapse and p.isdigit() else p for p in key.split(".")]
    if depth is not None and len(parts) > depth:
        parts = [*parts[:depth], "*"]
    return ".".join(parts)


def group_keys(keys: Iterable[str], limit: int = 6) -> str:
    """A short, one-line listing of state dict keys: the keys themselves when few, else grouped
    by prefix (``blocks.7.* (12)``), else by name pattern with layer numbers as ``*``
    (``blocks.*.mlp.fc1.weight (12)``) and coarser, until at most ``limit`` groups remain."""
    keys = sorted(set(keys))
    if not keys:
        return "[]"
    levels = [(d, False) for d in (None, 4, 3, 2)] + [(d, True) for d in (None, 4, 3, 2, 1)]
    for depth, collapse in levels:
        groups: dict[str, list[str]] = {}
        for k in keys:
            groups.setdefault(_pattern(k, depth, collapse), []).append(k)
        if len(groups) <= limit:
            break
    shown = [f"{p} ({len(g)})" if len(g) > 1 else g[0] for p, g in sorted(groups.items())]
    more = f", ... {len(shown) - limit} more groups" if len(shown) > limit else ""
    total = f"; {len(keys)} keys" if len(keys) > len(groups) > 1 else ""
    return f"[{', '.join(shown[:limit])}{more}{total}]"


def is_allowed(name: str, allow_missing: Sequence[str]) -> bool:
    """True when ``name`` matches one of the shell patterns ``allow_missing``."""
    return any(fnmatch.fnmatchcase(name, p) for p in allow_missing)


def check_patterns(allow_missing: Sequence[str]) -> tuple[str, ...]:
    """``allow_missing`` as a tuple of strings; a bare string is refused (it would be read as
    one pattern per character)."""
    if isinstance(allow_missing, str) or not all(isinstance(p, str) for p in allow_missing):
        raise TypeError(
            f"allow_missing must be a sequence of name patterns such as ('head.*',), got {allow_missing!r}"
        )
    return tuple(allow_missing)


def describe(source: Source, kind: str = "") -> str:
    """How messages name a checkpoint: ``checkpoint '<path>'``, or ``the state dict`` for a
    mapping; ``kind`` (e.g. ``"SAM "``) goes in front of the noun."""
    if isinstance(source, (str, PathLike)):
        return f"{kind}checkpoint {str(source)!r}"
    return f"the {kind}state dict"


def finish_load(
    report: LoadReport,
    what: str,
    model: nn.Module,
    *,
    allow_missing: Sequence[str] = (),
    strict: bool = True,
) -> LoadReport:
    """Check a load before anything is copied: ``missing`` keys that ``allow_missing`` names
    become ``fresh`` (and checkpoint keys of those names are dropped from ``unexpected``); then,
    with ``strict``, anything still missing or unexpected raises :class:`CheckpointMismatchError`.
    A load that fills nothing raises whatever ``strict`` says."""
    allow = check_patterns(allow_missing)
    let_fresh = [k for k in report.missing if is_allowed(k, allow)]
    report.missing = [k for k in report.missing if not is_allowed(k, allow)]
    report.fresh += let_fresh
    report.unexpected = [k for k in report.unexpected if not is_allowed(k, allow)]
    model_name = type(model).__name__
    if not report.loaded and (report.missing or report.unexpected):
        got = group_keys(report.unexpected) if report.unexpected else "no entry it can use"
        raise CheckpointMismatchError(
            f"{what} fills none of the {model_name}'s parameters (a checkpoint of another model?): "
            f"the model needs {group_keys(report.missing)}, the file holds {got}"
        )
    if strict and (report.missing or report.unexpected):
        parts = [f"missing keys {group_keys(report.missing)}"] if report.missing else []
        parts += [f"unexpected keys {group_keys(report.unexpected)}"] if report.unexpected else []
        parts += report.notes[:2]
        if report.missing:
            parts.append("allow_missing=(pattern, ...) names what may keep its init")
        raise CheckpointMismatchError(f"{what} does not fit the {model_name}: " + "; ".join(parts))
    return report


def load_exact(
    model: nn.Module,
    source: Source,
    *,
    allow_missing: Sequence[str] = (),
    strict: bool = True,
    what: str | None = None,
) -> LoadReport:
    """Load a state dict of ``model``'s own parameter names (a routevit checkpoint, a
    ``model.state_dict()`` saved with torch or safetensors) into ``model``: every entry must
    fit by name and shape, except the model entries ``allow_missing`` names, which keep their
    init. Raises :class:`CheckpointMismatchError` before anything is copied; ``what`` names the
    source in messages (default: its path)."""
    allow = check_patterns(allow_missing)
    what = what or describe(source)
    state = read_state_dict(source)
    own = model.state_dict()
    report = LoadReport(layout="routevit")
    updates: dict[str, torch.Tensor] = {}
    for name, target in own.items():
        if name not in state:
            report.missing.append(name)
            continue
        tensor = state[name]
        if tensor.shape != target.shape:
            if is_allowed(name, allow):
                report.missing.append(name)
                shapes = f"checkpoint {tuple(tensor.shape)}, model {tuple(target.shape)}"
                report.notes.append(f"{name} not loaded: {shapes}")
                continue
            raise CheckpointMismatchError(
                f"{what}: {name} has shape {tuple(tensor.shape)} but the {type(model).__name__} expects "
                f"{tuple(target.shape)}"
            )
        updates[name] = tensor
        report.loaded.append(name)
    report.unexpected = sorted(set(state) - set(own))
    finish_load(report, what, model, allow_missing=allow, strict=strict)
    copy_into(model, updates)
    return report


def copy_into(model: nn.Module, updates: Mapping[str, torch.Tensor]) -> None:
    """Copy ``updates`` (a subset of ``model``'s state dict names) into the model's tensors."""
    own = model.state_dict()
    with torch.no_grad():
        for name, tensor in updates.items():
            own[name].copy_(tensor)


def read_file(path: str | PathLike[str]) -> Any:
    """The content of a ``.safetensors`` file, or of a ``torch.save`` file (``weights_only``:
    tensors and plain Python values only), with one-line errors for a missing, corrupt or
    unsafe file. For files that are not a state dict (e.g. a trainer's ``state.pt``)."""
    return _read_file(Path(path))


def read_state_dict(source: Source) -> dict[str, torch.Tensor]:
    """A checkpoint file or a mapping, as a plain ``{name: tensor}`` dict on the CPU.

    Accepts a plain state dict or one wrapped as ``{"model": ...}`` / ``{"state_dict": ...}``;
    a ``module.`` prefix (DistributedDataParallel) is removed.
    """
    if isinstance(source, Mapping):
        obj: Any = source
        where = "the state dict"
    elif isinstance(source, (str, PathLike)):
        obj = _read_file(Path(source))
        where = repr(str(source))
    else:
        raise TypeError(f"expected a checkpoint path or a state dict mapping, got {type(source).__name__}")
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping) or not obj:
        raise NotAStateDictError(
            f"{where} must hold a state dict (a non-empty mapping of names to tensors), got "
            f"{type(obj).__name__}"
        )
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"expected a {{name: tensor}} state dict; these entries are not tensors: {bad[:5]}")
    state = dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _read_file(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix not in TORCH_SUFFIXES + SAFETENSORS_SUFFIXES:
        raise ValueError(
            f"unsupported checkpoint suffix {suffix!r} of {str(path)!r}; expected one of "
            f"{TORCH_SUFFIXES + SAFETENSORS_SUFFIXES}"
        )
    try:
        if suffix in SAFETENSORS_SUFFIXES:
            try:
                from safetensors.torch import load_file
            except ImportError as err:
                raise ImportError(
                    f"reading {str(path)!r} needs the safetensors package (pip install 'routevit[timm]')"
                ) from err
            return load_file(str(path), device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except ImportError:
        raise
    except pickle.UnpicklingError as err:  # weights_only refused a global: never run it
        raise UnsafeCheckpointError(
            f"could not read checkpoint {str(path)!r}: it holds Python objects other than tensors, "
            "which routevit does not unpickle (weights_only=True); save a state dict of tensors "
            f"(or a .safetensors file) instead{_refused_global(err)}"
        ) from None
    except Exception as err:  # a truncated/corrupt file
        raise ValueError(
            f"could not read checkpoint {str(path)!r}: expected a {suffix} file, got one that fails to "
            f"load ({_first_line(err)})"
        ) from err


def _refused_global(err: BaseException) -> str:
    """``: <the global torch refused>`` from torch's message, without its advice to retry with
    weights_only=False (the unsafe path)."""
    for line in str(err).splitlines():
        if "Unsupported global" in line or "Unsupported operand" in line:
            return ": " + line.split(":", 1)[-1].strip().split(". ")[0]
    return ""


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _first_line(err: BaseException) -> str:
    """The error's first line, without torch's advice to retry with weights_only=False and
    without terminal escape codes."""
    text = _ANSI.sub("", str(err)).strip().splitlines()
    first = text[0].strip() if text else type(err).__name__
    return first.split(". ")[0] if len(first) > 120 else first  # torch appends long advice


def model_from_file(
    path: str | PathLike[str], name: str, overrides: Mapping[str, Any] | None = None
) -> nn.Module:
    """The registered routevit model ``name`` (factory ``overrides`` such as ``num_classes``)
    holding the weights file ``path``, in eval mode on the CPU, as ``routevit eval`` and
    ``visualize`` read a weights file: ``create_model(name, pretrained=path, **overrides)``, so
    loaded strictly by the model's own loader (routevit's layout by name; a vanilla timm / SAM
    checkpoint into the P path, the parts it cannot have left fresh and logged)."""
    from ..models import create_model, list_models, model_info
    from ..models.registry import load_weights

    if name not in list_models():
        raise ValueError(f"--model expects a routevit model name, one of {list_models()}, got {name!r}")
    model = create_model(name, **dict(overrides or {}))
    report = load_weights(model, model_info(name).task, pretrained=str(path))["pretrained"]
    if report.fresh:
        logger.warning("%s holds no %d of %s's parameters, which keep their init: %s",
                       path, len(report.fresh), name, group_keys(report.fresh))  # fmt: skip
    return model.eval()
