"""Worker pods (the local runner runs these same pods as processes, see `local.pod_process`).

One pod per rank (`<job>-worker-<rank>`), `restartPolicy: Never` because the operator owns
restarts (a gang restart, never a lone container restart); no service-account token,
non-root, read-only root filesystem with a writable /tmp, all capabilities dropped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..api.checks import CHECKPOINT_VOLUME, CONFIG_VOLUME, TMP_VOLUME, checkpoint_mount_path
from ..api.constants import (
    ANNOTATION_CONFIG_HASH,
    CONFIG_MOUNT_DIR,
    CONFIG_PATH,
    CONTAINER_NAME,
    LABEL_ATTEMPT,
    LABEL_RANK,
    LABEL_ROLE,
    MASTER_PORT,
    WORKING_DIR,
)
from ..api.spec import AdamWTrainingJobSpec
from .avoidance import avoiding_nodes
from .names import child_metadata, config_name, master_addr, service_name, worker_name

NON_ROOT_UID = 1000
GRACE_MARGIN_SECONDS = 30


def worker_command(spec: AdamWTrainingJobSpec, config_path: str = CONFIG_PATH) -> list[str]:
    """One trainer process per pod, or torchrun with one process per GPU above one GPU."""
    if spec.gpus_per_replica <= 1:
        return ["adamw-train", "--config", config_path]
    return [
        "torchrun",
        f"--nnodes={spec.replicas}",
        f"--nproc-per-node={spec.gpus_per_replica}",
        "--node-rank=$(NODE_RANK)",
        "--master-addr=$(MASTER_ADDR)",
        "--master-port=$(MASTER_PORT)",
        "--no-python",
        "adamw-train",
        "--config",
        config_path,
    ]


def worker_env(
    job: str,
    spec: AdamWTrainingJobSpec,
    rank: int,
    restart_count: int,
    master: str,
    checkpoint_dir: str,
) -> dict[str, str]:
    """The rendezvous and restart environment of one worker (torchrun's variable names)."""
    env = {
        "MASTER_ADDR": master,
        "MASTER_PORT": str(MASTER_PORT),
        "ADAMW_RESTART_COUNT": str(restart_count),
        "ADAMW_CHECKPOINT_DIR": checkpoint_dir,
        "ADAMW_JOB_NAME": job,
        # Read-only root filesystem: caches (torch, matplotlib) go to the /tmp volume.
        "HOME": "/tmp",
        "PYTHONUNBUFFERED": "1",
    }
    if spec.gpus_per_replica <= 1:
        env.update({"RANK": str(rank), "WORLD_SIZE": str(spec.replicas), "LOCAL_RANK": "0"})
    else:  # torchrun derives RANK/WORLD_SIZE/LOCAL_RANK per process from these
        env.update({"NODE_RANK": str(rank), "NNODES": str(spec.replicas)})
    return env


def termination_grace_seconds(spec: AdamWTrainingJobSpec, measured_save_seconds: float | None) -> int:
    """The spec's value, else 3x the measured save time plus a margin, else the save budget."""
    if spec.pod.termination_grace_period_seconds:
        return spec.pod.termination_grace_period_seconds
    if measured_save_seconds is not None and measured_save_seconds >= 0:
        return int(math.ceil(3 * measured_save_seconds)) + GRACE_MARGIN_SECONDS
    budget = spec.trainer.checkpoint.preemption_save_timeout_seconds
    return int(math.ceil(budget)) + GRACE_MARGIN_SECONDS


def _checkpoint_volume(spec: AdamWTrainingJobSpec) -> dict[str, Any] | None:
    storage = spec.checkpoint_storage
    if storage.volume_name:
        return None  # the user's own entry in pod.volumes
    if storage.claim_name:
        return {"name": CHECKPOINT_VOLUME, "persistentVolumeClaim": {"claimName": storage.claim_name}}
    return {"name": CHECKPOINT_VOLUME, "emptyDir": {}}


def _resources(spec: AdamWTrainingJobSpec) -> dict[str, Any]:
    requests = dict(spec.resources.requests)
    limits = dict(spec.resources.limits)
    if spec.gpus_per_replica > 0:
        limits["nvidia.com/gpu"] = spec.gpus_per_replica
        requests["nvidia.com/gpu"] = spec.gpus_per_replica
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def build_worker_pod(
    job: str,
    namespace: str,
    uid: str,
    spec: AdamWTrainingJobSpec,
    rank: int,
    attempt: int,
    restart_count: int,
    measured_save_seconds: float | None = None,
    avoid_nodes: Sequence[str] = (),
    config_map: str | None = None,
) -> dict[str, Any]:
    """The pod of one rank in one attempt (the attempt is a label, not part of the name);
    `avoid_nodes`: nodes this job's pods failed on repeatedly (status.avoidedNodes);
    `config_map`: the ConfigMap with the trainer config, on a cluster the `metadata.name` of
    `build_configmap(...)` (immutable, hash-named); unset, `<job>-config`, the name the local
    runner gives its in-memory copy."""
    name = worker_name(job, rank)
    meta = child_metadata(job, namespace, uid, name)
    meta["labels"] = {
        **spec.pod.labels,
        **meta["labels"],
        LABEL_RANK: str(rank),
        LABEL_ATTEMPT: str(attempt),
        LABEL_ROLE: "master" if rank == 0 else "worker",
    }
    meta["annotations"] = {**spec.pod.annotations, ANNOTATION_CONFIG_HASH: spec.trainer.config_hash()}
    pod_spec_extra = spec.pod
    affinity = avoiding_nodes(pod_spec_extra.affinity.model_dump(by_alias=True) if pod_spec_extra.affinity else None,
                              avoid_nodes)
    storage = spec.checkpoint_storage
    ckpt_path = checkpoint_mount_path(spec)
    ckpt_mount: dict[str, Any] = {"name": storage.volume_name or CHECKPOINT_VOLUME, "mountPath": ckpt_path}
    if storage.sub_path:
        ckpt_mount["subPath"] = storage.sub_path
    env = worker_env(job, spec, rank, restart_count, master_addr(job, namespace), ckpt_path)
    # What the trainer records about itself in experiment tracking (tags of the MLflow run).
    env.update({"ADAMW_JOB_NAMESPACE": namespace, "ADAMW_ATTEMPT": str(attempt), "ADAMW_IMAGE": spec.image or ""})
    port = spec.trainer.metrics.port
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.image,
        "command": worker_command(spec),
        "workingDir": WORKING_DIR,
        "env": [{"name": k, "value": v} for k, v in env.items()]
        + [e.model_dump(by_alias=True, exclude_none=True) for e in pod_spec_extra.env],
        "volumeMounts": [
            {"name": CONFIG_VOLUME, "mountPath": CONFIG_MOUNT_DIR, "readOnly": True},
            ckpt_mount,
            {"name": TMP_VOLUME, "mountPath": "/tmp"},
        ]
        + [m.model_dump(by_alias=True, exclude_none=True) for m in pod_spec_extra.volume_mounts],
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if port:
        container["ports"] = [
            # Port names must be unique in a pod: metrics, metrics-1, ... one per local rank.
            {"name": "metrics" if i == 0 else f"metrics-{i}", "containerPort": port + i, "protocol": "TCP"}
            for i in range(max(1, spec.gpus_per_replica))
        ]
    if spec.replicas > 1 or spec.gpus_per_replica > 1:
        container.setdefault("ports", []).append(
            {"name": "rendezvous", "containerPort": MASTER_PORT, "protocol": "TCP"}
        )
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy
    resources = _resources(spec)
    if resources:
        container["resources"] = resources
    volumes: list[dict[str, Any]] = [
        {"name": CONFIG_VOLUME, "configMap": {"name": config_map or config_name(job)}},
        {"name": TMP_VOLUME, "emptyDir": {}},
    ]
    ckpt_volume = _checkpoint_volume(spec)
    if ckpt_volume:
        volumes.insert(1, ckpt_volume)
    volumes += [v.model_dump(by_alias=True, exclude_none=True) for v in pod_spec_extra.volumes]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "hostname": name,
        "subdomain": service_name(job),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": termination_grace_seconds(spec, measured_save_seconds),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": NON_ROOT_UID,
            "runAsGroup": NON_ROOT_UID,
            "fsGroup": NON_ROOT_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    for key, value in (
        ("nodeSelector", pod_spec_extra.node_selector),
        ("tolerations", [t.model_dump(by_alias=True) for t in pod_spec_extra.tolerations]),
        ("affinity", affinity),
        ("priorityClassName", pod_spec_extra.priority_class_name),
        ("schedulerName", pod_spec_extra.scheduler_name),
        ("serviceAccountName", pod_spec_extra.service_account_name),
        ("imagePullSecrets", [s.model_dump(by_alias=True) for s in pod_spec_extra.image_pull_secrets]),
    ):
        if value:
            pod_spec[key] = value
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec}
