"""Token streams that need no tokenizer: byte-level text, nanoGPT uint16 files, synthetic.

Each source yields a flat training stream and a held-out tail (`Splits`); `batches.py`
draws windows from them.
"""

from __future__ import annotations

import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import DataConfig

_MASK64 = (1 << 64) - 1


def mix_seed(*parts: int) -> int:
    """Combine integers into one well-spread 63-bit seed (splitmix64 over the parts)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (p & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        z = h
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        h = z ^ (z >> 31)
    return h & ((1 << 63) - 1)


class DataError(ValueError):
    """The data source cannot be used (missing files, too little data, bad token ids)."""


def read_text_bytes(paths: list[Path], max_bytes: int) -> bytes:
    """Concatenate files (in the given order) up to `max_bytes`."""
    chunks, total = [], 0
    for p in paths:
        if total >= max_bytes:
            break
        try:
            b = p.read_bytes()
        except OSError:
            continue  # unreadable files in a corpus directory are skipped, not fatal
        b = b[: max_bytes - total]
        chunks.append(b)
        total += len(b)
    return b"".join(chunks)


def stdlib_files() -> list[Path]:
    """The Python standard library's own .py files, sorted: an offline corpus everywhere."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__"}
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        files.extend(Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py"))
    return files


def text_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    raise DataError(f"data.path: {path} does not exist")


def _check_token_range(arr: np.ndarray, vocab_size: int, name: str) -> None:
    # One pass over the file at start: an id >= vocab would crash the embedding lookup
    # mid-run (on CUDA as an unrecoverable device assert).
    chunk = 1 << 24
    top = 0
    for i in range(0, len(arr), chunk):
        top = max(top, int(arr[i : i + chunk].max()))
    if top >= vocab_size:
        raise DataError(
            f"{name} holds token id {top} but model.vocabSize is {vocab_size}; "
            f"set model.vocabSize to at least {top + 1}"
        )


@dataclass
class Splits:
    train: np.ndarray  # 1-D token ids (uint8 bytes, uint16 or uint32), possibly a memmap
    val: np.ndarray | None
    # Tokenized instruction data: 1 where a token is a loss target, 0 for prompt tokens.
    train_mask: np.ndarray | None = None
    val_mask: np.ndarray | None = None


def load_splits(cfg: DataConfig, vocab_size: int, context_length: int) -> Splits:
    """Load the configured source and split off the validation tail."""
    if cfg.source == "synthetic":
        return Splits(train=np.empty(0, np.uint16), val=None)
    if cfg.source == "tokens":
        splits = _load_token_files(Path(cfg.path or ""), cfg.validation_fraction)
        _check_token_range(splits.train, vocab_size, "training tokens")
        if splits.val is not None:
            _check_token_range(splits.val, vocab_size, "validation tokens")
    else:
        files = stdlib_files() if cfg.source == "stdlib" else text_files(Path(cfg.path or ""))
        raw = read_text_bytes(files, cfg.max_bytes)
        data = np.frombuffer(raw, dtype=np.uint8)
        n_val = int(len(data) * cfg.validation_fraction)
        splits = Splits(train=data[: len(data) - n_val], val=data[len(data) - n_val :] if n_val else None)
    need = context_length + 2
    if len(splits.train) < need:
        raise DataError(
            f"training split has {len(splits.train)} tokens, fewer than model.contextLength + 2 "
            f"({need}); give more data or a shorter context"
        )
    if splits.val is not None and len(splits.val) < need:
        splits.val = None  # too small to hold one sequence: evaluation is skipped
    return splits


def _load_token_files(path: Path, validation_fraction: float) -> Splits:
    """nanoGPT layout: a directory with train.bin (and val.bin), or a single .bin file."""
    if path.is_dir():
        train_path, val_path = path / "train.bin", path / "val.bin"
        if not train_path.exists():
            raise DataError(f"data.path: {path} has no train.bin (nanoGPT layout expected)")
        train = np.memmap(train_path, dtype=np.uint16, mode="r")
        if val_path.exists():
            return Splits(train=train, val=np.memmap(val_path, dtype=np.uint16, mode="r"))
        data = train
    elif path.is_file():
        data = np.memmap(path, dtype=np.uint16, mode="r")
    else:
        raise DataError(f"data.path: {path} does not exist")
    n_val = int(len(data) * validation_fraction)
    return Splits(train=data[: len(data) - n_val], val=data[len(data) - n_val :] if n_val else None)
