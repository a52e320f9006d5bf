"""Checks a spec that passed the schema but cannot run (reported as the InvalidSpec condition)."""

from __future__ import annotations

import posixpath
from collections.abc import Mapping

from ..skew import schema_problems
from .constants import CONFIG_MOUNT_DIR, RESERVED_ENV, WORKING_DIR
from .spec import AdamWTrainingJobSpec

# Pod volume names the operator itself uses.
CONFIG_VOLUME = "adamw-config"
CHECKPOINT_VOLUME = "adamw-checkpoints"
TMP_VOLUME = "adamw-tmp"
RESERVED_VOLUMES = frozenset({CONFIG_VOLUME, CHECKPOINT_VOLUME, TMP_VOLUME})


def checkpoint_mount_path(spec: AdamWTrainingJobSpec) -> str:
    """Where the checkpoint volume is mounted: `checkpoint.dir`, relative to the working dir."""
    return posixpath.normpath(posixpath.join(WORKING_DIR, spec.trainer.checkpoint.dir))


def runtime_problems(spec: AdamWTrainingJobSpec, annotations: Mapping[str, str] | None = None) -> list[str]:
    """Everything that would make the pods unrunnable, one `spec.field: problem; fix` line each.

    `annotations`: the job's; `training.adamw.io/trainer-config-schema` there names the config
    schema its image reads, and a set field newer than that is a problem (skew.schema_problems)."""
    problems: list[str] = schema_problems(spec.trainer, spec.image, annotations)
    if not spec.image:
        problems.append(
            "spec.image: not set, and this operator has no default trainer image; set spec.image, "
            "or run the operator with --default-trainer-image (the Helm chart's trainerImage value)"
        )
    pod = spec.pod
    volume_names = [v.name for v in pod.volumes]
    storage = spec.checkpoint_storage
    if storage.claim_name and storage.volume_name:
        problems.append(
            "spec.checkpointStorage: set either claimName or volumeName, not both"
        )
    if storage.volume_name and storage.volume_name not in volume_names:
        problems.append(
            f"spec.checkpointStorage.volumeName: '{storage.volume_name}' is not a volume in "
            f"spec.pod.volumes ({', '.join(volume_names) or 'none defined'}); add it there or "
            "use claimName"
        )
    for i, name in enumerate(volume_names):
        if name in RESERVED_VOLUMES:
            problems.append(
                f"spec.pod.volumes[{i}].name: '{name}' is used by the operator; pick another name"
            )
        if volume_names.count(name) > 1 and volume_names.index(name) == i:
            problems.append(f"spec.pod.volumes[{i}].name: '{name}' is defined more than once")
    ckpt_path = checkpoint_mount_path(spec)
    taken = {CONFIG_MOUNT_DIR: "the trainer config", "/tmp": "the scratch volume", ckpt_path: "checkpoints"}
    for i, mount in enumerate(pod.volume_mounts):
        if mount.name not in volume_names:
            problems.append(
                f"spec.pod.volumeMounts[{i}].name: '{mount.name}' is not a volume in "
                "spec.pod.volumes; add the volume or fix the name"
            )
        path = (mount.model_extra or {}).get("mountPath")
        if not path:
            problems.append(f"spec.pod.volumeMounts[{i}].mountPath: required")
        elif posixpath.normpath(str(path)) in taken:
            problems.append(
                f"spec.pod.volumeMounts[{i}].mountPath: {path} is where the operator mounts "
                f"{taken[posixpath.normpath(str(path))]}; mount it elsewhere"
            )
    for i, env in enumerate(pod.env):
        if env.name in RESERVED_ENV:
            problems.append(
                f"spec.pod.env[{i}].name: {env.name} is set by the operator; remove it"
            )
    if ckpt_path in (CONFIG_MOUNT_DIR, "/tmp", "/"):
        problems.append(
            f"spec.trainer.checkpoint.dir: {spec.trainer.checkpoint.dir} collides with a system "
            "mount; use a dedicated directory such as /checkpoints"
        )
    if spec.gpus_per_replica > 0 and spec.trainer.device == "cpu":
        problems.append("spec.trainer.device: is 'cpu' but gpusPerReplica > 0; use 'auto' or 'cuda'")
    if spec.gpus_per_replica == 0 and spec.trainer.device == "cuda":
        problems.append("spec.trainer.device: is 'cuda' but gpusPerReplica is 0; request GPUs or use 'cpu'")
    return problems
