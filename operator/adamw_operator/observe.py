"""What a worker pod tells us, reduced to the facts the decision function needs (pure)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Any

from adamw_trainer.exit_codes import ExitCode, TerminationMessage

from .api.constants import CONTAINER_NAME, LABEL_ATTEMPT, LABEL_RANK
from .skew import failure_message

# Pod-level reasons and conditions that mean "the node or the scheduler took it away",
# not "the training code failed": these restarts use the preemption budget.
# Disruptions that mean the pod's node is gone (the taint manager on an out-of-service or
# unreachable node, PodGC on a deleted or lost one): no kubelet will report an exit code.
NODE_LOSS_REASONS = frozenset({"NodeLost", "DeletionByTaintManager", "DeletionByPodGC"})
# How a rank's crash reads when it is the echo of a peer's death: its collective (gloo, NCCL,
# the c10d store) lost the connection. Such a rank is blamed only when no other one failed.
PEER_LOSS = re.compile(
    r"Connection (reset|closed) by peer|Broken pipe|DistNetworkError|DistBackendError|"
    r"gloo/transport|NCCL (error|communicator)|ProcessGroupNCCL|ProcessGroupGloo|TCPStore|"
    r"ncclRemoteError|ncclSystemError", re.IGNORECASE)
PREEMPTION_REASONS = frozenset(
    {"Evicted", "Preempted", "Preempting", "NodeLost", "NodeShutdown", "Terminated", "Shutdown",
     "DeletionByTaintManager", "TerminationByKubelet", "PreemptionByScheduler",
     "EvictionByEvictionAPI", "DeletionByPodGC", "UnexpectedAdmissionError", "OutOfgpu"}
)


_CONTRACT_FAILURES = frozenset({ExitCode.INVALID_CONFIG, ExitCode.DIVERGED, ExitCode.PREEMPTED})


@dataclass(frozen=True)
class WorkerObservation:
    """One worker pod as observed: phase plus, once it ended, how it ended."""

    name: str
    rank: int
    attempt: int
    phase: str  # Pending, Running, Succeeded, Failed, Unknown
    exit_code: int | None = None
    reason: str | None = None  # container terminated reason or pod reason
    message: str = ""
    termination: TerminationMessage | None = None
    deleting: bool = False
    disrupted: bool = False  # DisruptionTarget condition or a preemption reason
    pod_ip: str | None = None
    world_size: int | None = None  # the pod count it was built for (env WORLD_SIZE or NNODES)
    waiting: str = ""  # why a pending container does not start (ErrImagePull: ...), for humans
    node: str | None = None  # spec.nodeName: where it was scheduled (node avoidance)

    @property
    def finished(self) -> bool:
        return self.phase in ("Succeeded", "Failed") or self.exit_code is not None

    @property
    def failed(self) -> bool:
        if self.phase == "Failed":
            return True
        return self.exit_code is not None and self.exit_code != 0

    @property
    def contract_code(self) -> int | None:
        """The exit code that says what happened. Under torchrun (several GPUs per pod) the
        container exits 1 whatever the trainer said; the trainer's termination message
        then carries its own code (2, 3 or 143). Success is never taken from a message."""
        told = self.termination.exit_code if self.termination else None
        if self.exit_code not in (None, 0) and told in _CONTRACT_FAILURES:
            return told
        return self.exit_code

    @property
    def preempted(self) -> bool:
        return self.disrupted or self.contract_code == ExitCode.PREEMPTED

    @property
    def peer_loss(self) -> bool:
        """Its crash says a peer went away (the collective broke), not what went wrong."""
        text = self.termination.message if self.termination else self.message
        return bool(text and PEER_LOSS.search(text))

    @property
    def lost_with_node(self) -> bool:
        """Disrupted because its node went away, and never seen to end by a kubelet."""
        return self.disrupted and self.exit_code is None and self.reason in NODE_LOSS_REASONS


def _int_label(labels: dict[str, str], key: str) -> int:
    try:
        return int(labels.get(key, "-1"))
    except ValueError:
        return -1


def observe_pod(pod: dict[str, Any]) -> WorkerObservation:
    """Read a pod (dict as served by the API) into a WorkerObservation."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    exit_code = reason = None
    message = waiting = ""
    termination = None
    for cs in status.get("containerStatuses") or []:
        if cs.get("name") != CONTAINER_NAME:
            continue
        state = cs.get("state") or {}
        if state.get("waiting", {}).get("reason") not in (None, "ContainerCreating", "PodInitializing"):
            w = state["waiting"]
            waiting = f"{w['reason']}: {w.get('message', '')}".strip(": ")[:300]
        terminated = state.get("terminated")
        if terminated:
            exit_code = terminated.get("exitCode")
            reason = terminated.get("reason")
            message = terminated.get("message") or ""
            if message:
                try:
                    termination = TerminationMessage.from_json(message)
                except (ValueError, TypeError, json.JSONDecodeError):
                    termination = None
    pod_reason = status.get("reason")
    disrupted = pod_reason in PREEMPTION_REASONS
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and not waiting:
            waiting = f"{cond.get('reason', 'Unschedulable')}: {cond.get('message', '')}".strip(": ")[:300]
        if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True":
            disrupted = True
            pod_reason = pod_reason or cond.get("reason")
    if phase == "Failed" and pod_reason:
        reason = pod_reason
        message = message or status.get("message") or ""
    world_size = None
    for container in (pod.get("spec") or {}).get("containers") or []:
        if container.get("name") != CONTAINER_NAME:
            continue
        if termination is not None and termination.unknown_fields:
            # The image is older than a field the job sets (or was built apart from this
            # operator): say which field, which image and which schema, not "unknown field".
            termination = replace(termination, message=failure_message(
                termination.unknown_fields, container.get("image"), termination.config_schema))
        for env in container.get("env") or []:
            if env.get("name") in ("WORLD_SIZE", "NNODES") and str(env.get("value", "")).isdigit():
                world_size = int(env["value"])
    return WorkerObservation(
        name=meta.get("name", ""),
        rank=_int_label(labels, LABEL_RANK),
        attempt=_int_label(labels, LABEL_ATTEMPT),
        phase=phase,
        exit_code=exit_code,
        reason=reason,
        message=message,
        termination=termination,
        deleting=bool(meta.get("deletionTimestamp")),
        disrupted=disrupted,
        pod_ip=status.get("podIP"),
        world_size=world_size,
        waiting=waiting,
        node=(pod.get("spec") or {}).get("nodeName"),
    )
