"""When the trainer saves, and what it reports: the manager on its own (one process)."""

from __future__ import annotations

import time

import torch
from adamw_trainer.checkpoint.agreement import Agreement
from adamw_trainer.checkpoint.manager import CheckpointManager
from adamw_trainer.checkpoint.metrics import FaultToleranceMetrics, restart_count
from adamw_trainer.checkpoint.payload import capture
from adamw_trainer.checkpoint.store import CheckpointMeta
from adamw_trainer.config import CheckpointConfig
from prometheus_client import CollectorRegistry


def manager(tmp_path, **cfg):
    status, events = {}, []
    registry = CollectorRegistry()
    m = CheckpointManager(
        CheckpointConfig(dir=str(tmp_path), **cfg), rank=0, world_size=1, agreement=Agreement(1),
        metrics=FaultToleranceMetrics(registry, 0), status=status.update,
        event=lambda name, **f: events.append((name, f)),
    )
    return m, status, events, registry


def meta(step: int, finite: bool = True) -> CheckpointMeta:
    return CheckpointMeta(step=step, loss=2.0 if finite else float("nan"), finite=finite, time=0.0,
                          config_hash="h", world_size=1, tokens_seen=0)


def state():
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters(), fused=True)
    return lambda: capture(model, opt, {"step": 0})


def test_due_by_steps_and_by_seconds(tmp_path):
    m, *_ = manager(tmp_path, interval_steps=10, interval_seconds=0.0)
    assert [s for s in range(1, 31) if m.due(s, max_steps=30)] == [10, 20]  # the final save is separate
    m, *_ = manager(tmp_path, interval_steps=0, interval_seconds=0.05)
    assert not m.due(1, max_steps=100)
    time.sleep(0.06)
    assert m.due(2, max_steps=100)


def test_saves_publish_last_and_last_good_checkpoint_and_save_time(tmp_path):
    m, status, events, registry = manager(tmp_path, async_save=True)
    m.save(meta(10), state())
    m.close()
    m.save(meta(20, finite=False), state())
    m.close()
    assert status["lastCheckpoint"]["step"] == 20 and status["lastCheckpoint"]["loss"] is None
    assert status["lastGoodCheckpoint"] == {"step": 10, "loss": 2.0, "time": "1970-01-01T00:00:00Z"}
    assert status["checkpointSaveSeconds"] > 0
    assert registry.get_sample_value("adamw_checkpoint_saves_total", {"rank": "0"}) == 2
    assert registry.get_sample_value("adamw_checkpoint_step", {"rank": "0"}) == 20
    assert registry.get_sample_value("adamw_checkpoint_save_duration_seconds_count", {"rank": "0"}) == 2
    assert [name for name, _ in events] == ["checkpoint", "checkpoint"]


def test_preemption_save_counts_a_checkpoint_already_written_for_this_step(tmp_path):
    m, *_ = manager(tmp_path)
    m.save(meta(5), state())
    saved, detail = m.save_for_preemption(meta(5), state(), budget_seconds=10)
    assert saved and "already saved" in detail
    saved, detail = m.save_for_preemption(meta(6), state(), budget_seconds=10)
    assert saved and "step-6 saved in" in detail
    assert m.store.steps() == [5, 6]


def test_restart_count_comes_from_the_operator_env():
    assert restart_count({"ADAMW_RESTART_COUNT": "3"}) == 3
    assert restart_count({}) == 0
    assert restart_count({"ADAMW_RESTART_COUNT": "many"}) == 0
