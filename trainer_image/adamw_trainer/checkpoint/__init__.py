"""Checkpoints that can be trusted: atomic `step-N` folders, sha256 manifests, async writes.

`store` (torch-free) owns the folders and manifests; `payload` owns what is in them and
loads it without ever executing code; `async_writer` writes them off the training thread.
"""

from .store import (
    CheckpointError,
    CheckpointInfo,
    CheckpointMeta,
    CheckpointStore,
    CorruptCheckpointError,
    UnsafeCheckpointError,
)

__all__ = [
    "CheckpointError",
    "CheckpointInfo",
    "CheckpointMeta",
    "CheckpointStore",
    "CorruptCheckpointError",
    "UnsafeCheckpointError",
]
