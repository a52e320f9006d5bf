"""What a checkpoint holds, the async writer, and loading that never executes code."""

from __future__ import annotations

import errno
import os
import random
import threading

import numpy as np
import pytest
import torch
from adamw_trainer.checkpoint import payload
from adamw_trainer.checkpoint import store as store_module
from adamw_trainer.checkpoint.async_writer import CheckpointWriter
from adamw_trainer.checkpoint.store import (
    CheckpointMeta,
    CheckpointStore,
    CorruptCheckpointError,
    UnsafeCheckpointError,
)

from tests.trainer.trainer_process import RunsCode


def tiny_model_and_optimizer(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    return model, opt


def train_steps(model, opt, n: int, gen: torch.Generator) -> None:
    for _ in range(n):
        x = torch.randn(4, 8, generator=gen)
        model(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def meta(step: int) -> CheckpointMeta:
    return CheckpointMeta(step=step, loss=0.5, finite=True, time=0.0, config_hash="h",
                          world_size=1, tokens_seen=step)


def test_save_load_restores_model_optimizer_and_rng_exactly(tmp_path):
    model, opt = tiny_model_and_optimizer()
    train_steps(model, opt, 3, torch.Generator().manual_seed(1))
    random.seed(5)
    np.random.seed(6)
    torch.manual_seed(7)
    store = CheckpointStore(tmp_path)
    info = store.write(meta(3), payload.capture(model, opt, {"step": 3, "lr_scale": 0.5}).writers())
    expected_draws = (random.random(), np.random.rand(), torch.rand(3))
    train_steps(model, opt, 2, torch.Generator().manual_seed(1))  # move away from the saved state

    model2, opt2 = tiny_model_and_optimizer(seed=99)
    state = payload.restore(payload.load(store.verify(info.step)), model2, opt2)
    assert state == {"step": 3, "lr_scale": 0.5}
    assert (random.random(), np.random.rand()) == expected_draws[:2]
    assert torch.equal(torch.rand(3), expected_draws[2])
    # Continuing from the restored state matches continuing from the original exactly.
    model3, opt3 = tiny_model_and_optimizer(seed=42)
    payload.restore(payload.load(info), model3, opt3)
    train_steps(model2, opt2, 2, torch.Generator().manual_seed(9))
    train_steps(model3, opt3, 2, torch.Generator().manual_seed(9))
    for a, b in zip(model2.state_dict().values(), model3.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert int(opt2.state_dict()["state"][0]["step"]) == 5


def test_snapshot_is_a_copy_unaffected_by_later_steps(tmp_path):
    model, opt = tiny_model_and_optimizer()
    train_steps(model, opt, 1, torch.Generator().manual_seed(1))
    snap = payload.HostSnapshot()
    captured = payload.capture(model, opt, {"step": 1}, snap)
    frozen = {k: v.clone() for k, v in captured.model.items()}
    train_steps(model, opt, 3, torch.Generator().manual_seed(2))
    for k, v in captured.model.items():
        assert torch.equal(v, frozen[k])
    assert snap.nbytes > 0
    again = payload.capture(model, opt, {"step": 4}, snap)  # buffers are reused, not reallocated
    assert again.model["0.weight"].data_ptr() == captured.model["0.weight"].data_ptr()


def test_planted_malicious_pickle_is_refused_and_never_runs(tmp_path):
    model, opt = tiny_model_and_optimizer()
    store = CheckpointStore(tmp_path / "ckpt")
    marker = tmp_path / "pwned"
    evil = {"0.weight": RunsCode(marker)}
    good = payload.capture(model, opt, {"step": 1}).writers()
    # The attacker writes a complete checkpoint with a valid manifest: checksums cannot help.
    files = {**good, payload.MODEL_FILE: lambda f: torch.save(evil, f)}
    info = store.write(meta(1), files)
    assert store.verify(1).verified
    with pytest.raises(UnsafeCheckpointError, match=r"model\.pt: refused to load.*could execute code.*GLOBAL posix.system"):
        payload.load(info)
    assert not marker.exists(), "loading the checkpoint executed code from it"
    # The planted file really is dangerous: an unguarded load runs it.
    torch.load(info.path / payload.MODEL_FILE, weights_only=False)
    assert marker.exists()


def test_unreadable_file_is_corrupt_not_a_crash(tmp_path):
    model, opt = tiny_model_and_optimizer()
    store = CheckpointStore(tmp_path)
    files = {**payload.capture(model, opt, {}).writers(), payload.OPTIMIZER_FILE: lambda f: f.write(b"PK\x03\x04junk")}
    info = store.write(meta(2), files)
    with pytest.raises(CorruptCheckpointError, match="optimizer.pt: cannot be read"):
        payload.load(info)


def test_checkpoint_from_a_different_model_gives_a_clear_error(tmp_path):
    model, opt = tiny_model_and_optimizer()
    info = CheckpointStore(tmp_path).write(meta(1), payload.capture(model, opt, {}).writers())
    other = torch.nn.Linear(8, 4)
    with pytest.raises(payload.CheckpointError, match="does not fit the model"):
        payload.restore(payload.load(info), other, torch.optim.AdamW(other.parameters()))


def test_async_writer_returns_before_the_write_and_reports_it(tmp_path, monkeypatch):
    model, opt = tiny_model_and_optimizer()
    store = CheckpointStore(tmp_path, keep_latest=2)
    results = []
    release = threading.Event()
    real_write = store.write

    def slow_write(m, files):
        release.wait(10)  # hold the background write until the training thread has moved on
        return real_write(m, files)

    monkeypatch.setattr(store, "write", slow_write)
    writer = CheckpointWriter(store, async_save=True, on_result=results.append)
    assert writer.save(meta(1), lambda: payload.capture(model, opt, {"step": 1})) is None
    assert writer.in_flight and store.steps() == []
    train_steps(model, opt, 1, torch.Generator().manual_seed(3))  # training goes on meanwhile
    release.set()
    assert writer.wait(10)
    assert [r.step for r in results] == [1] and results[0].ok
    assert results[0].duration_seconds >= results[0].snapshot_seconds > 0
    restored, _ = tiny_model_and_optimizer(seed=5)
    payload.restore(payload.load(store.verify(1)), restored, torch.optim.AdamW(restored.parameters(), fused=True))
    assert not torch.equal(restored[0].weight, model[0].weight)  # the snapshot predates the step


def test_failed_write_is_reported_not_raised_and_next_save_works(tmp_path, monkeypatch):
    """Disk full injected at the open(2) layer; the real ENOSPC/EFBIG are in test_checkpoint_store."""
    model, opt = tiny_model_and_optimizer()
    store = CheckpointStore(tmp_path)
    results = []
    writer = CheckpointWriter(store, async_save=True, on_result=results.append)
    real_open = open
    full = True

    def open_disk_full(path, mode="r", *a, **kw):
        if full and "x" in mode:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_open(path, mode, *a, **kw)

    monkeypatch.setattr(store_module, "open", open_disk_full, raising=False)
    writer.save(meta(1), lambda: payload.capture(model, opt, {}))
    writer.wait()
    full = False
    writer.save(meta(2), lambda: payload.capture(model, opt, {}))
    writer.wait()
    assert [(r.step, r.ok) for r in results] == [(1, False), (2, True)]
    assert "No space left on device" in results[0].error
    assert store.steps() == [2] and sorted(os.listdir(tmp_path)) == ["step-2"]


def test_save_within_gives_up_when_the_budget_runs_out(tmp_path, monkeypatch):
    model, opt = tiny_model_and_optimizer()
    store = CheckpointStore(tmp_path)
    release = threading.Event()
    real_write = store.write
    monkeypatch.setattr(store, "write", lambda m, f: (release.wait(10), real_write(m, f))[1])
    writer = CheckpointWriter(store, async_save=False)
    assert writer.save_within(meta(4), lambda: payload.capture(model, opt, {}), timeout=0.2) is None
    assert store.steps() == []
    release.set()
    writer.wait(10)
    result = writer.save_within(meta(5), lambda: payload.capture(model, opt, {}), timeout=10)
    assert result is not None and result.ok and result.step == 5
