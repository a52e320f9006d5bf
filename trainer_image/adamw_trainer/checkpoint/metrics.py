"""Fault-tolerance series (checkpoints, resume, rollbacks, restarts), in the trainer's registry.

Names are part of the metrics contract (issue 3); the dashboard, the alerts and the
operator's grace-period sizing read them. Only rank 0 writes checkpoints, so on other
ranks the checkpoint series stay at 0.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Saves range from milliseconds (tiny CPU models) to minutes (multi-GB states on slow volumes).
SAVE_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

RESTART_COUNT_ENV = "ADAMW_RESTART_COUNT"


class FaultToleranceMetrics:
    def __init__(self, registry: CollectorRegistry, rank: int):
        labels = ["rank"]
        r = str(rank)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, labels, registry=registry).labels(rank=r)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, labels, registry=registry).labels(rank=r)

        self.checkpoint_step = gauge("adamw_checkpoint_step", "Step of the newest checkpoint saved or resumed from.")
        self.saves = counter("adamw_checkpoint_saves", "Checkpoints written successfully.")
        self.last_success = gauge(
            "adamw_checkpoint_last_success_timestamp_seconds", "Unix time the last checkpoint save completed."
        )
        self.save_duration = Histogram(
            "adamw_checkpoint_save_duration_seconds",
            "Time to save one checkpoint (host snapshot + write + fsync + rename): what a "
            "synchronous save on SIGTERM costs, so the grace period can be sized from it.",
            labels,
            buckets=SAVE_DURATION_BUCKETS,
            registry=registry,
        ).labels(rank=r)
        self.failures = counter("adamw_checkpoint_failures", "Checkpoint saves that failed (training went on).")
        self.corrupt_skipped = counter(
            "adamw_checkpoint_corrupt_skipped", "Corrupt, incomplete or unsafe checkpoints skipped on resume."
        )
        self.rollbacks = counter("adamw_rollbacks", "Divergence rollbacks to the last known-good checkpoint.")
        self.resumed_from_step = gauge(
            "adamw_resumed_from_step", "Step this process resumed from (0: started fresh)."
        )
        self.restarts = gauge("adamw_restarts", f"Restarts of this job so far (from {RESTART_COUNT_ENV}).")
        self.restarts.set(restart_count())


def restart_count(environ: dict[str, str] | None = None) -> int:
    """The operator's restart count for this attempt; 0 when unset or unreadable."""
    value = (os.environ if environ is None else environ).get(RESTART_COUNT_ENV, "0")
    try:
        return max(0, int(value))
    except ValueError:
        return 0
