"""``routevit bench --peers``: one same-run table of a bLViT classifier against the model a user
could pick instead: its vanilla DeiT, the token-reduction peers EViT and ToMe at the bLViT
model's MACs (their keep rate / r chosen here and printed), and DeiT-S for scale.

Every model of the table is timed in every round (``bench.time_round_robin``: the order reverses
from one round to the next), and each figure is the median over rounds of the vanilla model's
time / the model's time in the same round, so all cells of a column share the machine's state; in
one precision per run: fp32, bf16 weights (``--dtype bf16``, the model and its input cast),
bf16 autocast on fp32 weights (``--bf16``), or int8 (``--dtype int8``: torchao's dynamic-activation
int8 weights on every Linear; bLViT in its inference form first); eager or ``torch.compile``.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .bench import speedups, time_round_robin
from .bench_pairs import machine_summary
from .flops import count
from .models import create_model, model_info

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.float32}
EVIT_LAYERS = (4, 7, 10)  # EViT's DeiT setting: prune after blocks 4, 7 and 10 (1-based)
SCALE_MODEL = {"deit_base_patch16_224": "deit_small_patch16_224"}


@dataclass(frozen=True)
class Contender:
    """A model in the table, how it was set up, and its GMACs per image."""

    label: str
    model: nn.Module
    setting: str
    gmacs: float


def _timm(name: str, meta: bool = False) -> nn.Module:
    """A timm model; on the meta device (no weights allocated) for MAC counting."""
    import timm

    with torch.device("meta" if meta else "cpu"):
        return timm.create_model(name, pretrained=False).eval()


def match_evit(
    build: Callable[[], nn.Module], target_gmacs: float, input_size: tuple[int, int, int],
    prune_layers: Sequence[int] = EVIT_LAYERS,
) -> tuple[float, float]:
    """EViT's keep rate (pruning at ``prune_layers``) on ``build()`` (a fresh vanilla timm ViT,
    best on the meta device) whose GMACs are closest to ``target``: bisection, MACs grow with
    the keep rate. Returns ``(keep_rate, gmacs)``."""
    from .baselines import patch_evit

    def gmacs(rate: float) -> float:
        return count(patch_evit(build(), rate, prune_layers), input_size)

    lo, hi = 0.05, 1.0
    for _ in range(12):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if gmacs(mid) < target_gmacs else (lo, mid)
    rate = round(min((lo, hi), key=lambda r: abs(gmacs(r) - target_gmacs)), 3)
    return rate, gmacs(rate)


def match_tome(
    build: Callable[[], nn.Module], target_gmacs: float, input_size: tuple[int, int, int]
) -> tuple[int, float]:
    """ToMe's r (tokens merged per block) on ``build()`` whose GMACs are closest to ``target``;
    MACs fall as r grows (bisection up to half the tokens). Returns ``(r, gmacs)``."""
    from .baselines import patch_tome

    def gmacs(r: int) -> float:
        return count(patch_tome(build(), r), input_size)

    model = build()
    lo, hi = 0, model.patch_embed.num_patches // 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if gmacs(mid) > target_gmacs else (lo, mid)
    r = min((lo, hi), key=lambda v: abs(gmacs(v) - target_gmacs))
    return r, gmacs(r)


def contenders(name: str, keep_ratio: float | None = None) -> tuple[Contender, list[Contender]]:
    """The vanilla baseline and the rest of the table (bLViT, EViT, ToMe, the smaller DeiT)."""
    from .baselines import patch_evit, patch_tome

    info = model_info(name)
    if info.task != "classification" or info.bench_baseline is None:
        raise ValueError(
            f"--peers compares classifiers with a timm baseline; {name!r} is a {info.task} model"
        )
    size, base_name = info.input_size, info.bench_baseline
    torch.manual_seed(0)
    blvit = create_model(name).eval()
    if keep_ratio is not None:
        blvit.set_keep_ratio(keep_ratio)
    target = count(blvit, size)
    baseline = _timm(base_name)
    rate, evit_macs = match_evit(lambda: _timm(base_name, meta=True), target, size)
    r, tome_macs = match_tome(lambda: _timm(base_name, meta=True), target, size)
    rest = [
        Contender(name, blvit, f"keep_ratio {blvit.keep_ratio}", target),
        Contender("EViT", patch_evit(_timm(base_name), rate, EVIT_LAYERS), f"keep {rate} at {EVIT_LAYERS}",
                  evit_macs),  # fmt: skip
        Contender("ToMe", patch_tome(_timm(base_name), r), f"r={r}", tome_macs),
    ]
    if base_name in SCALE_MODEL:
        small = _timm(SCALE_MODEL[base_name])
        rest.append(Contender(SCALE_MODEL[base_name], small, "vanilla", count(small, size)))
    return Contender(base_name, baseline, "vanilla", count(baseline, size)), rest


def prepare(model: nn.Module, dtype: str, device: str) -> nn.Module:
    """``model`` on ``device`` in eval mode, its weights cast (``fp32``/``bf16``) or quantized
    (``int8``, torchao's ``Int8DynamicActivationInt8WeightConfig``; needs the ``int8`` extra)."""
    model = model.to(device=device, dtype=DTYPES[dtype]).eval()
    if dtype != "int8":
        return model
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError as err:
        raise ImportError("--dtype int8 needs torchao: pip install 'routevit[int8]'") from err
    from .layers import SemiCrossAttention, for_inference

    if any(type(m) is SemiCrossAttention for m in model.modules()):
        model = for_inference(model)
    quantize_(model, Int8DynamicActivationInt8WeightConfig())
    return model


def run_peers(
    name: str = "blvit_deit_b_t",
    *,
    dtype: str = "fp32",
    autocast: bool = False,
    compile_models: bool = False,
    batch_sizes: Sequence[int] = (1, 32),
    keep_ratio: float | None = None,
    warmup: int = 2,
    repeats: int = 7,
    min_seconds: float = 1.0,
    device: str = "cpu",
) -> str:
    """The Markdown table of [`routevit.bench_peers`][] (see the module docstring)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if autocast and dtype != "fp32":
        raise ValueError("--bf16 (autocast) runs on fp32 weights; pass --dtype fp32 with it")
    baseline, rest = contenders(name, keep_ratio)
    size = model_info(name).input_size
    cast: Callable[[nn.Module], nn.Module] = lambda m: prepare(m, dtype, device)  # noqa: E731
    run = (lambda m: torch.compile(m)) if compile_models else (lambda m: m)  # noqa: E731
    models = [run(cast(c.model)) for c in (baseline, *rest)]
    names = {"int8": "torchao dynamic int8"}
    precision = "bf16 autocast" if autocast else names.get(dtype, f"{dtype} weights")
    cells: list[list[str]] = [[] for _ in rest]
    for b in batch_sizes:
        x = torch.randn(b, *size, device=device, dtype=DTYPES[dtype])
        times, _ = time_round_robin(models, x, warmup=warmup, repeats=repeats, bf16=autocast,
                                    min_seconds=min_seconds)  # fmt: skip
        for i, speedup in enumerate(speedups(times)[1:]):
            per_s = b / statistics.median(times[i + 1])
            cells[i].append(f"{speedup:.2f}x ({per_s:.1f} img/s)")
    lines = [
        f"# routevit bench --peers {name}",
        "",
        f"{machine_summary()}; {precision}; {'torch.compile' if compile_models else 'eager'}; "
        f"speed-up = median over {repeats} rounds (every model once per round, the order reversed "
        f"each round, after {warmup} warm-up rounds) of (time of {baseline.label} / time of the model); "
        f"each run about {min_seconds:g} s of passes.",
        "",
        "| model | setting | GMACs | MAC ratio | " + " | ".join(f"batch {b}" for b in batch_sizes) + " |",
        "|---|---|---:|---:|" + "---:|" * len(batch_sizes),
        f"| {baseline.label} | vanilla | {baseline.gmacs:.2f} | 1.00x | "
        + " | ".join("1.00x" for _ in batch_sizes) + " |",
    ]
    for c, row in zip(rest, cells, strict=True):
        lines.append(f"| {c.label} | {c.setting} | {c.gmacs:.2f} | {baseline.gmacs / c.gmacs:.2f}x | "
                     + " | ".join(row) + " |")  # fmt: skip
    lines += ["", "GMACs in the paper's convention (Linear and Conv layers; see routevit.flops)."]
    return "\n".join(lines)
