"""The headless Service that gives rank 0 a stable DNS name for the rendezvous."""

from __future__ import annotations

from typing import Any

from ..api.constants import LABEL_JOB, MASTER_PORT
from ..api.spec import AdamWTrainingJobSpec
from .names import child_metadata, service_name


def build_service(job: str, namespace: str, uid: str, spec: AdamWTrainingJobSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(job, namespace, uid, service_name(job)),
        "spec": {
            "clusterIP": "None",
            "selector": {LABEL_JOB: job},
            # Workers resolve rank 0 before any of them is "ready".
            "publishNotReadyAddresses": True,
            "ports": [
                {"name": "rendezvous", "port": MASTER_PORT, "targetPort": MASTER_PORT},
                {
                    "name": "metrics",
                    "port": spec.trainer.metrics.port or 9090,
                    "targetPort": spec.trainer.metrics.port or 9090,
                },
            ],
        },
    }
