"""torchrun initialisation and rank-0 helpers.

``torchrun --nnodes N --nproc-per-node G -m ltcl.cli train ...`` sets RANK, WORLD_SIZE and LOCAL_RANK; without
them the run is a single process. The primitives every floor uses (all-reduce, barrier, gather with
gradient) live in :mod:`ltcl.dist`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ltcl.dist import is_initialized
from ltcl.errors import UserError


@dataclass
class DistributedContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(requested: str, local_rank: int = 0, key: str = "train.device") -> torch.device:
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``; ``key`` names the setting in the error."""
    if requested not in ("auto", "cpu", "cuda"):
        raise UserError(f"{key} must be auto, cpu or cuda, got '{requested}'.")
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{key} is 'cuda' but no CUDA device is available on this machine (use cpu or auto).")
    if requested == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def init_distributed(requested_device: str = "auto") -> DistributedContext:
    """Joins the torchrun process group when launched by torchrun; a single process otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(requested_device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistributedContext(rank, world_size, local_rank, device)


def shutdown() -> None:
    if is_initialized():
        dist.destroy_process_group()
