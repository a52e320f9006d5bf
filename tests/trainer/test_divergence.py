"""Divergence end to end: a real run driven into NaN rolls back, lowers the LR, and exits 3."""

from __future__ import annotations

import json

import pytest
import torch
from adamw_trainer.checkpoint.store import CheckpointStore
from adamw_trainer.config import DivergenceConfig
from adamw_trainer.divergence import Action, DivergencePolicy, NanGradFault

from tests.trainer.trainer_process import json_events, run_trainer, small_config, write_config


def policy(**kw) -> DivergencePolicy:
    return DivergencePolicy(DivergenceConfig(**{"max_consecutive_nonfinite_steps": 3, **kw}))


def test_policy_tolerates_the_configured_streak():
    assert policy().decide(step=10, longest_streak=3, last_good_step=5).action is Action.CONTINUE


def test_policy_rolls_back_with_lower_lr_until_the_limit_then_fails():
    p = policy(lr_factor=0.5, max_rollbacks=2)
    first = p.decide(step=10, longest_streak=4, last_good_step=5)
    assert first.action is Action.ROLLBACK and p.lr_scale == 0.5 and p.rollbacks == 1
    assert "rollback 1/2 to step 5" in first.message
    assert p.decide(step=10, longest_streak=9, last_good_step=5).action is Action.ROLLBACK
    assert p.lr_scale == 0.25
    final = p.decide(step=10, longest_streak=4, last_good_step=5)
    assert final.action is Action.FAIL and "divergence.maxRollbacks" in final.message
    assert p.rollbacks == 2


def test_policy_fail_action_and_missing_checkpoint_fail_with_reason():
    fail = policy(action="Fail").decide(step=7, longest_streak=4, last_good_step=5)
    assert fail.action is Action.FAIL and "divergence.action is Fail" in fail.message
    nothing = policy().decide(step=7, longest_streak=4, last_good_step=None)
    assert nothing.action is Action.FAIL and "no known-good checkpoint" in nothing.message


def test_fault_injection_spec_is_validated():
    f = NanGradFault.from_env({"ADAMW_FAULT_NAN_GRAD_STEPS": "3-5,9", "ADAMW_FAULT_NAN_GRAD_UNTIL_ROLLBACKS": "1"})
    assert [s for s in range(12) if f.active(s, rollbacks=0)] == [3, 4, 5, 9]
    assert not f.active(4, rollbacks=1)
    assert NanGradFault.from_env({}) is None
    with pytest.raises(ValueError, match="ADAMW_FAULT_NAN_GRAD_STEPS"):
        NanGradFault.from_env({"ADAMW_FAULT_NAN_GRAD_STEPS": "soon"})


def diverging_run(tmp_path, *, until_rollbacks: str | None = None):
    cfg = small_config(
        tmp_path,
        training={"maxSteps": 60, "logIntervalSteps": 10},
        schedule={"warmupSteps": 0, "minLrRatio": 1.0},  # constant LR: the scale is all that changes
        checkpoint={"intervalSteps": 5, "keepLatest": 1},
        divergence={"maxConsecutiveNonfiniteSteps": 3, "action": "Rollback", "lrFactor": 0.5, "maxRollbacks": 2},
    )
    # Steps 23..60 get a NaN loss: step-25 is saved mid-streak (not known-good), and the
    # streak is noticed at the step-30 read.
    env = {"ADAMW_FAULT_NAN_GRAD_STEPS": "22-59"}
    if until_rollbacks:
        env["ADAMW_FAULT_NAN_GRAD_UNTIL_ROLLBACKS"] = until_rollbacks
    proc = run_trainer(write_config(tmp_path, cfg), **env)
    return proc, json_events(proc.stdout)


@pytest.mark.slow
def test_real_run_rolls_back_lowers_lr_and_finally_exits_diverged(tmp_path):
    proc, events = diverging_run(tmp_path)
    assert proc.returncode == 3, proc.stderr[-2000:]
    rollbacks = [e for e in events if e["event"] == "rollback"]
    assert [(r["fromStep"], r["toStep"], r["rollbacks"], r["lrScale"]) for r in rollbacks] == [
        (30, 20, 1, 0.5),
        (30, 20, 2, 0.25),
    ]
    lr_at_30 = [e["lr"] for e in events if e["event"] == "train" and e["step"] == 30]
    assert lr_at_30 == pytest.approx([1e-3, 5e-4, 2.5e-4])  # the same steps, each pass at a lower LR
    saved_25 = [e["knownGood"] for e in events if e["event"] == "checkpoint" and e["step"] == 25]
    assert saved_25 == [False, False, False]
    message = json.loads((tmp_path / "termination-log").read_text())
    assert message["reason"] == "Diverged" and message["exitCode"] == 3
    assert message["lastGoodCheckpointStep"] == 20
    assert "maxRollbacks" in message["message"] and "consecutive non-finite" in message["message"]
    # keepLatest is 1, yet the known-good step-20 survived the non-finite step-25 saved after it.
    store = CheckpointStore(tmp_path / "checkpoints", keep_latest=1)
    assert store.steps() == [20, 25] and store.last_good().step == 20
    assert not store.verify(25).known_good


@pytest.mark.slow
def test_rollback_recovers_and_training_finishes_at_the_lower_lr(tmp_path):
    proc, events = diverging_run(tmp_path, until_rollbacks="1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [e["toStep"] for e in events if e["event"] == "rollback"] == [20]
    last = [e for e in events if e["event"] == "train"][-1]
    assert last["step"] == 60 and last["lr"] == pytest.approx(5e-4) and last["nonfiniteSteps"] == 0
    final = CheckpointStore(tmp_path / "checkpoints").verify(60)
    state = torch.load(final.path / "train_state.pt", weights_only=True)
    assert state["divergence"] == {"rollbacks": 1, "lr_scale": 0.5}  # survives a restart
    assert final.known_good
    # The diverged step-25 of the abandoned timeline was discarded at the rollback and
    # saved again, good, on the way back up.
    assert [e["knownGood"] for e in events if e["event"] == "checkpoint" and e["step"] == 25] == [False, True]
