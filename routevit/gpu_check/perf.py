"""GPU check sections that measure speed: env, bench, attention."""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .common import (
    TINY_BLVIT,
    TINY_VIT,
    Context,
    Skip,
    _autocast,
    _first_line,
    _seconds_per_call,
    _table,
    _xformers_status,
)

# --------------------------------------------------------------------------------------------
# env


def section_env(ctx: Context) -> list[str]:
    rows = [
        ("python", platform.python_version()),
        ("torch", torch.__version__),
        ("CUDA (torch build)", torch.version.cuda or "none"),
        ("device", str(ctx.device)),
    ]
    if ctx.cuda:
        props = torch.cuda.get_device_properties(ctx.device)
        rows += [
            ("GPU", f"{props.name}, sm{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB"),
            ("visible GPUs", str(torch.cuda.device_count())),
        ]
    rows.append(("xformers", _xformers_status()))
    for name in ("timm", "torchvision"):
        try:
            module = __import__(name)
            rows.append((name, getattr(module, "__version__", "?")))
        except Exception as error:  # noqa: BLE001
            rows.append((name, f"missing ({_first_line(error)})"))
    from ..layers.attention import XFORMERS_DEVICES, _xformers_ops

    picks = "xformers" if ctx.device.type in XFORMERS_DEVICES and _xformers_ops() is not None else "sdpa"
    rows.append(('attention backend "auto" on this device', picks))
    rows.append(("sizes", "tiny (dry run / no CUDA)" if ctx.tiny else "full"))
    return _table(("what", "value"), rows)


# --------------------------------------------------------------------------------------------
# bench


def _timm_vit(name: str, tiny: bool, device: torch.device | str) -> nn.Module:
    import timm

    kwargs = TINY_VIT if tiny else {}
    with torch.device(device):
        return timm.create_model(name if not tiny else "vit_tiny_patch16_224", pretrained=False, **kwargs)


def _matched_peers(target: float, tiny: bool, input_size: tuple[int, int, int]) -> dict[str, dict[str, Any]]:
    """EViT's keep rate and ToMe's r whose MACs are closest to ``target`` GMACs
    ([`routevit.bench_peers`][]' matching, on meta-device models)."""
    from ..bench_peers import EVIT_LAYERS, match_evit, match_tome

    prune = (2, 4) if tiny else EVIT_LAYERS

    def build() -> nn.Module:
        return _timm_vit("deit_base_patch16_224", tiny, "meta")

    rate, evit_gmacs = match_evit(build, target, input_size, prune)
    r, tome_gmacs = match_tome(build, target, input_size)
    return {
        "EViT": {"keep_rate": rate, "prune_layers": prune, "gmacs": evit_gmacs},
        "ToMe": {"r": r, "gmacs": tome_gmacs},
    }


def section_bench(ctx: Context) -> list[str]:
    from .. import baselines
    from ..flops import count
    from ..models import create_model

    try:
        import timm  # noqa: F401
    except ImportError as error:
        raise Skip(f"the baselines need timm ({_first_line(error)})") from error
    input_size = (3, 32, 32) if ctx.tiny else (3, 224, 224)
    torch.manual_seed(0)
    if ctx.tiny:
        blvit = create_model("blvit_deit_s_t", **TINY_BLVIT)
    else:
        blvit = create_model("blvit_deit_b_t")
    target = count(blvit, input_size)
    peers = _matched_peers(target, ctx.tiny, input_size)
    name = "deit_base_patch16_224"
    models: dict[str, nn.Module] = {
        "bLViT B+T" if not ctx.tiny else "bLViT (tiny)": blvit,
        "DeiT-B" if not ctx.tiny else "DeiT (tiny)": _timm_vit(name, ctx.tiny, "cpu"),
        "EViT": baselines.patch_evit(_timm_vit(name, ctx.tiny, "cpu"), peers["EViT"]["keep_rate"],
                                     peers["EViT"]["prune_layers"]),  # fmt: skip
        "ToMe": baselines.patch_tome(_timm_vit(name, ctx.tiny, "cpu"), peers["ToMe"]["r"]),
    }
    macs = {label: count(m, input_size) for label, m in models.items()}
    lines = [
        f"Random weights, bf16 autocast, inference mode, input {input_size}; MACs matched to the "
        f"bLViT's {target:.2f} GMACs: EViT keep rate {peers['EViT']['keep_rate']} at layers "
        f"{peers['EViT']['prune_layers']}, ToMe r = {peers['ToMe']['r']}. Median of the timed calls; "
        "speed-up against the DeiT row of the same mode and batch.",
        "",
    ]
    modes = [("eager", None), ("torch.compile", {})]
    modes.append(("CUDA graphs (reduce-overhead)", {"mode": "reduce-overhead"}))
    if not ctx.cuda:
        # inductor on the CPU needs a C++ toolchain and minutes; dynamo alone checks the capture
        modes[1] = ("torch.compile (backend='eager': dynamo capture only, CPU)", {"backend": "eager"})
    labels = list(models)
    # The headline pair first in every mode, so a short budget still compares bLViT and DeiT-B.
    units = [(modes[0], label) for label in labels]
    units += [(m, label) for m in modes[1:] for label in labels[:2]]
    units += [(m, label) for m in modes[1:] for label in labels[2:]]
    compile_cost = 60.0 if ctx.cuda else 5.0  # first guess at a compiled unit's cost, then measured
    results: dict[tuple[str, str, int], float | str] = {}
    import torch._dynamo as dynamo

    # the timm models share VisionTransformer.forward: their graphs count against one cache
    dynamo.config.cache_size_limit = max(dynamo.config.cache_size_limit, 64)
    models = {label: model.to(ctx.device).eval() for label, model in models.items()}
    for (mode, options), label in units:
        model = models[label]
        # tiny: one batch size compiled (each size is another capture, ~1 s a model on the CPU)
        batches = ctx.batch_sizes[-1:] if options is not None and ctx.tiny else ctx.batch_sizes
        key_rows = [(label, mode, b) for b in batches]
        if "CUDA graphs" in mode and not ctx.cuda:
            results.update(dict.fromkeys(key_rows, "skipped: CUDA graphs need CUDA"))
            continue
        if options is not None and ctx.left() - ctx.reserve_s < compile_cost:
            left = f"{ctx.left():.0f} s left, {ctx.reserve_s:.0f} s kept for the later sections"
            results.update(dict.fromkeys(key_rows, f"skipped: time budget ({left})"))
            continue
        start = time.monotonic()
        dynamo.reset()
        fn = model if options is None else torch.compile(model, **options)
        for b in batches:
            x = torch.randn(b, *input_size, device=ctx.device)
            try:
                with torch.inference_mode(), _autocast(ctx.device):
                    warmup, iters = (3, 10) if ctx.cuda else (1, 2)
                    seconds = _seconds_per_call(lambda fn=fn, x=x: fn(x), ctx.device, warmup, iters)
                results[(label, mode, b)] = b / seconds
            except Exception as error:  # noqa: BLE001 - reported in the table
                results[(label, mode, b)] = f"failed: {_first_line(error)}"
        if options is not None:
            compile_cost = max(compile_cost, time.monotonic() - start)
    dynamo.reset()
    reference = next(label for label in models if label.startswith("DeiT"))
    rows = []
    for mode, _ in modes:
        for label in models:
            for b in ctx.batch_sizes:
                value = results.get((label, mode, b), "not run (dry run: one batch size compiled)")
                base = results.get((reference, mode, b))
                if isinstance(value, float):
                    speed = f"{value / base:.2f}x" if isinstance(base, float) else "-"
                    rows.append((label, f"{macs[label]:.2f}", mode, b, f"{value:.1f}", speed))
                else:
                    rows.append((label, f"{macs[label]:.2f}", mode, b, value, "-"))
    return lines + _table(("model", "GMACs", "mode", "batch", "images/s", "vs DeiT"), rows)


# --------------------------------------------------------------------------------------------
# attention


@dataclass(frozen=True)
class AttentionCase:
    name: str
    batch: int  # B (times windows)
    heads: int
    lq: int
    lk: int
    head_dim: int = 64


FULL_CASES = (
    AttentionCase("DeiT-B self (B 64)", 64, 12, 197, 197),
    AttentionCase("DeiT-B semi-cross (K 50)", 64, 12, 50, 197),
    AttentionCase("SAM-B window self (8 images x 25 windows of 14x14)", 200, 12, 196, 196),
    AttentionCase("SAM-B window semi-cross (49 per window)", 200, 12, 49, 196),
    AttentionCase("SAM-B global semi-cross (8 images, K 1024 of 4096)", 8, 12, 1024, 4096),
)
TINY_CASES = (
    AttentionCase("self", 2, 2, 17, 17, 16),
    AttentionCase("semi-cross", 2, 2, 5, 17, 16),
    AttentionCase("window self (7x7)", 4, 2, 49, 49, 16),
    AttentionCase("window semi-cross (13 of 49)", 4, 2, 13, 49, 16),
)


def section_attention(ctx: Context) -> list[str]:
    from ..layers.attention import XFORMERS_DEVICES, _xformers_ops, attention, math_attention
    from ..layers.attention import set_attention_backend as backend_set

    has_xformers = _xformers_ops() is not None
    rows = []
    gen = torch.Generator(device=ctx.device).manual_seed(0)
    for case in TINY_CASES if ctx.tiny else FULL_CASES:
        with_bias = (False, True) if case.name.startswith(("SAM", "window")) else (False,)
        for dtype in (torch.float16, torch.bfloat16):
            def rand(*shape: int, dtype: torch.dtype = dtype) -> torch.Tensor:
                return torch.randn(*shape, device=ctx.device, generator=gen).to(dtype)

            q = rand(case.batch, case.heads, case.lq, case.head_dim)
            k = rand(case.batch, case.heads, case.lk, case.head_dim)
            v = rand(case.batch, case.heads, case.lk, case.head_dim)
            for biased in with_bias:
                # a fresh contiguous (B, H, Lq, Lk) bias, as SAM's relative positions are
                bias = rand(case.batch, case.heads, case.lq, case.lk) if biased else None
                fp32_bias = None if bias is None else bias.float()
                reference = math_attention(q.float(), k.float(), v.float(), fp32_bias)
                for backend in ("xformers", "sdpa", "math"):
                    label = (case.name, str(dtype).replace("torch.", ""), "yes" if biased else "no", backend)
                    if backend == "xformers" and not has_xformers:
                        rows.append((*label, "n/a: xformers does not import", "", ""))
                        continue
                    if backend == "xformers" and ctx.device.type not in XFORMERS_DEVICES:
                        rows.append((*label, f"n/a: no {ctx.device.type} kernels", "", ""))
                        continue
                    if ctx.left() < 10:
                        rows.append((*label, "skipped: time budget", "", ""))
                        continue
                    try:
                        rows.append((*label, *_time_attention(ctx, backend, q, k, v, bias, reference,
                                                              attention, backend_set)))  # fmt: skip
                    except Exception as error:  # noqa: BLE001
                        rows.append((*label, f"failed: {_first_line(error)}", "", ""))
    head = ["Random q, k, v (std 1) and bias (std 1) in the stated dtype; error: max |out - fp32 math on "
            "the same 16-bit inputs|. Times: median of the timed calls, milliseconds.", ""]  # fmt: skip
    return head + _table(("case", "dtype", "bias", "backend", "forward ms", "fwd+bwd ms", "max error"), rows)


def _time_attention(ctx, backend, q, k, v, bias, reference, attention, backend_set) -> tuple[str, str, str]:  # noqa: ANN001
    warmup, iters = (3, 10) if ctx.cuda else (1, 2)
    with backend_set(backend):
        with torch.no_grad():
            out = attention(q, k, v, bias)
            forward = _seconds_per_call(lambda: attention(q, k, v, bias), ctx.device, warmup, iters)
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        bias_leaf = None if bias is None else bias.detach().requires_grad_()

        def step() -> None:
            attention(*leaves, bias_leaf).float().sum().backward()

        backward = _seconds_per_call(step, ctx.device, warmup, iters)
    error = (out.float() - reference).abs().max().item()
    return f"{forward * 1e3:.3f}", f"{backward * 1e3:.3f}", f"{error:.2e}"

