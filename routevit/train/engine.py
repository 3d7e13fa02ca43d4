"""The training loop: one process or torchrun DDP, resumable to the bit, never losing a run.

Determinism. Model init uses ``train.seed``; every step reseeds torch / numpy / random from
``(seed, step, rank)`` (drop path, Mixup), and every training image's augmentation from
``(seed, epoch, index)`` (see :mod:`routevit.train.data`). The RNG states are saved in each
checkpoint as well, but the per-step derivation is what makes a resumed run (even one resumed
on a different number of workers) replay the same random numbers.

Stopping. A SIGTERM/SIGINT sets a flag; at the next step every rank agrees (one small
all-reduce per step, after backward) not to apply that step, save a checkpoint at the step
boundary and return ``status="interrupted"``. A non-finite loss or gradient norm raises
:class:`NonFiniteLossError` before the optimizer steps; nothing is saved, so the newest
checkpoint is the last good one.

Host syncs. A step reads the device back once, after backward: the flags above (and, on
logging steps only, the loss, its parts and the gradient norm, in the same small vector). With
``train.amp: fp16`` the grad scaler reads its inf check back too (in ``scaler.step``).
"""

from __future__ import annotations

import logging
import math
import random
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel

from . import checkpoint as ckpt
from .build import build_optimizer, build_scheduler
from .config import Recipe, load_recipe, recipe_diff, recipe_yaml, replace_fields
from .data import derive_seed, local_batch_size
from .distributed import DistInfo, all_reduce_sum, cleanup, gather_digests, host_barrier, init_distributed
from .logs import MetricsLog, Progress
from .tasks import get_task

logger = logging.getLogger("routevit.train")


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient norm became NaN/inf; the run stopped without saving."""


@dataclass(frozen=True)
class TrainResult:
    status: str  # "finished" or "interrupted"
    output: Path
    epoch: int  # completed epochs
    step: int  # optimizer steps
    last_checkpoint: Path | None
    best: dict[str, Any] | None
    train_images_per_s: float  # this invocation's training steps, data loading included
    replica_digests: list[str]  # SHA-256 of each rank's final weights
    signal: int | None = None  # the signal that stopped an interrupted run


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """Python, numpy and torch CPU generator states, and the generator of ``device`` if it is a
    GPU: this process's own device only, so a checkpoint restores where another set of GPUs is
    visible (``get_rng_state_all`` saved one state per visible GPU, per rank)."""
    _, key, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(key.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "gauss": gauss,
        },
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and device is not None and device.type == "cuda":
        if isinstance(cuda, (list, tuple)):  # older checkpoints: one state per visible GPU
            index = device.index or 0
            if index >= len(cuda):
                logger.warning("the checkpoint has no CUDA RNG state for %s; not restored", device)
                return
            cuda = cuda[index]
        torch.cuda.set_rng_state(cuda, device)


def _enable_tf32(device: torch.device) -> None:
    """fp32 matmuls (a run with ``train.amp: none``, and the fp32 ops outside autocast) in TF32
    on CUDA; convolutions use it by default. Off CUDA nothing changes."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True


def _gather_rng_states(info: DistInfo) -> list[dict[str, Any]]:
    state = _rng_state(info.device)
    if not info.distributed:
        return [state]
    out: list[Any] = [None] * info.world_size
    torch.distributed.all_gather_object(out, state)
    return out


class _Run:
    """State and steps of one ``train()`` call (set-up in ``__init__``, loop in ``run``)."""

    def __init__(self, recipe: Recipe, info: DistInfo, resume: bool) -> None:
        self.recipe, self.info = recipe, info
        r, t = recipe, recipe.train
        if t.amp == "fp16" and info.device.type != "cuda":
            raise ValueError("train.amp=fp16 needs CUDA (it uses a grad scaler); use bf16 or none on CPU")
        if t.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        _enable_tf32(info.device)
        self.out = Path(r.run.output)
        self.ckpt_root = self.out / "checkpoints"
        if not resume and ckpt.list_checkpoints(self.ckpt_root):
            raise FileExistsError(
                f"{str(self.ckpt_root)!r} already holds checkpoints; pass --resume to continue that run "
                "or choose another --output"
            )
        if info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.task = get_task(r)
        parts = self.task.setup(info, lambda: seed_all(derive_seed(t.seed)))
        self.student, self.teacher, net = parts.student, parts.teacher, parts.net
        self.loader, self.sampler, self.val_loader = parts.loader, parts.sampler, parts.val_loader
        self.best_key = self.task.best_metric
        self.global_batch = t.batch_size
        self.steps_per_epoch = self.sampler.num_samples // local_batch_size(t.batch_size, info.world_size)
        self.optimizer = build_optimizer(self.student, r)
        self.scheduler = build_scheduler(self.optimizer, r, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler("cuda", enabled=t.amp == "fp16")
        self.ema = ModelEmaV3(self.student, decay=t.ema_decay) if t.ema else None
        self.epoch, self.samples_in_epoch, self.step = 0, 0, 0
        self.best: dict[str, Any] | None = None
        self.last_checkpoint: Path | None = None
        if resume:
            self._restore()
        if info.distributed:
            net = DistributedDataParallel(
                net, device_ids=[info.device.index] if info.device.type == "cuda" else None,
                find_unused_parameters=self.task.find_unused_parameters,
            )
        self.net = net
        self.metrics = MetricsLog(
            self.out / "metrics.jsonl" if info.is_main else None, self.out / "tensorboard"
        )
        self.stop_signal: int | None = None
        self.train_seconds, self.train_images = 0.0, 0
        if info.is_main:
            ckpt.atomic_write_text(self.out / "recipe.yaml", recipe_yaml(r))
            description = parts.description
            logger.info(
                "training %s on %s, %d steps/epoch of %d images, %d process(es) on %s, distillation %s",
                r.model.name, description, self.steps_per_epoch, t.batch_size, info.world_size, info.device,
                f"from {r.distill.teacher} (lambda_fd {r.distill.lambda_fd})" if self.teacher else "off",
            )  # fmt: skip

    # -- checkpoints ---------------------------------------------------------------------------

    def _restore(self) -> None:
        latest = ckpt.latest_checkpoint(self.ckpt_root)
        if latest is None:
            logger.info("--resume: no checkpoint in %s yet; starting from scratch", self.ckpt_root)
            return
        changed = recipe_diff(load_recipe(latest / "recipe.yaml"), self.recipe)
        if changed:
            logger.warning("resuming with a recipe that differs from the checkpoint's in %s", changed)
        ckpt.load_into(self.student, latest)
        if self.ema is not None:
            ckpt.load_into(self.ema.module, latest, ema=True)
        st = ckpt.load_train_state(latest)
        self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        self.scaler.load_state_dict(st["scaler"])
        self.epoch, self.samples_in_epoch, self.step = st["epoch"], st["samples_in_epoch"], st["step"]
        self.best = ckpt.read_best(self.ckpt_root)
        if len(st["rng"]) == self.info.world_size:
            _set_rng_state(st["rng"][self.info.rank], self.info.device)
        self.last_checkpoint = latest
        logger.info("resumed from %s (epoch %d, step %d)", latest, self.epoch, self.step)

    def _save(self, metrics: dict[str, Any] | None = None) -> None:
        """Collective (RNG states are gathered); rank 0 writes while the others wait in a host
        barrier (not in the next step's NCCL all-reduce, whose watchdog would time out during a
        multi-GB write)."""
        rng = _gather_rng_states(self.info)
        if not self.info.is_main:
            host_barrier()
            return
        try:
            self._write_checkpoint(rng, metrics)
        finally:
            host_barrier()

    def _write_checkpoint(self, rng: list[dict[str, Any]], metrics: dict[str, Any] | None) -> None:
        state = {
            "epoch": self.epoch, "samples_in_epoch": self.samples_in_epoch, "step": self.step,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": rng, "world_size": self.info.world_size,
        }  # fmt: skip
        meta = {
            "epoch": self.epoch,
            "samples_in_epoch": self.samples_in_epoch,
            "step": self.step,
            **self.task.checkpoint_meta(),
            **(metrics or {}),
        }
        ema_state = self.ema.module.state_dict() if self.ema is not None else None
        path = ckpt.save_checkpoint(
            self.ckpt_root, self.step, self.student.state_dict(), state, self.recipe, meta, ema_state
        )
        self.last_checkpoint = path
        if (
            metrics
            and self.best_key in metrics
            and (self.best is None or metrics[self.best_key] > self.best["metric"])
        ):
            ckpt.write_best(self.ckpt_root, path.name, metrics[self.best_key], self.epoch)
            self.best = ckpt.read_best(self.ckpt_root)
        ckpt.prune(self.ckpt_root, self.recipe.run.keep_last)
        self.metrics.write("checkpoint", self.step, path=str(path), epoch=self.epoch)

    # -- steps -------------------------------------------------------------------------------

    def _step(self, batch: Any, log: bool = True) -> dict[str, Any] | None:
        """One optimizer step; None when a stop was requested (nothing changed). The loss, its
        parts and the gradient norm are read back (and returned) only when ``log``."""
        dev, t = self.info.device, self.recipe.train
        seed_all(derive_seed(t.seed, self.step, self.info.rank))
        self.task.before_step(self.student, self.step)
        loss, parts, n_local = self.task.loss(self.net, self.teacher, batch, dev)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        clip = self.recipe.optim.clip_grad_norm
        grad_norm = torch.nn.utils.clip_grad_norm_(self.student.parameters(), clip if clip else math.inf)
        # One all-reduce and one read-back per step, after backward (the host waits for the
        # backward it has already queued, not between forward and backward). Every rank must take
        # the same branch below, so the flags are summed over ranks first. Host numbers enter as
        # kernel arguments (torch.full), not as a tensor copied from host memory. The loss parts'
        # names are the same on every rank (they depend on the recipe only).
        names = list(parts) if log else []
        loss_bad = ~torch.isfinite(loss.detach())
        grad_bad = ~torch.isfinite(grad_norm) if not self.scaler.is_enabled() else torch.zeros_like(loss_bad)
        host = (float(self.stop_signal is not None), float(n_local), float(batch.skipped))
        host_flags = (torch.full((), v, device=dev) for v in host)
        flags = torch.stack([loss_bad.float(), grad_bad.float(), *host_flags])
        if log:
            values = [loss.detach(), *(parts[k] for k in names), grad_norm]
            flags = torch.cat([flags, torch.stack(values).float()])
        reduced = all_reduce_sum(flags).tolist()
        nonfinite_loss, nonfinite_grad, stop, n, skipped = reduced[:5]
        if stop:
            return None
        world = self.info.world_size
        if nonfinite_loss:
            loss_sum = all_reduce_sum(loss.detach().float().reshape(1)).item()  # every rank is here
            self._nonfinite(f"loss {loss_sum / world}")
        if nonfinite_grad:
            self._nonfinite(f"gradient norm {grad_norm.item()}")
        self.scheduler.step_update(num_updates=self.step)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.student, step=self.step)
        out: dict[str, Any] = {"images": int(n), "skipped": int(skipped)}
        if log:
            loss_sum, *part_sums, grad_norm_sum = reduced[5:]
            parts_mean = {k: v / world for k, v in zip(names, part_sums, strict=True)}
            out = {"loss": loss_sum / world, **parts_mean, "lr": self.optimizer.param_groups[0]["lr"],
                   "grad_norm": grad_norm_sum / world, **out}  # fmt: skip
        return out

    def _nonfinite(self, what: str) -> None:
        last = str(self.last_checkpoint) if self.last_checkpoint else "none (no checkpoint was written yet)"
        raise NonFiniteLossError(
            f"non-finite {what} at epoch {self.epoch}, step {self.step}; stopped without saving. Last good "
            f"checkpoint: {last}. Try a lower optim.lr, keep optim.clip_grad_norm on, or another train.seed."
        )

    def _train_epoch(self) -> bool:
        """Train to the end of the epoch; False if a stop was requested."""
        world, every = self.info.world_size, self.recipe.run.checkpoint_every_steps
        self.sampler.set_position(self.epoch, self.samples_in_epoch // world)
        done = self.samples_in_epoch // self.global_batch
        progress = Progress(self.info.is_main, self.recipe.run.progress, self.steps_per_epoch, self.epoch,
                            self.recipe.run.log_every_steps, initial=done)  # fmt: skip
        window_images, window_start, skipped_epoch = 0, time.perf_counter(), 0
        shown: dict[str, float] = {}
        tick = time.perf_counter()
        try:
            for batch in self.loader:
                log = (done + 1) % self.recipe.run.log_every_steps == 0 or done + 1 == self.steps_per_epoch
                values = self._step(batch, log)
                if values is None:
                    return False
                done += 1
                self.samples_in_epoch += self.global_batch
                skipped_epoch += values["skipped"]
                now = time.perf_counter()
                self.train_seconds += now - tick
                self.train_images += values["images"]
                window_images += values["images"]
                if log:
                    values["images_per_s"] = window_images / max(now - window_start, 1e-9)
                    self.metrics.write("train", self.step, epoch=self.epoch, **values)
                    window_images, window_start = 0, now
                shown = {k: values[k] for k in ("loss", "lr") if k in values} or shown  # read on log steps
                progress.update(done, shown)
                if every and self.step % every == 0 and done < self.steps_per_epoch:
                    self._save()
                tick = time.perf_counter()
        finally:
            progress.close()
        if skipped_epoch:
            logger.warning(
                "epoch %d: skipped %d unreadable image(s) (data.on_bad_image=skip)", self.epoch, skipped_epoch
            )
        return True

    def _validate(self) -> dict[str, Any]:
        if self.val_loader is None:
            return {}
        ema = self.ema.module if self.ema is not None else None
        return self.task.validate(self.student, ema, self.val_loader, self.info.device)

    def run(self) -> TrainResult:
        r = self.recipe
        status = "finished"
        with _StopOnSignals(self):
            while self.epoch < r.train.epochs:
                if not self._train_epoch():
                    status = "interrupted"
                    break
                self.epoch += 1
                self.samples_in_epoch = 0
                metrics: dict[str, Any] = {}
                if self.epoch % r.run.val_every_epochs == 0 or self.epoch == r.train.epochs:
                    metrics = self._validate()
                if metrics:
                    self.metrics.write("val", self.step, epoch=self.epoch, **metrics)
                    logger.info(
                        "epoch %d: %s", self.epoch, " ".join(f"{k} {v:.4g}" for k, v in metrics.items())
                    )
                self._save(metrics)
            if status == "interrupted":
                self._save()
                logger.warning(
                    "stopped by signal %s at epoch %d, step %d; saved %s; continue with --resume",
                    self.stop_signal, self.epoch, self.step, self.last_checkpoint,
                )  # fmt: skip
        digests = gather_digests(self.student)
        ips = self.train_images / self.train_seconds if self.train_seconds else 0.0
        self.metrics.write("end", self.step, status=status, epoch=self.epoch, train_images_per_s=ips,
                           replica_digests=digests, signal=self.stop_signal)  # fmt: skip
        self.metrics.close()
        if len(set(digests)) > 1:
            raise RuntimeError(f"DDP replicas ended with different weights: {digests}")
        return TrainResult(
            status,
            self.out,
            self.epoch,
            self.step,
            self.last_checkpoint,
            self.best,
            ips,
            digests,
            self.stop_signal,
        )


class _StopOnSignals:
    """SIGTERM/SIGINT ask the loop to stop at the next step; a second SIGINT interrupts at once."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.run.stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.run.stop_signal = signum
        logger.warning("received signal %d; saving at the next step boundary", signum)

    def __enter__(self) -> _StopOnSignals:
        for s in (signal.SIGTERM, signal.SIGINT):
            self.previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self.previous.items():
            signal.signal(s, h)


def train(recipe: Recipe, resume: bool = False) -> TrainResult:
    """Train ``recipe`` (in this process, or in each process torchrun started).

    With ``resume``, continue from the newest checkpoint in ``run.output/checkpoints`` (or start
    fresh if there is none). Raises :class:`NonFiniteLossError` on a NaN/inf loss.
    """
    info = init_distributed(recipe.train.device)
    try:
        return _Run(recipe, info, resume).run()
    finally:
        cleanup()


@dataclass(frozen=True)
class StepCost:
    """What training a recipe costs on this machine, measured by :func:`time_steps`."""

    seconds_per_step: float  # median of the timed optimizer steps, data loading included
    steps_per_epoch: int
    validation_seconds: float  # one pass over the validation split (0 without one)

    def seconds(self, epochs: int) -> float:
        """Training and per-epoch validation time of ``epochs`` epochs."""
        return epochs * (self.steps_per_epoch * self.seconds_per_step + self.validation_seconds)


def time_steps(recipe: Recipe, steps: int = 5, warmup: int = 2) -> StepCost:
    """Time ``steps`` optimizer steps of ``recipe`` after ``warmup`` untimed ones, and one
    validation, in this process: the same set-up, loader, model, teacher and loss as
    :func:`train`, with the run's files written to a temporary folder and discarded."""
    if steps < 1 or warmup < 0:
        raise ValueError(f"time_steps: expected steps >= 1 and warmup >= 0, got {steps} and {warmup}")
    info = init_distributed(recipe.train.device)
    try:
        with tempfile.TemporaryDirectory(prefix="routevit-time-steps-") as folder:
            run = _Run(replace_fields(recipe, run={"output": folder}), info, resume=False)
            try:
                seconds, validation = _timed_steps(run, steps, warmup)
            finally:
                run.metrics.close()  # before its folder goes, on the error path too
    finally:
        cleanup()
    return StepCost(float(np.median(seconds)), run.steps_per_epoch, validation)


def _timed_steps(run: _Run, steps: int, warmup: int) -> tuple[list[float], float]:
    """Seconds of each timed step of ``run`` and of one validation (0 without a split)."""
    if run.steps_per_epoch < warmup + steps:
        raise ValueError(
            f"time_steps: expected an epoch of at least {warmup + steps} steps, "
            f"got {run.steps_per_epoch} (more data or a smaller batch)"
        )
    run.sampler.set_position(0, 0)
    seconds: list[float] = []
    batches = iter(run.loader)
    for i in range(warmup + steps):
        start = time.perf_counter()
        run._step(next(batches), log=False)
        if i >= warmup:
            seconds.append(time.perf_counter() - start)
    start = time.perf_counter()
    run._validate()
    return seconds, time.perf_counter() - start if run.val_loader is not None else 0.0
