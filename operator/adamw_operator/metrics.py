"""The operator's own Prometheus metrics (served on `--metrics-port`, path /metrics).

    adamw_operator_jobs{namespace,phase}                       gauge, jobs by phase
    adamw_operator_restarts_total{namespace,job_name,reason}   gang restarts by reason
    adamw_operator_job_failures_total{namespace,job_name,reason}  jobs that failed, by reason

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

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .status import PHASES


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
        self._phases: dict[tuple[str, str], str] = {}

    def set_phase(self, namespace: str, name: str, phase: str | None) -> None:
        """Track one job's phase; the gauge counts jobs per (namespace, phase)."""
        key = (namespace, name)
        if phase is None:
            self._phases.pop(key, None)
        else:
            self._phases[key] = phase
        # Only this job's namespace can have changed: recount it alone (this runs every reconcile).
        counts = collections.Counter(ph for (ns, _), ph in self._phases.items() if ns == namespace)
        for p in PHASES:
            self.jobs.labels(namespace=namespace, phase=p).set(counts[p])
