"""Recipes: YAML files mapped onto frozen dataclasses, with ``--set key=value`` overrides.

A recipe has one section per dataclass below (``model``, ``distill``, ``data``, ``augment``,
``optim``, ``train``, ``run``, ``sam``) and a top-level ``task`` (``classification``, the default,
or ``sam``). Defaults follow the paper and DeiT; a key the dataclasses do not know, or a value of
the wrong type, is a ``ValueError`` that names the key and what was expected.

``task: sam`` trains a Segment Anything model (``model.name`` a SAM encoder such as
``blvit_sam_b_t``, ``model.pretrained`` an official SAM checkpoint) on SA-1B-style data under
``data.root/data.train_dir``; ``augment``, ``model.num_classes`` and ``distill.feature`` do not
apply, the ``sam`` section does (see :mod:`routevit.train.sam_task`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from ..layers.schedule import Schedule
from ..models.registry import IMAGENET_MEAN, IMAGENET_STD

# model.kwargs keys whose YAML mapping ``{kinds: [...], predict_after: [...]}`` is a Schedule:
# ``layout`` of the classifiers (BigLittleViTConfig), ``schedule`` of the SAM encoders.
SCHEDULE_KEYS = ("layout", "schedule")


def model_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``model.kwargs`` (or ``distill.teacher_kwargs``) for a model factory: a schedule written
    as a mapping becomes a :class:`~routevit.layers.Schedule`, for either task."""
    out = dict(kwargs)
    for key in SCHEDULE_KEYS:
        value = out.get(key)
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - {"kinds", "predict_after"})
            if unknown or "kinds" not in value:
                raise ValueError(
                    f"model.kwargs.{key} as a mapping has the keys kinds and predict_after, got "
                    f"{sorted(value)}"
                )
            out[key] = Schedule(tuple(value["kinds"]), tuple(value.get("predict_after", ())))
    return out


@dataclass(frozen=True)
class ModelConfig:
    """The student. ``name`` is looked up in routevit's registry first, then in timm's."""

    name: str = "blvit_deit_b_t"
    pretrained: str | None = None  # checkpoint path; for bLViT it initializes the P path
    # parameters (shell patterns) that ``pretrained`` may leave at their init, e.g. [head.*] to
    # fine-tune on other classes; everything else must load (bLViT's E path, routers, alpha and
    # gamma, which a vanilla checkpoint cannot have, always start fresh)
    allow_missing: tuple[str, ...] = ()
    num_classes: int = 1000
    img_size: int = 224
    drop_path_rate: float = 0.1
    keep_ratio: float | None = None  # routevit models only; None keeps the model's default
    # train one model for a whole range of keep ratios: each step routes a share drawn uniformly
    # from [low, high] (the same on every rank); validation and checkpoints use keep_ratio
    keep_ratio_range: tuple[float, float] | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed on to the model factory
    # a token-reduction peer patched onto a vanilla timm ViT (routevit.baselines), e.g.
    # {method: evit, keep_rate: 0.7, prune_layers: [2, 4]}; empty: none
    token_reduction: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DistillConfig:
    """Feature distillation from a frozen teacher; off when ``teacher`` is None."""

    teacher: str | None = None
    # a timm weights file, a routevit checkpoint directory, or None for timm's pretrained weights
    teacher_checkpoint: str | None = None
    teacher_kwargs: dict[str, Any] = field(default_factory=dict)
    lambda_fd: float = 2.5
    feature: Literal["tokens", "pre_logits"] = "tokens"


@dataclass(frozen=True)
class DataConfig:
    """An ImageFolder tree. With ``holdout_per_class > 0``, validation is the N lexicographically
    last files of each class of ``train_dir`` and ``val_dir`` must be None, which is its default
    then (otherwise ``"val"``); naming both is an error."""

    root: str | None = None
    train_dir: str = "train"
    val_dir: str | None = "val"
    holdout_per_class: int = 0
    max_train_per_class: int | None = None  # first N (sorted) training files per class
    max_val_per_class: int | None = None
    num_workers: int = 8
    on_bad_image: Literal["skip", "error"] = "skip"
    # decode each split once into a uint8 tensor file and augment batches on tensors
    # (routevit.train.image_cache; needs augment.crop: pad); the file lives under cache_dir
    # (None: $ROUTEVIT_CACHE or ~/.cache/routevit) and is rebuilt when the file list changes
    cache: bool = False
    cache_dir: str | None = None


@dataclass(frozen=True)
class AugmentConfig:
    """DeiT's augmentation (timm's create_transform and Mixup).

    ``crop``: ``random_resized`` (DeiT's, with ``scale``) or ``pad`` (a random crop of the image
    padded by ``pad`` pixels, the CIFAR standard; the tensor path of ``data.cache``)."""

    crop: Literal["random_resized", "pad"] = "random_resized"
    pad: int = 4
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    color_jitter: float = 0.3
    interpolation: str = "bicubic"
    scale: tuple[float, float] = (0.08, 1.0)
    hflip: float = 0.5
    re_prob: float = 0.25
    re_mode: str = "pixel"
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    label_smoothing: float = 0.1
    crop_pct: float = 0.875
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with a per-step cosine schedule and linear warm-up; lr scales by batch / lr_base_batch."""

    opt: str = "adamw"
    lr: float = 5e-4
    lr_base_batch: int | None = 512  # None: use lr as given
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    clip_grad_norm: float | None = 1.0  # on by default (token pruning trainings diverge without)
    warmup_epochs: float = 5.0
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    # learning-rate factors by parameter name glob (fnmatch), e.g. {"encoder.blocks.*.efficiency.*": 4}
    # for layers that a fine-tuning starts fresh; a name may match one pattern, each pattern some name
    lr_scales: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainConfig:
    """Loop settings. ``batch_size`` is the global batch, split evenly over the processes."""

    epochs: int = 300
    batch_size: int = 1024
    amp: Literal["none", "bf16", "fp16"] = "bf16"
    ema: bool = False
    ema_decay: float = 0.99996
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    deterministic: bool = False  # deterministic CUDA kernels (slower)


@dataclass(frozen=True)
class RunConfig:
    """Outputs: checkpoints, logs, metrics."""

    output: str = "runs/default"
    checkpoint_every_steps: int = 0  # 0: only at the end of each epoch
    keep_last: int = 3
    val_every_epochs: int = 1
    log_every_steps: int = 50
    progress: Literal["auto", "bar", "lines"] = "auto"  # auto: tqdm on a terminal


@dataclass(frozen=True)
class SamConfig:
    """The ``sam`` task: prompts, loss weights and evaluation data (ignored for classification).

    Training prompts: each sampled mask is prompted by its ground-truth box (jittered) with
    probability ``box_prob``, else by ``n`` positive points drawn uniformly inside the mask, ``n``
    drawn uniformly from ``num_points``. Single-point prompts use SAM's three outputs (the
    lowest mask loss is trained); the others one output.
    """

    masks_per_image: int = 16  # sampled without replacement (all if an image has fewer)
    box_prob: float = 0.5
    num_points: tuple[int, ...] = (1, 3)
    box_noise: float = 0.1  # std of each box coordinate's noise, as a share of the box side (SAM)
    box_noise_max: float = 20.0  # noise clipped to this many pixels of the model input
    train_decoder: bool = False  # train SAM's prompt encoder and mask decoder too (else frozen)
    loss_resolution: Literal["low", "input"] = "low"  # low: GT downsampled to the logits' 4x grid
    focal_weight: float = 20.0
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    max_train_images: int | None = None  # first N (sorted) training images; None: all
    val_annotations: str | None = None  # COCO/LVIS instances JSON for mIoU validation / eval
    val_images: str | None = None  # folder of the images that JSON names
    val_max_images: int | None = None  # first N images (by id) of the annotations; None: all
    eval_seed: int = 0  # seeds the evaluation's point prompts


TASKS = ("classification", "sam")


@dataclass(frozen=True)
class Recipe:
    task: Literal["classification", "sam"] = "classification"
    model: ModelConfig = field(default_factory=ModelConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    sam: SamConfig = field(default_factory=SamConfig)

    def __post_init__(self) -> None:
        from .recipe_checks import validate

        validate(self)


# ---------------------------------------------------------------------------------------------
# YAML <-> dataclasses


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert YAML forms (lists -> tuples,
    '5e-4' -> float, since YAML 1.1 reads exponents without a dot as strings)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ValueError as e:
                errors.append(e)
        raise ValueError(f"recipe key {key} expects {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ValueError(f"recipe key {key} must be one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"recipe key {key} expects a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise ValueError(f"recipe key {key} expects a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args, strict=True))
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"recipe key {key} expects a mapping, got {value!r}")
        kt, vt = typing.get_args(tp) or (Any, Any)
        return {_coerce(k, kt, key): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"recipe key {key} expects true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"recipe key {key} expects an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"recipe key {key} expects a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"recipe key {key} expects a number, got {value!r}")
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"recipe key {key} expects a string, got {value!r}")
        return value
    raise TypeError(f"recipe key {key}: unsupported annotation {tp!r}")  # a bug in this module


def _build(cls: type, values: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(values, Mapping):
        raise ValueError(f"recipe section {prefix or '<top level>'} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        where = f"in section {prefix!r}" if prefix else "at the top level"
        raise ValueError(f"unknown recipe key(s) {unknown} {where}; valid keys: {names}")
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value or {}, key)
        else:
            kwargs[name] = _coerce(value, tp, key)
    return cls(**kwargs)


def _default_val_dir(values: Mapping[str, Any]) -> Mapping[str, Any]:
    """``data.val_dir`` defaults to ``"val"``, except beside a ``holdout_per_class``, where the
    validation images are held out of ``train_dir`` and the default is None."""
    data = values.get("data") if isinstance(values, Mapping) else None
    if isinstance(data, Mapping) and "val_dir" not in data and data.get("holdout_per_class") not in (None, 0):
        return {**values, "data": {**data, "val_dir": None}}
    return values


def recipe_from_dict(values: Mapping[str, Any]) -> Recipe:
    """Build a Recipe from nested mappings (missing keys take the defaults)."""
    return _build(Recipe, _default_val_dir(values), "")


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """Nested plain dict (tuples as lists), ready for YAML."""

    def plain(v: Any) -> Any:
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(recipe))


def parse_override(text: str) -> tuple[str, Any]:
    """``'optim.lr=1e-3'`` -> ``('optim.lr', 0.001)``; the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"an override must look like section.key=value, got {text!r}")
    try:
        return key.strip(), yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise ValueError(f"override {key.strip()}: expected a YAML value, got {raw!r}") from None


def factory_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` items of ``routevit eval`` / ``visualize`` for a weights file (values
    read as YAML) as model factory keyword arguments: ``["num_classes=10"] -> {"num_classes": 10}``."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ValueError(f"--set {key.strip()}: expected a YAML value, got {raw!r}") from None
    return out


def with_overrides(values: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides to nested recipe mappings (checked when built)."""
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in values.items()}
    hints = typing.get_type_hints(Recipe)
    sections = {f.name for f in dataclasses.fields(Recipe) if dataclasses.is_dataclass(hints[f.name])}
    scalars = {f.name for f in dataclasses.fields(Recipe)} - sections
    for text in overrides:
        key, value = parse_override(text)
        if key in scalars:  # top-level keys such as ``task=sam``
            out[key] = value
            continue
        section, dot, name = key.partition(".")
        if section not in sections or not dot or "." in name:
            raise ValueError(
                f"override key {key!r} must be section.key with section one of {sorted(sections)} "
                f"(or a top-level key: {sorted(scalars)})"
            )
        if section not in out or out[section] is None:
            out[section] = {}
        out[section][name] = value
    return out


def load_recipe(path: str | Path | None, overrides: Sequence[str] = ()) -> Recipe:
    """Read a YAML recipe (or the defaults when ``path`` is None) and apply overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"recipe file {str(path)!r} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            where = getattr(err, "problem_mark", None)
            line = f" at line {where.line + 1}" if where is not None else ""
            problem = getattr(err, "problem", None) or type(err).__name__
            message = f"recipe {str(path)!r} must be valid YAML, got an error{line}: {problem}"
            raise ValueError(message) from None
        except UnicodeDecodeError:
            raise ValueError(f"recipe {str(path)!r} must be a YAML text file, got binary data") from None
        if loaded is not None and not isinstance(loaded, Mapping):
            raise ValueError(
                f"recipe {str(path)!r} must be a mapping of sections, got {type(loaded).__name__}"
            )
        values = dict(loaded or {})
    return recipe_from_dict(with_overrides(values, overrides))


def recipe_yaml(recipe: Recipe) -> str:
    """The recipe as the YAML text that :func:`load_recipe` reads back."""
    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False)


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    Path(path).write_text(recipe_yaml(recipe))


def recipe_diff(a: Recipe, b: Recipe) -> list[str]:
    """Dotted keys whose values differ between two recipes."""
    da, db = recipe_to_dict(a), recipe_to_dict(b)
    out = []
    for s in da:
        if isinstance(da[s], dict):
            out += [f"{s}.{k}" for k in da[s] if da[s][k] != db[s][k]]
        elif da[s] != db[s]:
            out.append(s)
    return out


def replace_fields(recipe: Recipe, **sections: Mapping[str, Any]) -> Recipe:
    """A validated copy with some fields replaced: ``replace_fields(r, train={"epochs": 1})``."""
    for name in sections:
        if name not in {f.name for f in dataclasses.fields(Recipe)}:
            raise ValueError(f"unknown recipe section {name!r}")
    return dataclasses.replace(
        recipe,
        **{name: dataclasses.replace(getattr(recipe, name), **dict(f)) for name, f in sections.items()},
    )
