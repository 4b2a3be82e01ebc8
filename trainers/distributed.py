"""Devices and distributed data parallel via ``torchrun``: device choice, process group, collectives.

``torchrun --nproc_per_node=N -m autoseg run_training ...`` sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``;
``init_from_env`` turns that into a process group (NCCL on CUDA, gloo on CPU). Everything else works
unchanged in a single process: every helper here degrades to the identity when not distributed.
"""
from __future__ import annotations

import logging
import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from autoseg import AutosegError

log = logging.getLogger(__name__)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise AutosegError(f"WORLD_SIZE must be an integer, got {os.environ['WORLD_SIZE']!r}") from None


def init_from_env(device: torch.device, timeout_s: float = 1800.0) -> bool:
    """Join the process group torchrun describes; True if this call created it (caller destroys it)."""
    if env_world_size() <= 1 or is_distributed():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    log.info("distributed: rank %d of %d (%s)", rank(), world_size(), backend)
    return True


def local_device(device: torch.device) -> torch.device:
    """On CUDA each rank drives the GPU its LOCAL_RANK names."""
    if device.type == "cuda" and is_distributed():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def split_batch(batch_size: int, n: int, r: int) -> int:
    """This rank's share of the global batch; the first ``batch_size % n`` ranks take one more."""
    if batch_size < n:
        raise AutosegError(f"batch size {batch_size} cannot be split over {n} processes; "
                           f"use at most {batch_size} processes or a larger batch in the plans")
    return batch_size // n + (1 if r < batch_size % n else 0)


def wrap(network: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The network in DistributedDataParallel when distributed; itself otherwise."""
    if not is_distributed():
        return network
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(network, device_ids=ids)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (in place on a copy); the gloo/NCCL device is handled by the caller's tensor."""
    if not is_distributed():
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t


def all_gather_objects(obj: Any) -> list[Any]:
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def destroy() -> None:
    if is_distributed():
        dist.destroy_process_group()
