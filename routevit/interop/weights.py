"""The one reader of weights files: every path that loads a checkpoint (``create_model(pretrained=)``,
``build_sam``, recipes, ``routevit visualize``) reads it here.

Only tensors are read: ``.safetensors`` files, or ``torch.load(..., weights_only=True)`` for
``.pth``/``.pt``/``.bin``. A file holding other Python objects is refused with
:class:`UnsafeCheckpointError`, which says why and never suggests turning the safety off.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import torch

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
        parts = [f"loaded {len(self.loaded)}", f"fresh {len(self.fresh)}"]
        if self.missing:
            parts.append(f"missing {self.missing}")
        if self.unexpected:
            parts.append(f"unexpected {self.unexpected}")
        parts.extend(self.notes)
        return "; ".join(parts)


class UnsafeCheckpointError(pickle.UnpicklingError, ValueError):
    """A ``torch.save`` file holding Python objects other than tensors (not unpickled)."""


class NotAStateDictError(TypeError, ValueError):
    """A readable file whose content is not a ``{name: tensor}`` mapping."""


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
        raise ValueError(f"could not read checkpoint {str(path)!r} ({suffix}): {_first_line(err)}") from err


def _refused_global(err: BaseException) -> str:
    """``: <the global torch refused>`` from torch's message, without its advice to retry with
    weights_only=False (the unsafe path)."""
    for line in str(err).splitlines():
        if "Unsupported global" in line or "Unsupported operand" in line:
            return ": " + line.split(":", 1)[-1].strip().split(". ")[0]
    return ""


def _first_line(err: BaseException) -> str:
    """The error's first line, without torch's advice to retry with weights_only=False."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
