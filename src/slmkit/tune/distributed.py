"""Data-parallel plumbing of the training loop: the process group from torchrun's
environment, which rank writes, gradient averaging and clipping, threads per rank.

Under ``torchrun --nproc-per-node K`` (env ``WORLD_SIZE`` > 1) the process group is
initialised from the environment (gloo on CPU, nccl on CUDA); gradients are
averaged across ranks before each optimizer step (as DDP does) and only rank 0
writes. ``parallel="fsdp"`` shards instead (``slmkit.tune.fsdp``).
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from rich.console import Console
from torch import nn

from ..device import resolve_device
from .config import TrainConfig


def dist_setup() -> tuple[int, int]:
    """(rank, world size); initialises torch.distributed from torchrun's env when needed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on rank 0 (or when not distributed): the process that writes files."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier(world: int) -> None:
    """Wait for every rank (nothing in one process)."""
    if world > 1:
        dist.barrier()


def note(text: str) -> None:
    """One line on stderr from rank 0."""
    if is_main():
        Console(stderr=True, highlight=False).print(f"[yellow]note:[/] {text}")


def use_fsdp(cfg: TrainConfig, world: int) -> bool:
    """Whether this run shards (``parallel="fsdp"`` and more than one rank)."""
    if cfg.parallel != "fsdp":
        return False
    if world == 1:
        note("fsdp has no effect in one process; run under torchrun --nproc-per-node K")
    return world > 1


def train_device(cfg: TrainConfig, world: int) -> torch.device:
    """Where this rank trains: ``cfg.device``; under torchrun on CUDA, the rank's own GPU."""
    device = resolve_device(cfg.device)
    if device.type == "cuda" and world > 1 and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def threads_for(cfg: TrainConfig, world: int) -> int:
    """cfg.threads, else $OMP_NUM_THREADS, else the cores shared by this node's ranks."""
    if cfg.threads:
        return cfg.threads
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    return max(1, (os.cpu_count() or 1) // max(1, local))


def all_mean(values: list[float], world: int) -> list[float]:
    """The mean of each value over the ranks."""
    if world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return (t / world).tolist()


def sync_params(params: list[nn.Parameter], world: int) -> None:
    """Every rank starts from rank 0's weights."""
    if world > 1:
        for p in params:
            dist.broadcast(p.data, src=0)


def average_grads(params: list[nn.Parameter], world: int) -> None:
    """Mean of each gradient over ranks, one flat all-reduce."""
    if world == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a tensor (its shard for an FSDP DTensor)."""
    from torch.distributed.tensor import DTensor
    return t.to_local() if isinstance(t, DTensor) else t


def clip_grads(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Scale gradients to total L2 norm <= ``max_norm`` (the norm over all shards under
    FSDP); returns the norm before clipping."""
    from torch.distributed.tensor import DTensor
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm


def state_bytes(params: dict, opt) -> int:
    """Bytes this rank holds for the trainable parameters, their gradients (same size)
    and the optimizer state."""
    n = sum(2 * _local(p).nbytes for p in params.values())
    return n + sum(_local(v).nbytes for st in opt.state.values() for v in st.values()
                   if torch.is_tensor(v))
