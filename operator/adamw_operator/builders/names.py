"""Deterministic child names: the API server refuses duplicates, so reconciles stay idempotent."""

from __future__ import annotations

from typing import Any

from ..api.constants import API_VERSION, KIND, LABEL_JOB


def worker_name(job: str, rank: int) -> str:
    return f"{job}-worker-{rank}"


def service_name(job: str) -> str:
    return f"{job}-workers"


def config_name(job: str, suffix: str | None = None) -> str:
    """`<job>-config-<suffix>`: the immutable trainer-config ConfigMap (see `builders.configmap`).

    Without a suffix, `<job>-config`: the name the local runner (`adamw-job run`) still gives
    its in-memory ConfigMap, and the mutable one operators up to 0.1.0 created.
    """
    return f"{job}-config-{suffix}" if suffix else f"{job}-config"


def network_policy_name(job: str) -> str:
    return f"{job}-workers"


def worker_selector(job: str) -> dict[str, str]:
    """The labels that pick a job's worker pods (its Service and NetworkPolicy select by them)."""
    return {LABEL_JOB: job}


def master_addr(job: str, namespace: str) -> str:
    """Rank 0's stable DNS name through the headless Service."""
    return f"{worker_name(job, 0)}.{service_name(job)}.{namespace}.svc.cluster.local"


def owner_reference(job: str, uid: str) -> dict[str, Any]:
    """Children are garbage-collected with the job; `controller` marks who manages them."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": job,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_metadata(job: str, namespace: str, uid: str, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "labels": {
            LABEL_JOB: job,
            "app.kubernetes.io/name": "adamw-trainer",
            "app.kubernetes.io/managed-by": "adamw-operator",
        },
        "ownerReferences": [owner_reference(job, uid)],
    }
