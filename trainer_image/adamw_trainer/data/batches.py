"""Batches: a pure function of (seed, step, micro-step, rank), for every source.

There is no iterator state, so a run resumed at step N sees exactly the batches an
uninterrupted run would. Validation batches depend only on (seed, batch index, rank),
so every evaluation of a run uses the same held-out sequences and losses compare over
time. Targets `y` are the inputs shifted by one; a target that is not to be learned (a
prompt token of instruction data) is -100, which cross-entropy ignores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import TOKENIZED_SOURCES, DataConfig
from ..progress import RunLog
from .cache import TokenCache, open_token_cache
from .sources import DataError, Splits, load_splits, mix_seed

IGNORE_INDEX = -100  # F.cross_entropy's default ignore_index
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "adamw-trainer" / "token-cache"


class BatchSource:
    """Random windows of the corpus; the window offsets come from a seed per batch.

    Byte, token-file and synthetic sources draw windows at any offset, as before. The
    tokenized sources (`jsonl`, `parquet`, `hfDisk`) draw whole packed blocks: block b is
    tokens [b*T, b*T + T] of the EOS-joined stream (T = contextLength; one token of
    overlap so every token is a target once).
    """

    def __init__(
        self,
        cfg: DataConfig,
        *,
        vocab_size: int,
        context_length: int,
        batch_size: int,
        seed: int,
        device: torch.device,
        cache_dir: Path | str | None = None,
        log: RunLog | None = None,
    ):
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.t = context_length
        self.b = batch_size
        self.seed = seed
        self.device = device
        self.cache: TokenCache | None = None
        self._train_blocks: np.ndarray | None = None  # block indices to draw from (None: all)
        self._val_blocks: np.ndarray | None = None
        if cfg.source in TOKENIZED_SOURCES:
            where = Path(cfg.cache_dir or cache_dir or DEFAULT_CACHE_DIR)
            self.cache = open_token_cache(cfg, cache_dir=where, model_vocab=vocab_size, log=log)
            c = self.cache
            s = self.splits = Splits(train=c.train, val=c.val, train_mask=c.train_mask, val_mask=c.val_mask)
            if len(self.splits.train) < context_length + 1:
                raise DataError(
                    f"the training documents hold {len(self.splits.train)} tokens, fewer than one "
                    f"block of model.contextLength + 1 ({context_length + 1}); give more data or a "
                    "shorter context"
                )
            if self.splits.val is not None and len(self.splits.val) < context_length + 1:
                self.splits.val = self.splits.val_mask = None  # too small for a block: no evaluation
            # Instruction data: a block whose targets are all prompt tokens carries no loss (a
            # batch of only such blocks would average over nothing: NaN). Draw only the others.
            self._train_blocks = _learnable_blocks(s.train_mask, context_length)
            self._val_blocks = _learnable_blocks(s.val_mask, context_length) if s.val is not None else None
            if self._train_blocks is not None and len(self._train_blocks) == 0:
                raise DataError("no training block of model.contextLength tokens holds a completion "
                                "token (data.completionField): the prompts fill whole blocks; raise "
                                "model.contextLength or shorten the prompts")
            if self._val_blocks is not None and len(self._val_blocks) == 0:
                s.val = s.val_mask = self._val_blocks = None
        else:
            self.splits = load_splits(cfg, vocab_size, context_length)
        self._window = np.arange(context_length + 1)

    @property
    def has_validation(self) -> bool:
        return self.cfg.source == "synthetic" or self.splits.val is not None

    def train_batch(self, step: int, micro: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and next-token targets for one micro-batch of optimizer step `step`."""
        s = self.splits
        return self._batch(s.train, s.train_mask, self._train_blocks, mix_seed(self.seed, 0, step, micro, rank))

    def val_batch(self, index: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.splits
        return self._batch(s.val, s.val_mask, self._val_blocks, mix_seed(self.seed, 1, index, rank))

    def _batch(
        self, data: np.ndarray | None, mask: np.ndarray | None, blocks: np.ndarray | None, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.Generator(np.random.PCG64(seed))
        if self.cfg.source == "synthetic":
            # Arithmetic sequences with a random start and stride per row: learnable, so a
            # smoke test can see the loss fall, and still a pure function of the seed.
            start = rng.integers(0, self.vocab_size, size=(self.b, 1))
            stride = rng.integers(1, 4, size=(self.b, 1))
            xy = (start + stride * self._window) % self.vocab_size
        else:
            assert data is not None
            if self.cache is not None:
                if blocks is None:
                    starts = rng.integers(0, (len(data) - 1) // self.t, size=self.b) * self.t
                else:
                    starts = blocks[rng.integers(0, len(blocks), size=self.b)] * self.t
            else:
                starts = rng.integers(0, len(data) - self.t - 1, size=self.b)
            idx = starts[:, None] + self._window
            xy = data[idx].astype(np.int64)
            if mask is not None:
                # Target j is token j + 1 of the window: learned only where the mask says so.
                xy = np.concatenate([xy[:, :-1], np.where(mask[idx[:, 1:]] != 0, xy[:, 1:], IGNORE_INDEX)], axis=1)
                return self._to_device(torch.from_numpy(xy), split=self.t)
        return self._to_device(torch.from_numpy(xy), split=None)

    def _to_device(self, xy_t: torch.Tensor, split: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.device.type == "cuda":
            xy_t = xy_t.pin_memory().to(self.device, non_blocking=True)
        if split is not None:  # inputs and masked targets side by side: (b, 2t)
            return xy_t[:, :split], xy_t[:, split:]
        return xy_t[:, :-1], xy_t[:, 1:]


def _learnable_blocks(mask: np.ndarray | None, t: int, chunk: int = 1 << 14) -> np.ndarray | None:
    """Indices of the blocks with at least one target to learn (None: every block counts).

    Block b's targets are tokens b*t + 1 .. b*t + t. One pass over the mask, in chunks of
    blocks, so a memory-mapped mask is never copied whole.
    """
    if mask is None:
        return None
    n = (len(mask) - 1) // t
    keep = []
    for first in range(0, n, chunk):
        last = min(n, first + chunk)
        targets = np.asarray(mask[first * t + 1 : last * t + 1]).reshape(last - first, t)
        keep.append(np.flatnonzero(targets.any(axis=1)) + first)
    return np.concatenate(keep) if keep else np.empty(0, np.int64)
