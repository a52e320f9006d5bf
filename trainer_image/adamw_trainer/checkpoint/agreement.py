"""Decisions every rank must share (resume point, rollback target, stop, save outcome).

Rank 0 decides, the others follow; or every rank votes and the maximum wins. The messages
go over a gloo (CPU) process group even when training uses NCCL, so asking "did anyone get
SIGTERM?" every step never makes the host wait for the GPU.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


class Agreement:
    """Collective decisions over a CPU group; the identity when there is one process."""

    def __init__(self, world_size: int):
        self.world_size = world_size
        self._group = None
        if world_size > 1:
            if not dist.is_initialized():
                raise RuntimeError("the process group must be initialized before Agreement")
            self._group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def any(self, flag: bool) -> bool:
        """True on every rank if it is True on some rank."""
        if not self.distributed:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self._group)
        return bool(t.item())

    def from_rank0(self, value: Any) -> Any:
        """Rank 0's `value` on every rank (any picklable object; other ranks' values are ignored)."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self._group)
        return box[0]
