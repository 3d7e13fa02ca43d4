"""GPU check sections that run the models for correctness and memory: sync, train, sam."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from .common import (
    TINY_BLVIT,
    Context,
    Skip,
    _autocast,
    _first_line,
    _restored_torch_settings,
    _seconds_per_call,
    _sync,
    _table,
)

# --------------------------------------------------------------------------------------------
# sync


def _sync_models(ctx: Context) -> list[tuple[str, nn.Module, torch.Tensor]]:
    from ..layers.encoder import Schedule
    from ..models import create_model

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
    from ..train import recipe_from_dict, train

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

    from ..train import checkpoint as ckpt

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
    from ..bench import peak_activation_bytes
    from ..layers.encoder import Schedule
    from ..models import create_model

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


