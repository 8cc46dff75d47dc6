"""torch.distributed for the trainers: one process per GPU (NCCL) or several CPU processes (gloo),
launched by `torchrun`; a single plain process when WORLD_SIZE is unset or 1.

Scale-out is FSDP2: `fully_shard` on every decoder layer, then on the root module (which then owns the
embedding, final norm and LM head). fully_shard works over gloo on CPU too (torch 2.13), so the CPU
multi-process run exercises the same code path as the GPU one.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from h1r.errors import ConfigError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(pref: str = "auto", local_rank: int = 0) -> torch.device:
    if pref == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda requested but no CUDA GPU is available")
    if pref == "cuda" or (pref == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    return torch.device("cpu")


def init_distributed(device_pref: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group torchrun describes in the environment (or stay single-process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_pref, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s),
                                device_id=device if device.type == "cuda" else None)
    return DistInfo(rank, world, local_rank, device)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Sum a few scalars over ranks (one collective). fp64 so token counts stay exact."""
    if not info.distributed:
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def broadcast_object(obj, info: DistInfo):
    """Rank 0's `obj` on every rank."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard_model(root: nn.Module, layers, info: DistInfo, mp_policy=None) -> nn.Module:
    """FSDP2: shard each module of `layers` (the decoder layers), then `root`. No-op on one process."""
    if not info.distributed:
        return root
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(info.device.type, (info.world_size,))
    kw = {"mesh": mesh}
    if mp_policy is not None:
        kw["mp_policy"] = mp_policy
    for layer in layers:
        fully_shard(layer, **kw)
    fully_shard(root, **kw)
    return root


def local_grad_norm_to_float(norm) -> float:
    """clip_grad_norm_ returns a DTensor under FSDP2; make it a plain float."""
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)
