"""torchrun / DistributedDataParallel plumbing: process group set-up, rank helpers, collectives.

The same code runs in one plain process (world size 1, no process group) and under
``torchrun --nproc_per_node N`` (NCCL on CUDA, gloo on CPU).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _pick_device(preference: str, local_rank: int) -> torch.device:
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device is 'cuda' but torch.cuda.is_available() is False")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


# How long a rank waits in :func:`host_barrier` (rank 0 writing a checkpoint), in seconds.
HOST_BARRIER_TIMEOUT_S = float(os.environ.get("ROUTEVIT_HOST_BARRIER_TIMEOUT_S", 4 * 3600))

_host_group: list[object] = [None]  # a gloo group for host barriers, made by init_distributed


def init_distributed(device_preference: str = "auto") -> DistInfo:
    """Join the process group torchrun describes in the environment (if any) and pick the device.

    Besides the default group (NCCL on CUDA, gloo on CPU) every rank joins a CPU (gloo) group
    with a long timeout, for :func:`host_barrier`."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _pick_device(device_preference, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
        _host_group[0] = dist.new_group(backend="gloo", timeout=timedelta(seconds=HOST_BARRIER_TIMEOUT_S))
    return DistInfo(rank, world_size, local_rank, device)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _host_group[0] = None


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (in place); a no-op without a process group."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def host_barrier() -> None:
    """Wait for every rank on the CPU (gloo) group, with ``HOST_BARRIER_TIMEOUT_S``: the ranks
    that wait for rank 0 to write a checkpoint do so here, not inside an NCCL collective whose
    watchdog (10-30 minutes) would abort the job during a multi-GB write. A no-op without a
    process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    group = _host_group[0]
    if group is None:  # a process group someone else initialised
        dist.barrier()
    else:
        dist.barrier(group=group)


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of every parameter and buffer, bit for bit (for checking that replicas agree)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def gather_digests(model: nn.Module) -> list[str]:
    """Every rank's :func:`weights_digest`, in rank order."""
    digest = weights_digest(model)
    if not (dist.is_available() and dist.is_initialized()):
        return [digest]
    out: list[str] = [""] * dist.get_world_size()
    dist.all_gather_object(out, digest)
    return out
