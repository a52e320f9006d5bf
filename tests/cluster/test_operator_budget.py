"""A CPU-core-hour budget on the real control plane: spent, the worker saves and the job fails
as BudgetExceeded; raised, it resumes from that checkpoint and finishes."""

from __future__ import annotations

import pytest

from tests.cluster.harness import Cluster
from tests.cluster.training import (
    condition,
    log_events,
    reasons,
    submit,
    training_job,
    wait_finished,
    wait_status,
    worker_logs,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(300)]


def test_a_spent_budget_saves_and_fails_and_raising_it_resumes(operator: Cluster):
    with operator.namespace("budget") as ns:
        # one pod of 1 core (no cpu request): 0.003 core-hours is 10.8 s on its node
        submit(operator, training_job("budget", ns, replicas=1, budget={"maxCPUCoreHours": 0.003},
                                      trainer={"training": {"maxSteps": 3000}}))
        st = wait_status(operator, ns, "budget", "BudgetExceeded",
                         lambda s: condition(s, "Failed").get("reason") == "BudgetExceeded", timeout=120)
        assert st["phase"] == "Failed" and 10.8 <= st["usage"]["cpuCoreSeconds"] < 30, st
        assert "maxCPUCoreHours" in condition(st, "Failed")["message"]
        assert st["restarts"] == 0 and st["preemptions"] == 0
        said = reasons(operator, ns, "budget")
        assert said.count("BudgetWarning") == 1 and said.count("BudgetExceeded") == 1, said
        operator.kubectl("patch", "awj", "budget", "-n", ns, "--type=merge",
                         "-p", '{"spec":{"budget":{"maxCPUCoreHours":1}}}')
        st = wait_finished(operator, ns, "budget", timeout=240)
        assert st["phase"] == "Succeeded" and st["attempt"] == 1 and st["preemptions"] == 0, st
        assert "BudgetRaised" in reasons(operator, ns, "budget")
        # the stopped worker saved on SIGTERM, and the next attempt resumed from that save
        logs = worker_logs(operator, ns, "budget-worker-0")
        saved = [e["step"] for log in logs.values() for e in log_events(log, "checkpoint")]
        resumed = [e["step"] for log in logs.values() for e in log_events(log, "resumed")]
        assert resumed and resumed[0] in saved and resumed[0] > 0, logs.keys()
