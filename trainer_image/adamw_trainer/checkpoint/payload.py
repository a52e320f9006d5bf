"""What a checkpoint holds, how it is copied to host memory, and how it is loaded safely.

Three files per checkpoint (see `store.py` for the folder and manifest):

    model.pt         the model's state_dict (unwrapped from DDP / torch.compile); when some
                     parameters are frozen (LoRA), only the trainable ones: the frozen base
                     is rebuilt from its source at every start (see finetune.py)
    optimizer.pt     AdamW state: exp_avg, exp_avg_sq and the step count per parameter,
                     and the param groups
    train_state.pt   global step, tokens seen, learning-rate scale and rollback count,
                     the trainer's counters, RNG states (torch, CUDA, Python, NumPy),
                     convergence (best validation loss, patience, first start time) and
                     the experiment-tracking run id
    config.json      the resolved trainer config (camelCase), so `adamw-train export` can
                     rebuild the model; never read on resume

Data position needs no bytes of its own: batches are a pure function of (seed, step, rank),
so the global step *is* the data position.

Everything is read back with `torch.load(weights_only=True)`: only tensors and plain
containers of numbers and strings are accepted, so a checkpoint can never run code.
"""

from __future__ import annotations

import json
import pickle
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .store import (
    CheckpointError,
    CheckpointInfo,
    CorruptCheckpointError,
    FileWriter,
    UnsafeCheckpointError,
)

MODEL_FILE = "model.pt"
OPTIMIZER_FILE = "optimizer.pt"
TRAIN_STATE_FILE = "train_state.pt"
CONFIG_FILE = "config.json"


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def rng_state() -> dict[str, Any]:
    """Every RNG the trainer may draw from, as tensors and plain data."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(obj: Any) -> Any:
    """random.setstate wants the nested tuples it gave; pickling round-trips them, but be sure."""
    if isinstance(obj, list | tuple):
        return tuple(_tuples(x) for x in obj)
    return obj


class HostSnapshot:
    """Reusable host-memory buffers that a state is copied into before a background write.

    Reusing the buffers avoids allocating (and page-faulting) hundreds of MB on every save;
    on CUDA they are pinned so the device-to-host copy runs at full speed. A snapshot's
    buffers are overwritten by the next one, so the writer finishes one save before the
    next snapshot is taken.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def copy(self, obj: Any, key: str = "") -> Any:
        """A copy of `obj` whose tensors live in this snapshot's host buffers."""
        copied = self._copy(obj, key)
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()  # non-blocking D2H copies must land before the write
        return copied

    def _copy(self, obj: Any, key: str) -> Any:
        if isinstance(obj, torch.Tensor):
            return self._copy_tensor(obj, key)
        if isinstance(obj, Mapping):
            return {k: self._copy(v, f"{key}/{k}") for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            items = [self._copy(v, f"{key}/{i}") for i, v in enumerate(obj)]
            return items if isinstance(obj, list) else tuple(items)
        return obj

    def _copy_tensor(self, t: torch.Tensor, key: str) -> torch.Tensor:
        t = t.detach()
        buf = self._buffers.get(key)
        if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
            buf = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=t.is_cuda)
            self._buffers[key] = buf
        buf.copy_(t, non_blocking=t.is_cuda)
        return buf

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._buffers.values())


@dataclass
class Payload:
    """A checkpoint's content in host memory: ready to write, or just read back."""

    model: dict[str, Any]
    optimizer: dict[str, Any]
    train_state: dict[str, Any]
    config: dict[str, Any] | None = None

    def writers(self) -> dict[str, FileWriter]:
        """name -> function that serializes that part into an open binary file."""
        files = {
            MODEL_FILE: lambda f: _save(self.model, f),
            OPTIMIZER_FILE: lambda f: _save(self.optimizer, f),
            TRAIN_STATE_FILE: lambda f: _save(self.train_state, f),
        }
        if self.config is not None:
            text = json.dumps(self.config, indent=1, sort_keys=True)
            files[CONFIG_FILE] = lambda f: f.write(text.encode())
        return files


def _save(obj: Any, f: Any) -> None:
    # The manifest's sha256 already covers every byte; torch's per-record CRC32 would double
    # the writer's CPU time, which on a busy host comes out of training (torch.load does not
    # need it). This is a process-wide torch setting; only checkpoints use torch.save here.
    torch.serialization.set_crc32_options(False)
    torch.save(obj, f)


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint keeps of the model: its state_dict, or, when some parameters are
    frozen (LoRA), only the trainable ones (the frozen base is rebuilt at every start)."""
    m = unwrap(model)
    named = dict(m.named_parameters())
    if all(p.requires_grad for p in named.values()):
        return m.state_dict()
    return {name: p.detach() for name, p in named.items() if p.requires_grad}


def capture(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    train_state: Mapping[str, Any],
    snapshot: HostSnapshot | None = None,
    config: dict[str, Any] | None = None,
) -> Payload:
    """Copy model, optimizer and trainer state to host memory (the only part that stalls training)."""
    snapshot = snapshot or HostSnapshot()
    state = dict(train_state)
    state["rng"] = rng_state()
    return Payload(
        model=snapshot.copy(model_state(model), "model"),
        optimizer=snapshot.copy(optimizer.state_dict(), "optimizer"),
        train_state=snapshot.copy(state, "train_state"),
        config=config,
    )


def _load_file(info: CheckpointInfo, name: str) -> Any:
    path = info.path / name
    try:
        # weights_only=True: the unpickler accepts tensors and plain data only, never code.
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"{path}: refused to load: the file contains Python objects other than tensors and "
            f"plain data, and loading it could execute code ({_why_unsafe(err)}). This "
            f"checkpoint is never loaded; delete its folder if you did not put it there."
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        raise CorruptCheckpointError(f"{path}: cannot be read: {err}") from None


def _why_unsafe(err: Exception) -> str:
    """The line of torch's refusal that names the offending global (the rest is boilerplate)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    specific = [ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln or "unsupported" in ln]
    return (specific or lines[-1:] or [type(err).__name__])[0]


def load_model_file(info: CheckpointInfo) -> dict[str, Any]:
    """Only the model's weights of a verified checkpoint (initFrom, export)."""
    return _load_file(info, MODEL_FILE)


def load(info: CheckpointInfo) -> Payload:
    """Read a verified checkpoint's files to CPU memory, refusing anything that could run code."""
    return Payload(
        model=_load_file(info, MODEL_FILE),
        optimizer=_load_file(info, OPTIMIZER_FILE),
        train_state=_load_file(info, TRAIN_STATE_FILE),
    )


def load_model_state(model: torch.nn.Module, state: Mapping[str, Any]) -> None:
    """Load what `model_state` saved: the full state_dict, or exactly the trainable parameters."""
    m = unwrap(model)
    trainable = {name for name, p in m.named_parameters() if p.requires_grad}
    partial = len(trainable) < len(dict(m.named_parameters()))
    if partial and set(state) != trainable:
        have, want = set(state), trainable
        raise CheckpointError(
            "checkpoint does not fit the model's trainable parameters (were model.* or "
            f"finetune.lora changed since it was saved?): missing {sorted(want - have)[:3]}, "
            f"unexpected {sorted(have - want)[:3]}"
        )
    try:
        m.load_state_dict(state, strict=not partial)
    except RuntimeError as err:
        raise CheckpointError(
            f"checkpoint does not fit the model (was model.* changed since it was saved?): {err}"
        ) from None


def restore(payload: Payload, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Load a payload into model and optimizer in place; return the trainer state (without RNG)."""
    load_model_state(model, payload.model)
    try:
        optimizer.load_state_dict(payload.optimizer)
    except (ValueError, KeyError) as err:
        raise CheckpointError(f"checkpoint optimizer state does not fit: {err}") from None
    state = dict(payload.train_state)
    rng_saved = state.pop("rng", None)
    if rng_saved is not None:
        set_rng_state(rng_saved)
    return state
