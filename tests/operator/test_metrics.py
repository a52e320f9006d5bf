"""adamw_operator_jobs_finished_total: each job counted once, when it first becomes terminal."""

from __future__ import annotations

import pytest
from adamw_operator.metrics import OperatorMetrics, finished_outcome
from prometheus_client import generate_latest


def status(phase, condition=None, reason=None):
    st = {"phase": phase, "conditions": []}
    if condition:
        st["conditions"].append({"type": condition, "status": "True", "reason": reason, "message": ""})
    return st


def finished(metrics, namespace, outcome, reason):
    return metrics.registry.get_sample_value(
        "adamw_operator_jobs_finished_total", {"namespace": namespace, "outcome": outcome, "reason": reason})


def reconcile(metrics, namespace, old, new):
    """What the controller does after a status write: count the transition, track the phase."""
    if (outcome := finished_outcome(old, new)) is not None:
        metrics.job_finished(namespace, *outcome)
    metrics.set_phase(namespace, "gpt", new.get("phase"))


@pytest.mark.parametrize(("new", "expected"), [
    (status("Succeeded", "Succeeded", "Succeeded"), ("Succeeded", "Succeeded")),
    (status("Succeeded", "Succeeded", "TargetReached"), ("TargetReached", "TargetReached")),
    (status("Succeeded", "Succeeded", "EarlyStopped"), ("EarlyStopped", "EarlyStopped")),
    (status("Failed", "Failed", "RestartLimitExceeded"), ("Failed", "RestartLimitExceeded")),
    (status("Failed", "Failed", "Diverged"), ("Failed", "Diverged")),
    (status("Failed", "Failed", "BudgetExceeded"), ("BudgetExceeded", "BudgetExceeded")),
    (status("Failed"), ("Failed", "Unknown")),
])
def test_outcome_comes_from_the_terminal_condition(new, expected):
    assert finished_outcome(status("Running"), new) == expected


@pytest.mark.parametrize(("old", "new"), [
    (status("Running"), status("Running")),
    (status("Pending"), status("Restarting")),
    (status("Failed", "Failed", "NoProgress"), status("Failed", "Failed", "NoProgress")),
    (status("Succeeded", "Succeeded", "TargetReached"), status("Succeeded", "Succeeded", "TargetReached")),
    (status("Succeeded", "Succeeded", "Succeeded"), status("Failed", "Failed", "Diverged")),
])
def test_no_outcome_unless_the_write_makes_the_job_terminal(old, new):
    assert finished_outcome(old, new) is None


def test_a_job_is_counted_once_across_reconciles_and_operator_restarts():
    metrics = OperatorMetrics()
    history = [status("Pending"), status("Running"), status("Restarting"), status("Running"),
               status("Succeeded", "Succeeded", "TargetReached")]
    for old, new in zip(history, history[1:], strict=False):
        reconcile(metrics, "ml", old, new)
    done = history[-1]
    for _ in range(5):  # resyncs of the finished job
        reconcile(metrics, "ml", done, done)
    assert finished(metrics, "ml", "TargetReached", "TargetReached") == 1
    assert finished(metrics, "ml", "Succeeded", "Succeeded") == 0

    # A restarted operator starts from 0 and reads the stored status: already terminal.
    restarted = OperatorMetrics()
    reconcile(restarted, "ml", done, done)
    assert finished(restarted, "ml", "TargetReached", "TargetReached") == 0


def test_known_outcomes_are_exported_as_zero_once_a_namespace_is_seen():
    """increase() misses a series born at 1, so a namespace's first failure needs a 0 before it."""
    metrics = OperatorMetrics()
    metrics.set_phase("team-a", "gpt", "Running")
    text = generate_latest(metrics.registry).decode()
    for outcome, reason in [("Succeeded", "Succeeded"), ("TargetReached", "TargetReached"),
                            ("EarlyStopped", "EarlyStopped"), ("Failed", "RestartLimitExceeded"),
                            ("Failed", "NoProgress"), ("Failed", "InvalidConfig"),
                            ("BudgetExceeded", "BudgetExceeded")]:
        assert (f'adamw_operator_jobs_finished_total{{namespace="team-a",outcome="{outcome}",'
                f'reason="{reason}"}} 0.0') in text
    assert 'namespace="team-b"' not in text
    metrics.job_finished("team-b", "Failed", "Diverged")
    assert finished(metrics, "team-b", "Failed", "Diverged") == 1
    assert finished(metrics, "team-b", "Failed", "NoProgress") == 0


def test_gpu_and_cpu_seconds_count_what_each_status_write_newly_charged():
    m = OperatorMetrics()

    def gpu():
        return m.registry.get_sample_value("adamw_operator_gpu_seconds_total",
                                           {"namespace": "ns", "job_name": "j"}) or 0.0

    m.charge("ns", "j", {}, {"usage": {"gpuSeconds": 0.0, "cpuCoreSeconds": 0.0}})
    m.charge("ns", "j", {"usage": {"gpuSeconds": 0.0}}, {"usage": {"gpuSeconds": 360.0, "cpuCoreSeconds": 90.0}})
    m.charge("ns", "j", {"usage": {"gpuSeconds": 360.0}}, {"usage": {"gpuSeconds": 360.0}})  # nothing new
    m.charge("ns", "j", {"usage": {"gpuSeconds": 360.0}}, {"usage": {"gpuSeconds": 480.0}})
    assert gpu() == 480.0
    assert m.registry.get_sample_value("adamw_operator_cpu_seconds_total", {"namespace": "ns", "job_name": "j"}) == 90.0
