"""Several training processes on torch.distributed: joining the group and agreeing on decisions.

``torchrun`` starts the processes and describes the group in environment variables (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``); one process started any other
way trains alone, without a group.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def init_from_env(device: str, timeout_s: float) -> bool:
    """Join the process group the environment describes: ``gloo`` on CPU, ``nccl`` on CUDA (one
    GPU per process, ``LOCAL_RANK``). A collective that waits longer than ``timeout_s`` (a peer
    died or hangs) raises instead of blocking for ever. False when there is no group to join."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    return True


def rank_and_size() -> tuple[int, int]:
    """This process's rank and the number of processes (0 and 1 without a group)."""
    if not dist.is_initialized():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def rank0_number(value: float, device: torch.device) -> float:
    """Rank 0's ``value``, on every rank (e.g. its clock, so all stop at the same step)."""
    if not dist.is_initialized():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=0)
    return float(tensor.item())


def rank0_object(value: object) -> object:
    """Rank 0's ``value`` (any picklable object), on every rank."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def finish() -> None:
    """Wait until every rank is done (rank 0 exports after the others have stopped training).
    A rank that tore its group down while rank 0 was still exporting was once aborted by gloo
    ("terminate called without an active exception"), failing a finished run."""
    if dist.is_initialized():
        dist.barrier()


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
