"""The operator's own Prometheus metrics (served on `--metrics-port`, path /metrics).

    adamw_operator_jobs{namespace,phase}                       gauge, jobs by phase
    adamw_operator_restarts_total{namespace,job_name,reason}   gang restarts by reason
    adamw_operator_job_failures_total{namespace,job_name,reason}  jobs that failed, by reason
    adamw_operator_jobs_finished_total{namespace,outcome,reason}  jobs that became terminal, once
                                                               each (the job-success SLI)
    adamw_operator_gpu_seconds_total{namespace,job_name}       GPU-seconds the job's pods held
    adamw_operator_cpu_seconds_total{namespace,job_name}       CPU-core-seconds they held
                                                               (both from status.usage)

`job_name` names the job (one series per job that restarted or failed, as kube-state-metrics
does for Jobs), so alerts can say which job; `job_name` matches the PodMonitor's label.
    adamw_operator_reconcile_errors_total{kind}                reconciles that raised
    adamw_operator_reconcile_duration_seconds                  histogram
    adamw_operator_failure_to_replacement_seconds              histogram: pod failure seen ->
                                                               all replacement pods created,
                                                               restart backoff excluded
"""

from __future__ import annotations

import collections
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .status import PHASES, TERMINAL_PHASES, get_condition

# outcome for a job that Succeeded: its Succeeded condition's reason. A Failed job's outcome is
# Failed, with the Failed condition's reason, except BudgetExceeded (reserved: the GPU-hour
# budget of issue 14), which is an outcome of its own so the within-budget SLI can count it.
SUCCESS_OUTCOMES = ("Succeeded", "TargetReached", "EarlyStopped")
BUDGET_EXCEEDED = "BudgetExceeded"
# (outcome, reason) pairs the operator can produce today, exported as 0 for every namespace it
# sees: increase() cannot see a counter series that is born at 1, so a job's first failure in
# a namespace would be missed by the SLI without them.
KNOWN_OUTCOMES = (
    *((o, o) for o in SUCCESS_OUTCOMES),
    *(("Failed", r) for r in ("InvalidConfig", "Diverged", "RestartLimitExceeded",
                              "PreemptionLimitExceeded", "NoProgress", "DeadlineExceeded")),
    (BUDGET_EXCEEDED, BUDGET_EXCEEDED),
)


def finished_outcome(old: dict[str, Any], new: dict[str, Any]) -> tuple[str, str] | None:
    """(outcome, reason) when a status write moves a job into a terminal phase, else None.

    Pure: compares the status the write started from with the one written. A job already
    terminal before the write (every later reconcile, every reconcile after an operator
    restart) gives None, so each job is counted once, when it finishes.
    """
    phase = new.get("phase")
    if phase not in TERMINAL_PHASES or old.get("phase") in TERMINAL_PHASES:
        return None
    reason = (get_condition(new, phase) or {}).get("reason") or "Unknown"
    if phase == "Succeeded":
        return (reason if reason in SUCCESS_OUTCOMES else "Succeeded"), reason
    return (BUDGET_EXCEEDED if reason == BUDGET_EXCEEDED else "Failed"), reason


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.jobs = Gauge("adamw_operator_jobs", "AdamWTrainingJobs by phase.",
                          ["namespace", "phase"], registry=r)
        self.restarts = Counter("adamw_operator_restarts_total", "Gang restarts by reason.",
                                ["namespace", "job_name", "reason"], registry=r)
        self.failures = Counter("adamw_operator_job_failures_total", "Jobs that failed, by reason.",
                                ["namespace", "job_name", "reason"], registry=r)
        self.reconcile_errors = Counter("adamw_operator_reconcile_errors_total",
                                        "Reconciles that raised, by error kind.", ["kind"], registry=r)
        self.reconcile_seconds = Histogram(
            "adamw_operator_reconcile_duration_seconds", "Time of one reconcile of one job.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=r)
        self.replacement_seconds = Histogram(
            "adamw_operator_failure_to_replacement_seconds",
            "From a worker failure observed to all replacement pods created, backoff excluded.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30), registry=r)
        self.finished = Counter(
            "adamw_operator_jobs_finished_total",
            "Jobs that reached a terminal phase, by outcome (Succeeded, TargetReached, EarlyStopped, "
            "Failed; BudgetExceeded reserved) and the terminal condition's reason.",
            ["namespace", "outcome", "reason"], registry=r)
        self.gpu_seconds = Counter(
            "adamw_operator_gpu_seconds_total",
            "GPU-seconds the job's worker pods held (GPUs x time bound to a node), from status.usage.",
            ["namespace", "job_name"], registry=r)
        self.cpu_seconds = Counter(
            "adamw_operator_cpu_seconds_total",
            "CPU-core-seconds the job's worker pods held (their cpu request), from status.usage.",
            ["namespace", "job_name"], registry=r)
        self._phases: dict[tuple[str, str], str] = {}
        self._namespaces: set[str] = set()

    def charge(self, namespace: str, name: str, old: dict[str, Any], new: dict[str, Any]) -> None:
        """Add what a status write newly charged to `status.usage` (never negative: a counter)."""
        before, after = old.get("usage") or {}, new.get("usage") or {}
        for counter, key in ((self.gpu_seconds, "gpuSeconds"), (self.cpu_seconds, "cpuCoreSeconds")):
            added = (after.get(key) or 0.0) - (before.get(key) or 0.0)
            if added > 0:
                counter.labels(namespace=namespace, job_name=name).inc(added)

    def job_finished(self, namespace: str, outcome: str, reason: str) -> None:
        """Count one job that has just become terminal (see `finished_outcome`)."""
        self._known_namespace(namespace)
        self.finished.labels(namespace=namespace, outcome=outcome, reason=reason).inc()

    def _known_namespace(self, namespace: str) -> None:
        if namespace not in self._namespaces:
            self._namespaces.add(namespace)
            for outcome, reason in KNOWN_OUTCOMES:
                self.finished.labels(namespace=namespace, outcome=outcome, reason=reason)

    def set_phase(self, namespace: str, name: str, phase: str | None) -> None:
        """Track one job's phase; the gauge counts jobs per (namespace, phase)."""
        key = (namespace, name)
        self._known_namespace(namespace)
        if phase is None:
            self._phases.pop(key, None)
        else:
            self._phases[key] = phase
        # Only this job's namespace can have changed: recount it alone (this runs every reconcile).
        counts = collections.Counter(ph for (ns, _), ph in self._phases.items() if ns == namespace)
        for p in PHASES:
            self.jobs.labels(namespace=namespace, phase=p).set(counts[p])
