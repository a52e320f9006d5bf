"""Training health on the real control plane: NaN rollbacks, divergence, and a hung gang.

Real trainer processes under the chart's operator. The faults are the trainer's own fault
switches (NaN gradients on chosen steps) and a real SIGSTOP of one rank, which leaves its
peer blocked in the gradient all-reduce: a hang only the operator's progress deadline ends.
"""

from __future__ import annotations

import os
import signal

import pytest

from tests.cluster.harness import Cluster
from tests.cluster.training import (
    condition,
    events,
    kill,
    process_of,
    reasons,
    submit,
    training_job,
    wait_finished,
    wait_running,
    wait_status,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(300)]
DIVERGENCE = {"maxConsecutiveNonfiniteSteps": 3, "action": "Rollback", "maxRollbacks": 1}


def _nan_pod(steps: str, until_rollbacks: int | None = None) -> dict:
    env = [{"name": "ADAMW_FAULT_NAN_GRAD_STEPS", "value": steps}]
    if until_rollbacks is not None:
        env.append({"name": "ADAMW_FAULT_NAN_GRAD_UNTIL_ROLLBACKS", "value": str(until_rollbacks)})
    return {"terminationGracePeriodSeconds": 10, "env": env}


def test_a_nan_rollback_is_an_event_and_training_goes_on(operator: Cluster):
    with operator.namespace("nan") as ns:
        # NaN gradients from step 45 until one rollback cures them
        submit(operator, training_job("nan", ns, replicas=1, pod=_nan_pod("45-160", until_rollbacks=1),
                                      trainer={"divergence": DIVERGENCE, "training": {"maxSteps": 160}}))
        st = wait_finished(operator, ns, "nan")
        assert st["phase"] == "Succeeded", st
        assert st["rollbacks"] == 1 and st["restarts"] == 0 and st["step"] == 160, st
        rollback = [e for e in events(operator, ns, "nan") if e["reason"] == "Rollback"]
        assert len(rollback) == 1 and "rollbacks: 1" in rollback[0]["message"], rollback


def test_divergence_with_no_rollback_left_fails_the_job_without_a_restart(operator: Cluster):
    with operator.namespace("div") as ns:
        submit(operator, training_job("div", ns, replicas=1, pod=_nan_pod("25-300"),
                                      trainer={"divergence": {**DIVERGENCE, "maxRollbacks": 0}}))
        st = wait_finished(operator, ns, "div")
        assert st["phase"] == "Failed" and condition(st, "Failed")["reason"] == "Diverged", st
        assert st["restarts"] == 0 and st["lastFailure"]["exitCode"] == 3, st
        assert "Diverged" in reasons(operator, ns, "div")


def test_a_stopped_rank_is_a_hang_and_the_gang_restarts(operator: Cluster):
    with operator.namespace("hang") as ns:
        submit(operator, training_job("hang", ns, progressDeadlineSeconds=10,
                                      trainer={"training": {"maxSteps": 2000}}))
        first = wait_running(operator, ns, "hang", attempt=0, replicas=2)
        # the operator polls rank 0's /status: the step moves
        polled = wait_status(operator, ns, "hang", "step progress",
                             lambda s: s.get("step") and s.get("lastCheckpoint"), timeout=90)
        assert polled["loss"] > 0 and polled["tokensPerSecond"] > 0, polled  # rank 0's report, folded in
        stopped = kill(operator, ns, "hang-worker-1", signal.SIGSTOP)  # frozen, not dead
        try:
            st = wait_status(operator, ns, "hang", "a Hung restart",
                             lambda s: (s.get("lastFailure") or {}).get("reason") == "Hung", timeout=90)
            assert st["restarts"] == 1, st
            assert "no step progress for 10 s" in st["lastFailure"]["message"], st
            wait_running(operator, ns, "hang", attempt=1, replicas=2)
            # the frozen process did not outlive its pod (SIGKILL after the grace period)
            assert all(process_of(operator, p) is None for p in first)
            assert "HungRestart" in reasons(operator, ns, "hang")
        finally:
            if any(process_of(operator, p) == stopped for p in first):
                os.kill(stopped, signal.SIGCONT)
