"""Process-group setup from torchrun-style environment variables.

The operator sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT directly on
one-process-per-pod workers (LOCAL_RANK then defaults to 0); multi-GPU pods run torchrun,
which sets all of them. Both paths go through `init_process_group(init_method="env://")`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DistEnv:
        env = os.environ if environ is None else environ
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", "0"))
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"RANK={rank} and WORLD_SIZE={world} are inconsistent")
        return cls(rank=rank, world_size=world, local_rank=local)


def resolve_device(requested: str, env: DistEnv) -> torch.device:
    """`auto` → CUDA if available; on CUDA each process takes the GPU of its local rank."""
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device: 'cuda' was requested but no CUDA device is available")
        torch.cuda.set_device(env.local_rank)
        return torch.device("cuda", env.local_rank)
    return torch.device("cpu")


def init_process_group(env: DistEnv, device: torch.device) -> None:
    """Join the job's process group (gloo on CPU, NCCL on CUDA); a no-op for one process."""
    if env.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(
            backend=backend, init_method="env://", rank=env.rank, world_size=env.world_size, **kwargs
        )


def destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Mean across ranks (in place); the identity for one process."""
    if env.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= env.world_size
    return t
