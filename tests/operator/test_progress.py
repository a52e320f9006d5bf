"""Training progress from rank 0's /status folded into the job status (the pure part; the
polling, the Rollback events and the Hung restart run on the real control plane in
tests/cluster/test_operator_training_health.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from adamw_operator.controller import merge_patch
from adamw_operator.progress import fold_progress
from adamw_operator.status import rfc3339

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_fold_progress_takes_the_trainer_report():
    report = {"step": 120, "maxSteps": 1000, "loss": 2.345678912, "nonfiniteRate": 0.01,
              "tokensPerSecond": 7000.0, "lastStepTimestamp": 1.0,
              "lastCheckpoint": {"step": 100, "loss": 2.4, "time": 1767225600.0},
              "lastGoodCheckpoint": {"step": 100, "loss": 2.4, "time": "2026-01-01T00:00:00Z"},
              "checkpointSaveSeconds": 1.25, "rollbacks": 0}
    patch, events = fold_progress({"step": 100}, report, NOW)
    assert patch["step"] == 120 and patch["lastProgressTime"] == rfc3339(NOW)
    assert patch["loss"] == 2.345679 and patch["nonfiniteRate"] == 0.01
    assert patch["lastCheckpoint"] == {"step": 100, "loss": 2.4, "time": "2026-01-01T00:00:00.000000Z"}
    assert patch["checkpointSaveSeconds"] == 1.25 and events == []
    assert patch["progressAttempt"] == 0  # rank 0 answered in this attempt: hang detection armed


def test_no_new_step_does_not_move_the_hang_clock():
    patch, _ = fold_progress({"step": 120, "loss": 2.0, "attempt": 1, "progressAttempt": 1},
                             {"step": 120, "loss": 2.0}, NOW)
    assert patch == {}


def test_nan_loss_and_rollbacks():
    patch, events = fold_progress({"step": 5, "loss": 2.0, "rollbacks": 0, "lastGoodCheckpoint": {"step": 4}},
                                  {"step": 6, "loss": float("nan"), "rollbacks": 1}, NOW)
    assert patch["loss"] is None and patch["rollbacks"] == 1
    assert [e.reason for e in events] == ["Rollback"] and "step 4" in events[0].message


def test_merge_patch_removes_what_went_away():
    old = {"phase": "Restarting", "restartAfterTime": "t", "lastFailure": {"rank": 1, "exitCode": 1}}
    new = {"phase": "Running", "lastFailure": {"rank": 0}}
    assert merge_patch(old, new) == {"phase": "Running", "restartAfterTime": None,
                                     "lastFailure": {"rank": 0, "exitCode": None}}


@pytest.mark.parametrize(("status", "step"), [
    ({"attempt": 1, "progressAttempt": 0, "step": 139}, 120),  # resumed below the old step
    ({"attempt": 0, "progressAttempt": 0, "step": 1900}, 1000),  # rolled back in-process
])
def test_a_step_going_back_is_progress_not_a_hang(status, step):
    patch, _ = fold_progress(status, {"step": step}, NOW)
    assert patch["lastProgressTime"] == rfc3339(NOW) and patch["step"] == step
