"""Job manifests for the operator tests (small CPU trainer configs)."""

from __future__ import annotations

import copy
from typing import Any


def job_manifest(name: str = "demo", **spec: Any) -> dict[str, Any]:
    """A valid AdamWTrainingJob; keyword arguments override top-level spec fields."""
    base: dict[str, Any] = {
        "image": "adamw-trainer:dev",
        "replicas": 2,
        "trainer": {
            "model": {"layers": 1, "heads": 2, "width": 32, "contextLength": 16},
            "training": {"maxSteps": 40, "batchSize": 4},
            "checkpoint": {"dir": "/checkpoints", "intervalSteps": 10},
        },
        "checkpointStorage": {"claimName": "ckpt"},
        "restartPolicy": {"backoffSeconds": 0, "maxBackoffSeconds": 0},
    }
    base.update(copy.deepcopy(spec))
    return {
        "apiVersion": "training.adamw.io/v1alpha1",
        "kind": "AdamWTrainingJob",
        "metadata": {"name": name, "namespace": "default"},
        "spec": base,
    }
