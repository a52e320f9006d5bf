"""Convergence and tracking in the job status: folded from rank 0's /status, in the status
model the CRD is generated from, and accepted in the spec by the cluster's schema."""

from __future__ import annotations

from datetime import UTC, datetime

from adamw_operator.api.spec import AdamWTrainingJobStatus, parse_job
from adamw_operator.progress import fold_progress

from tests.operator.crd_validation import load_crd, validate
from tests.operator.jobs import job_manifest

NOW = datetime(2026, 1, 1, tzinfo=UTC)

REPORT = {
    "step": 120, "loss": 1.9, "validationLoss": 1.85, "bestValidationLoss": 1.8,
    "bestCheckpoint": {"step": 100, "loss": 1.95, "time": "2026-01-01T00:00:00Z", "validationLoss": 1.8},
    "tracking": {"runId": "abc123", "experimentId": "7", "url": "http://mlflow:5000/#/experiments/7/runs/abc123"},
}


def test_validation_losses_best_checkpoint_and_the_run_are_folded_into_the_status():
    patch, events = fold_progress({"attempt": 0}, REPORT, NOW)
    assert events == []
    assert patch["validationLoss"] == 1.85 and patch["bestValidationLoss"] == 1.8
    assert patch["bestCheckpoint"] == {"step": 100, "loss": 1.95, "time": "2026-01-01T00:00:00Z",
                                       "validationLoss": 1.8}
    assert patch["tracking"] == REPORT["tracking"]
    AdamWTrainingJobStatus.model_validate({**patch, "stepsToTarget": 120, "timeToTargetSeconds": 61.5})
    # A NaN evaluation shows nothing rather than a stale number; unchanged fields are not re-sent.
    again, _ = fold_progress({"attempt": 0, **patch}, {**REPORT, "validationLoss": None}, NOW)
    assert again == {"validationLoss": None}


def test_the_cluster_accepts_targets_early_stopping_and_tracking():
    manifest = job_manifest(trainer={
        "data": {"source": "synthetic", "evalIntervalSteps": 10},
        "training": {"maxSteps": 40, "targetValidationLoss": 1.5,
                     "earlyStopping": {"patience": 3, "minDelta": 0.01}},
        "tracking": {"mlflow": {"trackingUri": "http://mlflow.mlflow.svc:5000", "experiment": "demo"}},
    })
    assert validate(load_crd(), manifest) == []
    _, spec = parse_job(manifest)
    assert spec.trainer.tracking.mlflow.experiment == "demo"
