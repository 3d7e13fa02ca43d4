"""One GPU check: what a first run on a GPU must show, written to one Markdown file.

``python -m routevit.gpu_check --out gpu_check.md`` (or ``tools/gpu_check.sh``, which also
installs what it can) runs these sections, each timed, each isolated (a failure is reported and
the next section runs), the report rewritten after every section so a killed run leaves what
it measured:

``env``        torch / CUDA / device / xformers / timm versions and what "auto" attention picks.
``bench``      blvit_deit_b_t against DeiT-B, EViT and ToMe (MACs matched to the bLViT's by
               choosing EViT's keep rate and ToMe's r), bf16 autocast, batch 1, 64 and 256,
               eager, ``torch.compile`` and CUDA graphs (``mode="reduce-overhead"``).
``attention``  xformers vs SDPA vs math for self and semi-cross attention, fp16 and bf16, with and
               without a SAM-shaped (unaligned) bias: forward and forward+backward times, error
               against fp32 math on the same inputs.
``sync``       forwards (and a backward) of the DeiT and SAM models under
               ``torch.cuda.set_sync_debug_mode("error")``.
``train``      20 training steps of a small recipe in bf16 (DDP over 2 GPUs when there are 2),
               losses finite, then two resumes from the step-18 checkpoint: identical weights?
``sam``        blvit_sam_b_t and its unrouted twin at 1024 px, batch 1 and 8, bf16: time and
               peak memory, inference and training (forward + backward).

Without CUDA (``--device cpu``, or ``--dry-run``) every section runs on tiny models and inputs,
and the CUDA-only parts are skipped with the reason in the report: that is what CI runs. A
``--budget-s`` (default 450 s) bounds the whole run; parts that would not fit are skipped and
say so.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

SECTIONS: tuple[str, ...] = ("env", "bench", "attention", "sync", "train", "sam")
# Expected seconds of each section on one H200 (full sizes), kept free while the bench compiles.
ESTIMATE_S: dict[str, float] = {"env": 5, "bench": 240, "attention": 40, "sync": 30, "train": 80, "sam": 45}


class Skip(Exception):
    """A section or part that cannot run here; the message is the reason."""


@dataclass
class Context:
    device: torch.device
    tiny: bool  # tiny models and inputs (dry run, or no CUDA)
    deadline: float  # time.monotonic() at which the budget ends
    batch_sizes: tuple[int, ...]
    workdir: Path
    reserve_s: float = 0.0  # seconds the sections after the current one are expected to need

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def left(self) -> float:
        return self.deadline - time.monotonic()


@dataclass
class Section:
    name: str
    status: str = "not run"
    seconds: float = 0.0
    lines: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# helpers


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out + [""]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds_per_call(fn: Callable[[], Any], device: torch.device, warmup: int, iters: int) -> float:
    """Median seconds of one ``fn()`` over ``iters`` timed calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _autocast(device: torch.device, dtype: torch.dtype | None = torch.bfloat16):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _first_line(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300].replace("|", "/")


@contextlib.contextmanager
def _restored_torch_settings() -> Iterator[None]:
    """Sections that train change process-wide settings (deterministic algorithms, TF32)."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    precision = torch.get_float32_matmul_precision()
    benchmark = torch.backends.cudnn.benchmark
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.set_float32_matmul_precision(precision)
        torch.backends.cudnn.benchmark = benchmark


def _xformers_status() -> str:
    from .layers.attention import _xformers_ops

    ops = _xformers_ops()
    if ops is not None:
        import xformers

        return f"imports (xformers {getattr(xformers, '__version__', '?')})"
    try:
        import xformers.ops  # noqa: F401 - to show why it does not
    except Exception as error:  # noqa: BLE001 - any failure is the answer
        return f"does not import ({_first_line(error)})"
    return "does not import"


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
    from .layers.attention import XFORMERS_DEVICES, _xformers_ops

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


# The miniature of docs/tutorials/peers.md: CIFAR-size DeiT and its B+T-style bLViT.
TINY_VIT = {"img_size": 32, "patch_size": 4, "embed_dim": 96, "depth": 6, "num_heads": 3, "num_classes": 10}
TINY_BLVIT = {"img_size": 32, "patch_size": 4, "embed_dim": 96, "num_heads": 3, "little_dim": 24,
              "little_heads": 1, "depth": 6, "num_classes": 10, "keep_ratio": 0.25}  # fmt: skip


def _matched_peers(target: float, tiny: bool, input_size: tuple[int, int, int]) -> dict[str, dict[str, Any]]:
    """EViT's keep rate (bisection, prune layers as EViT's DeiT setting) and ToMe's r whose MACs
    are closest to ``target`` GMACs, counted on meta-device models."""
    from . import baselines
    from .flops import count

    name = "deit_base_patch16_224"
    prune = (2, 4) if tiny else (4, 7, 10)

    def evit_macs(rate: float) -> float:
        return count(baselines.patch_evit(_timm_vit(name, tiny, "meta"), rate, prune), input_size)

    lo, hi = 0.05, 1.0
    for _ in range(6 if tiny else 12):  # MACs grow with the keep rate
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if evit_macs(mid) < target else (lo, mid)
    rate = min((lo, hi), key=lambda r: abs(evit_macs(r) - target))
    depth = TINY_VIT["depth"] if tiny else 12
    tokens = (input_size[1] // (TINY_VIT["patch_size"] if tiny else 16)) ** 2 + 1
    best_r, best = 0, math.inf
    for r in range(0, tokens // depth + 2):  # MACs fall with r
        macs = count(baselines.patch_tome(_timm_vit(name, tiny, "meta"), r), input_size)
        if abs(macs - target) < abs(best - target):
            best_r, best = r, macs
        if macs < target:
            break
    return {
        "EViT": {"keep_rate": round(rate, 3), "prune_layers": prune, "gmacs": evit_macs(rate)},
        "ToMe": {"r": best_r, "gmacs": best},
    }


def section_bench(ctx: Context) -> list[str]:
    from . import baselines
    from .flops import count
    from .models import create_model

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
    from .layers.attention import XFORMERS_DEVICES, _xformers_ops, attention, math_attention
    from .layers.attention import set_attention_backend as backend_set

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


# --------------------------------------------------------------------------------------------
# sync


def _sync_models(ctx: Context) -> list[tuple[str, nn.Module, torch.Tensor]]:
    from .layers.encoder import Schedule
    from .models import create_model

    torch.manual_seed(0)
    if ctx.tiny:
        deit = create_model("blvit_deit_s_t", **TINY_BLVIT)
        sam = create_model("blvit_sam_b_t", img_size=160, window_size=7, depth=3, embed_dim=64, num_heads=4,
                           global_attn_indexes=(2,), out_chans=32, little_dim=32, little_heads=2,
                           schedule=Schedule.big_little_from(3, 2, (1, 2)))  # fmt: skip
        return [("bLViT DeiT (tiny), batch 2", deit, torch.randn(2, 3, 32, 32)),
                ("bLViT SAM (tiny, padded windows), batch 1", sam, torch.randn(1, 3, 160, 160))]  # fmt: skip
    return [
        ("blvit_deit_b_t, batch 8", create_model("blvit_deit_b_t"), torch.randn(8, 3, 224, 224)),
        ("blvit_sam_b_t, batch 1", create_model("blvit_sam_b_t"), torch.randn(1, 3, 1024, 1024)),
    ]


class _HostReads(TorchDispatchMode):
    """The CPU stand-in for the sync debug mode: ops that read back or copy from host data."""

    NAMES = frozenset({"_local_scalar_dense", "item", "nonzero", "is_nonzero", "equal", "lift_fresh"})

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in self.NAMES:
            self.found.append(str(func))
        return func(*args, **(kwargs or {}))


def section_sync(ctx: Context) -> list[str]:
    rows = []
    for label, model, x in _sync_models(ctx):
        model, x = model.to(ctx.device), x.to(ctx.device)
        for phase in ("forward (inference)", "forward + backward (training)"):
            training = phase.startswith("forward +")
            model.train(training)

            def run(model=model, x=x, training=training) -> None:
                with _autocast(ctx.device), torch.set_grad_enabled(training):
                    out = model(x)
                if training:
                    out.float().square().mean().backward()

            run()  # warm-up: lazy initialisation (cuBLAS handles, ...) may sync once
            _sync(ctx.device)
            try:
                if ctx.cuda:
                    torch.cuda.set_sync_debug_mode("error")
                    try:
                        run()
                    finally:
                        torch.cuda.set_sync_debug_mode(0)
                    _sync(ctx.device)
                    rows.append((label, phase, "no host sync"))
                else:
                    with _HostReads() as mode:
                        run()
                    found = sorted(set(mode.found))
                    verdict = f"host reads: {found}" if found else "no host read-back"
                    rows.append((label, phase, verdict))
            except Exception as error:  # noqa: BLE001
                rows.append((label, phase, f"SYNC: {_first_line(error)}"))
        model.zero_grad(set_to_none=True)
        model.to("cpu")
    how = ('torch.cuda.set_sync_debug_mode("error") around the second call (the first is a warm-up); '
           'bf16 autocast, attention backend "auto".') if ctx.cuda else (
           "CPU: no sync debug mode; a TorchDispatchMode records ops that read device values back "
           "(_local_scalar_dense, nonzero, ...) or build tensors from host data (lift_fresh).")  # fmt: skip
    return [how, ""] + _table(("model", "pass", "result"), rows)


# --------------------------------------------------------------------------------------------
# train


TRAIN_STEPS = 20
RESUME_FROM = 18


def _image_folder(root: Path, classes: int, per_class: int, size: int) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            pixels[..., c % 3] //= 4  # a weak class signal
            Image.fromarray(pixels).save(folder / f"img_{j:04d}.jpg", quality=90)
    return root


def _train_recipe(ctx: Context, data: Path, output: Path, batch: int) -> dict[str, Any]:
    kwargs = {k: v for k, v in TINY_BLVIT.items() if k not in ("num_classes", "keep_ratio", "img_size")}
    if ctx.tiny:
        kwargs.update(embed_dim=32, num_heads=2, little_dim=16, depth=3, patch_size=8)
    return {
        "model": {"name": "blvit_deit_s_t", "num_classes": 10, "img_size": 32, "drop_path_rate": 0.1,
                  "keep_ratio": 0.25, "kwargs": kwargs},
        "data": {"root": str(data), "train_dir": ".", "val_dir": None, "holdout_per_class": 0,
                 "num_workers": 2 if ctx.cuda else 0},
        "augment": {"crop_pct": 1.0},
        "optim": {"lr": 1e-3, "lr_base_batch": None, "warmup_epochs": 0.2},
        "train": {"epochs": 1, "batch_size": batch, "amp": "bf16", "seed": 0, "device": ctx.device.type,
                  "deterministic": True},
        "run": {"output": str(output), "log_every_steps": 1, "checkpoint_every_steps": RESUME_FROM,
                "progress": "lines", "keep_last": 5},
    }  # fmt: skip


def _run_training(recipe: dict[str, Any], world: int, resume: bool) -> None:
    from .train import recipe_from_dict, train

    if world == 1:
        train(recipe_from_dict(recipe), resume=resume)
        return
    import yaml

    path = Path(recipe["run"]["output"]).with_suffix(".yaml")
    path.write_text(yaml.safe_dump(recipe))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
               "-m", "routevit.cli", "train", str(path)] + (["--resume"] if resume else [])  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"torchrun exited {done.returncode}: {done.stderr[-2000:]}")


def section_train(ctx: Context) -> list[str]:
    from safetensors.torch import load_file

    from .train import checkpoint as ckpt

    try:
        import torchvision  # noqa: F401 - the trainer's transforms
    except ImportError as error:
        raise Skip(f"the trainer needs torchvision ({_first_line(error)})") from error
    world = min(2, torch.cuda.device_count()) if ctx.cuda else 1
    batch = 4 if ctx.tiny else 64
    lines = []
    if world == 1:
        why = "one GPU (NCCL runs one rank per GPU)" if ctx.cuda else "no CUDA"
        lines.append(f"One process ({why}): DDP is not exercised; with 2 GPUs this runs torchrun "
                     "--nproc_per_node 2.")
    else:
        lines.append(f"DDP: torchrun --nproc_per_node {world} (NCCL).")
    root = ctx.workdir / "train"
    data = _image_folder(root / "data", 10, TRAIN_STEPS * batch // 10, 32)
    with _restored_torch_settings():
        start = time.monotonic()
        full = _train_recipe(ctx, data, root / "full", batch)
        _run_training(full, world, resume=False)
        first = time.monotonic() - start
        events = [json.loads(x) for x in (root / "full" / "metrics.jsonl").read_text().splitlines()]
        losses = [e["loss"] for e in events if e["event"] == "train"]
        steps = max((e["step"] for e in events if e["event"] == "train"), default=0)
        finite = all(math.isfinite(v) for v in losses)
        lines.append(f"{steps} steps of {batch} images (bf16 autocast, train.deterministic on) in "
                     f"{first:.1f} s; losses {'all finite' if finite else 'NOT all finite'}: "
                     f"first {losses[0]:.4f}, last {losses[-1]:.4f}.")  # fmt: skip
        final = load_file(str(ckpt.latest_checkpoint(root / "full" / "checkpoints") / "model.safetensors"))
        resumed = []
        for name in ("resume_a", "resume_b"):
            shutil.copytree(root / "full", root / name)
            for p in ckpt.list_checkpoints(root / name / "checkpoints"):
                if p.name != ckpt.checkpoint_name(RESUME_FROM):
                    shutil.rmtree(p)
            recipe = _train_recipe(ctx, data, root / name, batch)
            _run_training(recipe, world, resume=True)
            latest = ckpt.latest_checkpoint(root / name / "checkpoints")
            resumed.append(load_file(str(latest / "model.safetensors")))

    def diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> str:
        worst = max((x.float() - b[k].float()).abs().max().item() for k, x in a.items())
        same = all(torch.equal(x, b[k]) for k, x in a.items())
        return "identical (bit for bit)" if same else f"differ: max |diff| {worst:.3g}"

    rows = [
        (f"two resumes from step {RESUME_FROM} to {TRAIN_STEPS}", diff(resumed[0], resumed[1])),
        ("resume vs the uninterrupted run", diff(resumed[0], final)),
    ]
    return lines + [""] + _table(("check", "result"), rows)


# --------------------------------------------------------------------------------------------
# sam


def section_sam(ctx: Context) -> list[str]:
    from .bench import peak_activation_bytes
    from .layers.encoder import Schedule
    from .models import create_model

    torch.manual_seed(0)
    if ctx.tiny:
        tiny = dict(img_size=160, window_size=7, depth=3, embed_dim=64, num_heads=4, global_attn_indexes=(2,),
                    out_chans=32, little_dim=32, little_heads=2)  # fmt: skip
        models = {"bLViT SAM (tiny)": create_model("blvit_sam_b_t", **tiny,
                                                   schedule=Schedule.big_little_from(3, 2, (1, 2))),
                  "unrouted twin (tiny)": create_model("sam_vit_b", **tiny)}  # fmt: skip
        size, batches = 160, (1, 2)
    else:
        models = {"blvit_sam_b_t": create_model("blvit_sam_b_t"),
                  "sam_vit_b (unrouted twin)": create_model("sam_vit_b")}  # fmt: skip
        size, batches = 1024, (1, 8)
    rows = []
    for label, model in models.items():
        model = model.to(ctx.device)
        for b in batches:
            if ctx.left() < 15:
                rows.append((label, b, "skipped: time budget", "", "", ""))
                continue
            x = torch.randn(b, 3, size, size, device=ctx.device)
            try:
                model.eval()
                with torch.inference_mode(), _autocast(ctx.device):
                    warmup, iters = (2, 5) if ctx.cuda else (1, 1)
                    seconds = _seconds_per_call(lambda m=model, x=x: m(x), ctx.device, warmup, iters)
                infer_peak = peak_activation_bytes(model, x, bf16=True) / 2**20
                train_peak: str
                if ctx.cuda:
                    model.train()
                    torch.cuda.synchronize(ctx.device)
                    torch.cuda.reset_peak_memory_stats(ctx.device)
                    base = torch.cuda.memory_allocated(ctx.device)
                    with _autocast(ctx.device):
                        out = model(x)
                    out.float().square().mean().backward()
                    torch.cuda.synchronize(ctx.device)
                    train_peak = f"{(torch.cuda.max_memory_allocated(ctx.device) - base) / 2**20:.0f}"
                    model.zero_grad(set_to_none=True)
                    del out
                else:
                    train_peak = "n/a: CPU (no allocator statistics)"
                rows.append((label, b, f"{seconds * 1e3 / b:.1f}", f"{b / seconds:.2f}", f"{infer_peak:.1f}",
                             train_peak))
            except Exception as error:  # noqa: BLE001
                rows.append((label, b, f"failed: {_first_line(error)}", "", "", ""))
        model.to("cpu")
    head = [f'Random weights, {size} px, bf16 autocast, attention backend "auto". Peak: activations '
            "above the weights, MiB (inference under inference_mode; training: forward + backward).", ""]
    return head + _table(("model", "batch", "ms / image", "images/s", "inference peak MiB",
                          "training peak MiB"), rows)  # fmt: skip


RUNNERS: dict[str, Callable[[Context], list[str]]] = {
    "env": section_env,
    "bench": section_bench,
    "attention": section_attention,
    "sync": section_sync,
    "train": section_train,
    "sam": section_sam,
}


# --------------------------------------------------------------------------------------------
# report and command line


def _write(path: Path, header: list[str], sections: list[Section]) -> None:
    lines = list(header)
    summary = [(s.name, s.status, f"{s.seconds:.1f}") for s in sections]
    lines += _table(("section", "status", "seconds"), summary)
    for s in sections:
        lines += [f"## {s.name}", "", f"Status: {s.status}", ""] + s.lines + [""]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def _sections(value: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in value.split(",") if s.strip())
    unknown = [n for n in names if n not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown section(s) {unknown}; valid: {','.join(SECTIONS)}")
    return names


def _batch_sizes(value: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in value.split(","))
    except ValueError:
        sizes = ()
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"batch sizes must be positive ints, comma-separated, got {value!r}")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m routevit.gpu_check",
        description="Check routevit on a GPU (numbers, kernels, syncs, training, memory) and write one "
        "Markdown report. Exit status: 0 all sections ran or were skipped with a reason, 1 a section "
        "failed, 2 bad arguments.",
    )
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="auto: cuda when available; cpu runs every section tiny")  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="tiny models and inputs on the CPU (what CI runs)")
    p.add_argument("--out", default="gpu_check.md", help="the Markdown report, rewritten after each section")
    p.add_argument("--sections", type=_sections, default=SECTIONS,
                   help=f"comma-separated subset of {','.join(SECTIONS)}")  # fmt: skip
    p.add_argument("--budget-s", type=float, default=450.0, help="wall-clock budget; later parts are skipped")
    p.add_argument("--batch-sizes", type=_batch_sizes, default=None,
                   help="bench batch sizes (default 1,64,256; tiny 1,4)")  # fmt: skip
    p.add_argument("--workdir", help="scratch folder for the training runs (default: a temporary one)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    # cuBLAS reproducible across runs (the train section's resume check); must precede CUDA's init
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    parser = build_parser()
    argv_list = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv_list)
    reasons = []
    if args.dry_run:
        if args.device == "cuda":
            parser.error("--dry-run runs on the CPU; drop --device cuda")
        device = torch.device("cpu")
        reasons.append("dry run: tiny sizes on the CPU")
    elif args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch.cuda.is_available() is False (use --device cpu or --dry-run)")
    elif args.device == "cpu" or not torch.cuda.is_available():
        device = torch.device("cpu")
        why = "no CUDA" if args.device == "auto" else "--device cpu"
        reasons.append(f"{why}: tiny sizes on the CPU")
    else:
        device = torch.device("cuda", torch.cuda.current_device())
    tiny = device.type != "cuda"
    batch_sizes = args.batch_sizes or ((1, 4) if tiny else (1, 64, 256))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        scratch = args.workdir or stack.enter_context(tempfile.TemporaryDirectory(prefix="gpu_check-"))
        workdir = Path(scratch)
        ctx = Context(device, tiny, started + args.budget_s, batch_sizes, workdir)
        header = [
            "# routevit GPU check",
            "",
            f"{datetime.datetime.now().isoformat(timespec='seconds')}; "
            f"arguments `{' '.join(argv_list) or '(none)'}`; "
            f"device {device}; budget {args.budget_s:.0f} s{''.join(f'; {r}' for r in reasons)}.",
            "",
        ]  # fmt: skip
        sections = [Section(name) for name in args.sections]
        for i, section in enumerate(sections):
            t0 = time.monotonic()
            later = [s.name for s in sections[i + 1 :]]
            ctx.reserve_s = 0.0 if tiny else sum(ESTIMATE_S[name] for name in later)
            if ctx.left() <= 0:
                section.status = "skipped: time budget spent"
            else:
                try:
                    section.lines = RUNNERS[section.name](ctx)
                    section.status = "ok"
                except Skip as reason:
                    section.status = f"skipped: {reason}"
                except Exception as error:  # noqa: BLE001 - reported; the next section runs
                    section.status = f"failed: {_first_line(error)}"
                    section.lines = ["```", *traceback.format_exc().splitlines()[-25:], "```"]
            section.seconds = time.monotonic() - t0
            print(f"gpu_check: {section.name}: {section.status} ({section.seconds:.1f} s)", flush=True)
            _write(out, header, sections)
    total = time.monotonic() - started
    print(f"gpu_check: wrote {out} in {total:.0f} s", flush=True)
    return 1 if any(s.status.startswith("failed") for s in sections) else 0


if __name__ == "__main__":
    sys.exit(main())
