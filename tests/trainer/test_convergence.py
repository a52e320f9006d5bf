"""Convergence as an outcome: a validation-loss target and early stopping end the run
successfully with their own reason, the best checkpoint is kept and can be named `best`."""

from __future__ import annotations

import json
import math

import pytest
from adamw_trainer.checkpoint.store import CheckpointMeta, CheckpointStore
from adamw_trainer.config import EarlyStoppingConfig, TrainingConfig
from adamw_trainer.convergence import Convergence
from adamw_trainer.exit_codes import ExitReason
from adamw_trainer.finetune import checkpoint_step_dir
from adamw_trainer.models import ModelError

from tests.trainer.trainer_process import json_events, run_trainer, small_config, write_config

# Synthetic data at this learning rate: validation loss ~5.0 at step 10, ~1.7 at step 60.
FAST = {"optimizer": {"lr": 0.01}, "data": {"source": "synthetic", "evalIntervalSteps": 10, "evalBatches": 2}}


def observe_all(tracker: Convergence, losses: list[float]) -> list:
    return [tracker.observe(10 * (i + 1), loss, now=100.0 + i) for i, loss in enumerate(losses)]


def test_target_stops_at_the_first_evaluation_at_or_below_it():
    tracker = Convergence(TrainingConfig(target_validation_loss=2.0), started_at=90.0)
    verdicts = observe_all(tracker, [3.0, 2.5, 2.0])
    assert [v.stop for v in verdicts] == [None, None, ExitReason.TARGET_REACHED]
    assert tracker.target_step == 30 and tracker.target_seconds == 12.0  # from the run's first start
    assert all(v.improved for v in verdicts)


def test_early_stopping_counts_evaluations_without_a_min_delta_improvement():
    cfg = TrainingConfig(early_stopping=EarlyStoppingConfig(patience=2, min_delta=0.1))
    tracker = Convergence(cfg)
    # 2.95 is a new best (kept as the best checkpoint) but not by minDelta: patience runs on.
    verdicts = observe_all(tracker, [3.0, 2.95, math.nan])
    assert [v.improved for v in verdicts] == [True, True, False]
    assert [v.stop for v in verdicts] == [None, None, ExitReason.EARLY_STOPPED]
    assert tracker.best_loss == 2.95 and tracker.best_step == 20

    # Small improvements that add up to minDelta reset the patience (measured from 3.0).
    again = Convergence(cfg)
    stops = [v.stop for v in observe_all(again, [3.0, 2.95, 2.89, 2.88, 2.87])]
    assert stops == [None, None, None, None, ExitReason.EARLY_STOPPED]


def test_convergence_state_survives_a_resume():
    cfg = TrainingConfig(early_stopping=EarlyStoppingConfig(patience=3))
    before = Convergence(cfg, started_at=10.0)
    observe_all(before, [3.0, 3.1])
    after = Convergence(cfg, started_at=500.0)  # a restarted attempt starts its own clock...
    after.load_state_dict(json.loads(json.dumps(before.state_dict())))  # ...then resumes the run's
    assert (after.best_loss, after.best_step, after.evals_without_improvement, after.started_at) == (3.0, 10, 1, 10.0)
    assert after.observe(30, 3.2, now=600.0).stop is None
    assert after.observe(40, 3.2, now=700.0).stop is ExitReason.EARLY_STOPPED


def meta(step: int, val: float | None, finite: bool = True) -> CheckpointMeta:
    return CheckpointMeta(step=step, loss=2.0, finite=finite, time=1000.0 + step, config_hash="h",
                          world_size=1, tokens_seen=0, validation_loss=val)


def write(store: CheckpointStore, step: int, val: float | None, finite: bool = True) -> None:
    store.write(meta(step, val, finite), {"model.pt": lambda f: f.write(b"w" * step)})
    store.prune()


def test_keep_latest_never_deletes_the_best_checkpoint_and_best_names_it(tmp_path):
    store = CheckpointStore(tmp_path, keep_latest=2)
    for step, val in ((10, 3.0), (20, 1.5), (30, 2.0), (40, None), (50, 2.5)):
        write(store, step, val)
    assert store.steps() == [20, 40, 50]  # 20 is the best; 40 and 50 the newest two
    assert store.best().step == 20
    assert checkpoint_step_dir(tmp_path / "best") == tmp_path / "step-20"  # initFrom / export
    write(store, 60, 1.5)  # as good as the best and newer: the newer wins, 20 may go
    assert store.steps() == [50, 60] and store.best().step == 60
    write(store, 70, 0.5, finite=False)  # a non-finite checkpoint is never the best
    assert store.best().step == 60


def test_best_is_refused_clearly_where_no_checkpoint_was_evaluated(tmp_path):
    store = CheckpointStore(tmp_path)
    write(store, 10, None)
    with pytest.raises(ModelError, match="no best checkpoint"):
        checkpoint_step_dir(tmp_path / "best")


def test_reaching_the_target_saves_and_exits_0_with_reason_target_reached(tmp_path):
    cfg = small_config(tmp_path, **FAST, training={"maxSteps": 300, "targetValidationLoss": 2.2})
    done = run_trainer(write_config(tmp_path, cfg))
    assert done.returncode == 0, done.stderr[-2000:]
    msg = json.loads((tmp_path / "termination-log").read_text())
    assert msg["reason"] == "TargetReached" and msg["exitCode"] == 0
    assert msg["step"] < 300 and msg["validationLoss"] <= 2.2 and msg["bestCheckpointStep"] == msg["step"]
    store = CheckpointStore(tmp_path / "checkpoints")
    best = store.best()
    assert best.step == msg["step"] and best.meta.validation_loss == pytest.approx(msg["validationLoss"])
    reached = json_events(done.stdout, "target-reached")
    assert len(reached) == 1 and reached[0]["secondsSinceStart"] > 0
    assert json_events(done.stdout, "done")[0]["reason"] == "TargetReached"


def test_early_stopping_exits_0_with_reason_early_stopped_keeping_the_best(tmp_path):
    # At a learning rate of 1e-9 nothing improves by minDelta: patience runs out.
    groups = {**FAST, "optimizer": {"lr": 1e-9}, "checkpoint": {"keepLatest": 1}}
    cfg = small_config(tmp_path, **groups,
                       training={"maxSteps": 300, "earlyStopping": {"patience": 2, "minDelta": 0.01}})
    done = run_trainer(write_config(tmp_path, cfg))
    assert done.returncode == 0, done.stderr[-2000:]
    msg = json.loads((tmp_path / "termination-log").read_text())
    assert msg["reason"] == "EarlyStopped" and msg["step"] < 300
    evals = json_events(done.stdout, "eval")
    best = min(evals, key=lambda e: (e["validationLoss"], -e["step"]))
    assert msg["bestCheckpointStep"] == best["step"]
    assert CheckpointStore(tmp_path / "checkpoints").best().step == best["step"]  # kept despite keepLatest 1
    from adamw_trainer.export import export

    written = export(tmp_path / "checkpoints" / "best", tmp_path / "exported")  # adamw-train export
    assert written["checkpoint"] == str(tmp_path / "checkpoints" / f"step-{best['step']}")
