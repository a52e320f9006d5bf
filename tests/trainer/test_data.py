"""Data sources: batches are a pure function of (seed, step, micro-step, rank)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from adamw_trainer.config import DataConfig
from adamw_trainer.data import BatchSource, DataError, mix_seed, stdlib_files


def source(cfg: DataConfig, **kw) -> BatchSource:
    args = dict(vocab_size=256, context_length=16, batch_size=4, seed=7, device=torch.device("cpu"))
    args.update(kw)
    return BatchSource(cfg, **args)


def test_batches_are_a_pure_function_of_seed_step_micro_rank(tmp_path):
    (tmp_path / "a.txt").write_bytes(bytes(range(256)) * 40)
    cfg = DataConfig(source="text", path=str(tmp_path), validation_fraction=0.1)
    first, again = source(cfg), source(cfg)  # a fresh process would build a fresh source
    x1, y1 = first.train_batch(step=5, micro=1, rank=0)
    x2, y2 = again.train_batch(step=5, micro=1, rank=0)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    # Targets are the inputs shifted by one token.
    assert torch.equal(x1[:, 1:], y1[:, :-1])
    others = [first.train_batch(6, 1, 0), first.train_batch(5, 0, 0), first.train_batch(5, 1, 1)]
    assert all(not torch.equal(x1, o[0]) for o in others)
    assert not torch.equal(x1, source(cfg, seed=8).train_batch(5, 1, 0)[0])


def test_validation_tail_is_held_out(tmp_path):
    # Training bytes are all 'a'..., the held-out tail all 'z': no batch may mix them.
    (tmp_path / "corpus.txt").write_bytes(b"a" * 9000 + b"z" * 1000)
    src = source(DataConfig(source="text", path=str(tmp_path / "corpus.txt"), validation_fraction=0.1))
    for step in range(50):
        assert (src.train_batch(step, 0, 0)[0] == ord("a")).all()
    assert (src.val_batch(0, 0)[0] == ord("z")).all()
    assert torch.equal(src.val_batch(3, 0)[0], src.val_batch(3, 0)[0])


def test_token_files_nanogpt_layout(tmp_path):
    np.arange(5000, dtype=np.uint16).tofile(tmp_path / "train.bin")
    (np.arange(500, dtype=np.uint16) + 60000).tofile(tmp_path / "val.bin")
    src = source(DataConfig(source="tokens", path=str(tmp_path)), vocab_size=65536)
    x, y = src.train_batch(0, 0, 0)
    assert x.dtype == torch.int64 and x.shape == (4, 16)
    assert torch.equal(y, x + 1)  # consecutive ids: next token is always +1
    assert (src.val_batch(0, 0)[0] >= 60000).all()


def test_token_ids_beyond_vocabulary_are_refused_up_front(tmp_path):
    np.full(1000, 300, dtype=np.uint16).tofile(tmp_path / "data.bin")
    with pytest.raises(DataError, match="token id 300.*vocabSize is 256.*at least 301"):
        source(DataConfig(source="tokens", path=str(tmp_path / "data.bin")))


def test_missing_path_and_too_little_data_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        source(DataConfig(source="text", path=str(tmp_path / "nope")))
    (tmp_path / "tiny.txt").write_bytes(b"abc")
    with pytest.raises(DataError, match="contextLength"):
        source(DataConfig(source="text", path=str(tmp_path / "tiny.txt")))


def test_stdlib_corpus_is_available_offline_and_ordered():
    files = stdlib_files()
    assert len(files) > 100
    assert files == stdlib_files()
    src = source(DataConfig(source="stdlib", max_bytes=100_000))
    assert len(src.splits.train) + len(src.splits.val) == 100_000


def test_synthetic_source_is_deterministic_and_in_vocabulary():
    src = source(DataConfig(source="synthetic"), vocab_size=50)
    x, y = src.train_batch(3, 0, 1)
    assert torch.equal(x, src.train_batch(3, 0, 1)[0])
    assert x.max() < 50 and y.min() >= 0
    assert src.has_validation


def test_mix_seed_spreads_neighbouring_inputs():
    seeds = {mix_seed(1, 0, s, 0, r) for s in range(100) for r in range(4)}
    assert len(seeds) == 400
