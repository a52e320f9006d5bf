"""The AdamWTrainingJob API as pydantic models: the one source of truth for the CRD schema,
the operator and the local runner (`adamw-job run`). Imports neither kopf nor torch.

Embedded Kubernetes types (affinity, tolerations, volumes, env, volume mounts) are kept as
free-form objects (`x-kubernetes-preserve-unknown-fields`) instead of copying the upstream
schemas: the affinity schema alone is larger than this whole CRD, and the API server
validates them fully when the operator creates the pod; a pod the server refuses is
reported on the job as an `InvalidSpec` condition naming the server's message.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from adamw_trainer.config import CamelModel, ConfigError, TrainerConfig, format_validation_error
from pydantic import ConfigDict, Field, StringConstraints, ValidationError, model_validator

from .constants import API_VERSION, KIND

# Marks a field whose schema the CRD generator leaves open (see the module docstring).
PRESERVE = {"x-kubernetes-preserve-unknown-fields": True}
INT_OR_STRING = {"x-kubernetes-int-or-string": True}


# The job spec follows the trainer config's conventions (camelCase, unknown fields refused).
_Model = CamelModel


class KubeObject(_Model):
    """A free-form Kubernetes object (validated by the API server when the pod is created)."""

    model_config = ConfigDict(extra="allow", json_schema_extra=PRESERVE)


class NamedObject(KubeObject):
    """A free-form Kubernetes object that must at least carry a `name`."""

    name: str = Field(..., min_length=1, description="Name of the entry (unique in its list).")


class LocalObjectReference(_Model):
    name: str = Field(..., min_length=1, description="Name of the referenced object.")


Quantity = int | str


class ResourceRequirements(_Model):
    """Compute resources of each worker's `trainer` container (Kubernetes quantities)."""

    requests: dict[str, Quantity] = Field(
        default_factory=dict,
        description="Minimum resources, e.g. {cpu: '8', memory: 64Gi}. `nvidia.com/gpu` is set "
        "from `gpusPerReplica`.",
        json_schema_extra={"additionalProperties": INT_OR_STRING},
    )
    limits: dict[str, Quantity] = Field(
        default_factory=dict,
        description="Maximum resources, e.g. {memory: 64Gi}. `nvidia.com/gpu` is set from "
        "`gpusPerReplica`.",
        json_schema_extra={"additionalProperties": INT_OR_STRING},
    )


class PodOverrides(_Model):
    """Scheduling and extras applied to every worker pod."""

    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels the workers must run on."
    )
    tolerations: list[KubeObject] = Field(
        default_factory=list, description="Tolerations (core/v1 Toleration), e.g. for GPU taints."
    )
    affinity: KubeObject | None = Field(
        None, description="Pod affinity/anti-affinity (core/v1 Affinity)."
    )
    priority_class_name: str | None = Field(
        None, description="PriorityClass of the workers (preemption order)."
    )
    scheduler_name: str | None = Field(
        None, description="Scheduler for the workers, e.g. `volcano` for gang scheduling."
    )
    service_account_name: str | None = Field(
        None,
        description="ServiceAccount of the workers (for image pulls or workload identity); its "
        "token is never mounted.",
    )
    image_pull_secrets: list[LocalObjectReference] = Field(
        default_factory=list, description="Secrets for pulling `image`."
    )
    env: list[NamedObject] = Field(
        default_factory=list,
        description="Extra environment variables (core/v1 EnvVar). Names the operator sets "
        "(RANK, WORLD_SIZE, MASTER_ADDR, ...) are refused.",
    )
    volumes: list[NamedObject] = Field(
        default_factory=list, description="Extra pod volumes (core/v1 Volume)."
    )
    volume_mounts: list[NamedObject] = Field(
        default_factory=list,
        description="Extra mounts into the `trainer` container (core/v1 VolumeMount); each must "
        "name a volume in `volumes`.",
    )
    labels: dict[str, str] = Field(default_factory=dict, description="Extra pod labels.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Extra pod annotations.")
    termination_grace_period_seconds: int | None = Field(
        None,
        ge=1,
        le=86400,
        description="SIGTERM grace period. Unset: sized from the trainer's measured checkpoint "
        "save time once known (3x the save time plus 30 s), before that from "
        "`trainer.checkpoint.preemptionSaveTimeoutSeconds` plus 30 s.",
    )


class CheckpointStorage(_Model):
    """Where checkpoints live: mounted at `trainer.checkpoint.dir` in every worker."""

    claim_name: str | None = Field(
        None,
        description="A PersistentVolumeClaim to mount (ReadWriteMany for several workers). The "
        "usual choice: checkpoints survive pod restarts.",
    )
    volume_name: str | None = Field(
        None, description="Instead of a claim: the name of an entry in `pod.volumes` to mount."
    )
    sub_path: str | None = Field(
        None, description="Sub-directory of the volume to mount (e.g. one per job on a shared PVC)."
    )


class RestartPolicy(_Model):
    """How failed attempts are retried: the whole gang restarts from the last checkpoint."""

    max_restarts: int = Field(
        3, ge=0, le=1000, description="Restarts allowed after crashes and hangs; past it the job fails."
    )
    backoff_seconds: float = Field(
        10.0, ge=0.0, le=86400.0, description="Delay before the first restart; doubles each restart."
    )
    max_backoff_seconds: float = Field(
        300.0, ge=0.0, le=86400.0, description="Upper bound of the restart delay."
    )
    max_preemptions: int = Field(
        20,
        ge=0,
        le=10000,
        description="Restarts after preemption, eviction or node loss (exit 143 after a save); "
        "they do not use `maxRestarts`.",
    )
    on_divergence: Literal["Fail", "Restart"] = Field(
        "Fail",
        description="When the trainer exits as diverged (code 3, its own rollbacks exhausted): "
        "`Fail` the job, or `Restart` the gang from the last checkpoint (uses `maxRestarts`).",
    )
    max_restarts_without_progress: int = Field(
        3,
        ge=0,
        le=1000,
        description="Fail with reason NoProgress after this many restarts in a row that did not "
        "advance the last checkpoint step (0 disables the check).",
    )

    @model_validator(mode="after")
    def _backoff_order(self) -> RestartPolicy:
        if self.max_backoff_seconds < self.backoff_seconds:
            raise ValueError(
                f"maxBackoffSeconds ({self.max_backoff_seconds}) must be >= backoffSeconds "
                f"({self.backoff_seconds})"
            )
        return self


NamespaceName = Annotated[str, StringConstraints(min_length=1, max_length=63,
                                                 pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]


class NetworkPolicySpec(_Model):
    """An ingress NetworkPolicy `<job>-workers` for the worker pods (enforced only by a CNI
    that implements NetworkPolicy, e.g. Calico or Cilium)."""

    enabled: bool = Field(
        False,
        description="Create the NetworkPolicy: ingress to the workers only from the job's own "
        "pods (every port: rendezvous and collectives) and, on the metrics port, from "
        "`metricsFromNamespaces` and the operator's own namespace. Egress is not restricted. "
        "Created with the first attempt that has it enabled, and not updated afterwards.",
    )
    metrics_from_namespaces: list[NamespaceName] = Field(
        default_factory=list,
        max_length=64,
        description="Namespaces (by their `kubernetes.io/metadata.name` label) whose pods may "
        "reach the metrics port (`/metrics`, `/status`), e.g. [monitoring] for Prometheus.",
    )


class Budget(_Model):
    """Resource budgets: when one is spent, the workers save (SIGTERM) and the job fails with
    reason BudgetExceeded; raising it resumes the job from its last checkpoint."""

    max_gpu_hours: float | None = Field(
        None, gt=0, alias="maxGPUHours",
        description="GPU-hours the job's pods may hold (GPUs x time scheduled, restarts included).",
    )
    max_cpu_core_hours: float | None = Field(
        None, gt=0, alias="maxCPUCoreHours",
        description="CPU-core-hours (the worker's cpu request, else its limit, else 1 core) for CPU jobs.",
    )


class AdamWTrainingJobSpec(_Model):
    """Desired state of a training job."""

    image: str | None = Field(
        None,
        min_length=1,
        description="Trainer container image. Omit it to use the operator's default "
        "(`adamw-operator --default-trainer-image`, set by the Helm chart's `trainerImage` value).",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        None, description="Image pull policy of the trainer container."
    )
    replicas: int = Field(1, ge=1, le=4096, description="Worker pods (nodes); one rank 0.")
    gpus_per_replica: int = Field(
        0,
        ge=0,
        le=64,
        description="GPUs per worker (`nvidia.com/gpu`); 0 runs on CPU. Above 1 each pod runs "
        "torchrun with one process per GPU.",
    )
    trainer: TrainerConfig = Field(
        default_factory=TrainerConfig,
        description="The trainer's configuration, delivered as the immutable ConfigMap "
        "`<job>-config-<hash>` (a new one when it changes).",
    )
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements, description="Worker container resources."
    )
    pod: PodOverrides = Field(default_factory=PodOverrides, description="Worker pod overrides.")
    checkpoint_storage: CheckpointStorage = Field(
        default_factory=CheckpointStorage,
        description="Checkpoint volume. Unset: an emptyDir, so a restart starts from step 0.",
    )
    restart_policy: RestartPolicy = Field(
        default_factory=RestartPolicy, description="Gang restart policy."
    )
    budget: Budget = Field(default_factory=Budget, description="GPU-hour and CPU-core-hour budgets.")
    suspend: bool = Field(
        False,
        description="True deletes the workers and keeps the status (Kueue-compatible); false "
        "again resumes from the last checkpoint.",
    )
    active_deadline_seconds: int | None = Field(
        None, ge=1, description="Fail with DeadlineExceeded after this long since the job started."
    )
    ttl_seconds_after_finished: int | None = Field(
        None, ge=0, description="Delete the job (and its pods) this long after it finished."
    )
    progress_deadline_seconds: int | None = Field(
        600,
        ge=10,
        description="Hang detection: gang-restart with reason Hung when rank 0's step does not "
        "advance for this long while all workers run. Unset disables it.",
    )
    clean_pod_policy: Literal["All", "Running", "None"] = Field(
        "Running",
        description="Pods deleted when the job finishes: `All`, only still `Running` ones (keeps "
        "finished pods' logs), or `None`.",
    )
    network_policy: NetworkPolicySpec = Field(
        default_factory=NetworkPolicySpec,
        description="A NetworkPolicy for the workers (off by default).",
    )


class CheckpointRef(_Model):
    step: int = Field(..., description="Training step of the checkpoint.")
    loss: float | None = Field(None, description="Training loss when it was saved.")
    time: str | None = Field(None, description="When it was saved (RFC 3339).")
    validation_loss: float | None = Field(
        None, description="Validation loss measured at its step (set when it was saved at an evaluation)."
    )


class TrackingRef(_Model):
    """Where the job's experiment-tracking run is (one MLflow run across all attempts)."""

    run_id: str | None = Field(None, description="MLflow run id.")
    experiment_id: str | None = Field(None, description="MLflow experiment id.")
    url: str | None = Field(None, description="The run in the MLflow UI.")


class Condition(_Model):
    type: str = Field(..., description="Condition type.")
    status: Literal["True", "False", "Unknown"] = Field(..., description="True, False or Unknown.")
    reason: str = Field(..., description="CamelCase reason for the last transition.")
    message: str = Field("", description="Human-readable details.")
    last_transition_time: str = Field(..., description="When the status last changed (RFC 3339).")
    observed_generation: int | None = Field(
        None, description="metadata.generation the condition was computed from."
    )


class LastFailure(_Model):
    reason: str = Field(..., description="Crashed, InvalidConfig, Diverged, Preempted, Hung, ...")
    rank: int | None = Field(None, description="Worker rank that failed first.")
    exit_code: int | None = Field(None, description="Its container exit code.")
    message: str = Field("", description="Its termination message or pod reason.")
    time: str = Field(..., description="When the operator observed it (RFC 3339).")


class Usage(_Model):
    gpu_seconds: float = Field(0.0, alias="gpuSeconds", description="GPU-seconds held (restarts included).")
    cpu_core_seconds: float = Field(0.0, description="CPU-core-seconds held.")
    held_gpus: float = Field(0.0, alias="heldGPUs", description="GPUs held at the last reconcile.")
    held_cpu_cores: float = Field(0.0, alias="heldCPUCores", description="CPU cores held at the last reconcile.")
    accounted_time: str | None = Field(None, description="When usage was last charged (RFC 3339).")
    budget_warned: bool | None = Field(None, description="The 80% budget warning was given.")


class AdamWTrainingJobStatus(_Model):
    """Observed state, written only by the operator through the /status subresource."""

    phase: Literal["Pending", "Running", "Restarting", "Succeeded", "Failed", "Suspended"] | None = (
        Field(None, description="Pending, Running, Restarting, Succeeded, Failed or Suspended.")
    )
    message: str | None = Field(None, description="What is happening, for humans.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Running, Suspended, InvalidSpec, Succeeded, Failed.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int | None = Field(None, description="Last spec generation acted on.")
    attempt: int = Field(0, description="Current attempt; pods carry it in a label.")
    restarts: int = Field(0, description="Restarts that used the budget (crashes, hangs).")
    preemptions: int = Field(0, description="Restarts after preemption (own budget).")
    restarts_without_progress: int = Field(
        0, description="Consecutive restarts that did not advance the last checkpoint step."
    )
    checkpoint_step_at_last_restart: int | None = Field(
        None, description="Last checkpoint step when the previous restart happened."
    )
    restart_after_time: str | None = Field(
        None, description="Backoff: the next attempt starts at this time (RFC 3339)."
    )
    step: int | None = Field(None, description="Rank 0's last reported step.")
    max_steps: int | None = Field(None, description="Steps the job trains for.")
    loss: float | None = Field(None, description="Rank 0's last reported training loss.")
    validation_loss: float | None = Field(None, description="Validation loss of the last evaluation.")
    best_validation_loss: float | None = Field(
        None, description="Lowest validation loss of the run so far (across restarts)."
    )
    steps_to_target: int | None = Field(
        None, description="Step at which validation loss reached trainer.training.targetValidationLoss."
    )
    time_to_target_seconds: float | None = Field(
        None,
        description="Seconds from startTime (restarts included) until the job succeeded with "
        "TargetReached.",
    )
    tracking: TrackingRef | None = Field(None, description="The job's run in experiment tracking.")
    nonfinite_rate: float | None = Field(None, description="Fraction of recent steps skipped as NaN/Inf.")
    tokens_per_second: float | None = Field(None, description="Throughput reported by rank 0.")
    rollbacks: int | None = Field(None, description="In-trainer divergence rollbacks reported.")
    checkpoint_save_seconds: float | None = Field(
        None, description="Measured checkpoint save time (sizes the SIGTERM grace period)."
    )
    last_checkpoint: CheckpointRef | None = Field(None, description="Newest complete checkpoint.")
    last_good_checkpoint: CheckpointRef | None = Field(
        None, description="Newest checkpoint that is complete, checksummed and has a finite loss."
    )
    best_checkpoint: CheckpointRef | None = Field(
        None,
        description="Checkpoint with the lowest validation loss (`<checkpoint dir>/best` for export "
        "and finetune.initFrom); never pruned.",
    )
    running_attempt: int | None = Field(
        None, description="Last attempt whose workers all ran (a pod vanishing after that is lost)."
    )
    progress_attempt: int | None = Field(
        None, description="Attempt in which rank 0's /status was last read (arms hang detection)."
    )
    last_progress_time: str | None = Field(
        None, description="When the step last advanced (or the attempt started running)."
    )
    last_failure: LastFailure | None = Field(None, description="The failure behind the last restart.")
    usage: Usage | None = Field(None, description="Resources the job's pods held so far (budgets, cost).")
    node_failures: dict[str, int] | None = Field(
        None, description="Crashes and hangs of this job's workers per node (node avoidance)."
    )
    avoided_nodes: list[str] | None = Field(
        None,
        description="Nodes the next attempts are kept off (a required node anti-affinity), each after "
        "2 failures there; at most 3, and cleared when no other node fits.",
    )
    start_time: str | None = Field(None, description="When the first attempt was created.")
    completion_time: str | None = Field(None, description="When the job succeeded or failed.")


class AdamWTrainingJob(_Model):
    """A training job: workers running the fused-AdamW trainer, gang-restarted on failure."""

    api_version: Literal["training.adamw.io/v1alpha1"] = Field(API_VERSION, description="API version.")
    kind: Literal["AdamWTrainingJob"] = Field(KIND, description="Kind.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Standard object metadata.")
    spec: AdamWTrainingJobSpec = Field(..., description="Desired state.")
    status: AdamWTrainingJobStatus | None = Field(None, description="Observed state.")


def parse_spec(data: Any, source: str = "AdamWTrainingJob") -> AdamWTrainingJobSpec:
    """Validate a job's `spec`; raise ConfigError with one `spec.field: problem` line each."""
    if not isinstance(data, dict):
        raise ConfigError([f"spec: expected a mapping, got {type(data).__name__}"], source)
    try:
        return AdamWTrainingJobSpec.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, prefix="spec"), source) from None


def parse_job(manifest: Any, source: str = "manifest") -> tuple[dict[str, Any], AdamWTrainingJobSpec]:
    """Validate a whole manifest: (metadata, spec). Errors name the field, as on the cluster."""
    if not isinstance(manifest, dict):
        raise ConfigError([f"<root>: expected a mapping, got {type(manifest).__name__}"], source)
    problems = []
    if manifest.get("apiVersion") != API_VERSION:
        problems.append(f"apiVersion: must be {API_VERSION} (got {manifest.get('apiVersion')!r})")
    if manifest.get("kind") != KIND:
        problems.append(f"kind: must be {KIND} (got {manifest.get('kind')!r})")
    metadata = manifest.get("metadata") or {}
    if not metadata.get("name"):
        problems.append("metadata.name: required; give the job a name")
    if problems:
        raise ConfigError(problems, source)
    return metadata, parse_spec(manifest.get("spec"), source)


def with_default_image(spec: AdamWTrainingJobSpec, default_image: str | None) -> AdamWTrainingJobSpec:
    """The spec with `image` filled from the operator's default when the job names none."""
    if spec.image or not default_image:
        return spec
    return spec.model_copy(update={"image": default_image})
