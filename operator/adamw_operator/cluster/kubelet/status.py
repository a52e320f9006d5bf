"""PodStatus as the kubelet's status manager writes it (phase, conditions, container state).

Written to the pod's `/status` subresource as a strategic merge patch that carries
`metadata.uid` (so it cannot land on a newer pod of the same name) and merges
`conditions` by type (so the API server's `DisruptionTarget` and the scheduler's
`PodScheduled` are never overwritten by a stale copy).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from adamw_operator.local.pod_status import now_iso

Obj = dict[str, Any]


@dataclass
class ContainerRecord:
    """What the runtime knows about the pod's (single) container."""

    name: str
    image: str
    state: Obj = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: Obj = field(default_factory=dict)
    restart_count: int = 0
    ready: bool = False
    container_id: str = ""

    @property
    def running(self) -> bool:
        return "running" in self.state

    @property
    def terminated(self) -> Obj | None:
        return self.state.get("terminated")

    def to_status(self) -> Obj:
        status: Obj = {
            "name": self.name, "image": self.image, "imageID": f"virtual://{self.image}",
            "ready": self.ready and self.running, "started": self.running,
            "restartCount": self.restart_count, "state": self.state, "lastState": self.last_state,
        }
        if self.container_id:
            status["containerID"] = self.container_id
        return status


def phase_of(container: ContainerRecord, restart_policy: str, *, terminal: bool) -> str:
    """Kubernetes' getPhase for one container; `terminal`: no restart will follow."""
    ended = container.terminated
    if ended is not None and terminal:
        return "Succeeded" if ended["exitCode"] == 0 else "Failed"
    if ended is not None and restart_policy == "Never":
        return "Succeeded" if ended["exitCode"] == 0 else "Failed"
    if ended is not None and restart_policy == "OnFailure" and ended["exitCode"] == 0:
        return "Succeeded"
    if container.running or container.restart_count > 0 or container.last_state:
        return "Running"  # running, or waiting to restart in place
    return "Pending"


class Conditions:
    """The kubelet-owned pod conditions, with lastTransitionTime kept while unchanged."""

    TYPES = ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")

    def __init__(self) -> None:
        self._seen: dict[str, tuple[str, str]] = {}  # type -> (status, lastTransitionTime)

    def build(self, *, sandbox: bool, ready: bool, terminal: bool, reason: str | None) -> list[Obj]:
        wanted = {"PodReadyToStartContainers": sandbox and not terminal, "Initialized": True,
                  "ContainersReady": ready, "Ready": ready}
        out = []
        for kind in self.TYPES:
            flag = "True" if wanted[kind] else "False"
            previous = self._seen.get(kind)
            since = previous[1] if previous and previous[0] == flag else now_iso()
            self._seen[kind] = (flag, since)
            # Explicit nulls: the patch merges conditions by type, so an absent key would keep
            # the old reason on a condition that has become True.
            cond: Obj = {"type": kind, "status": flag, "lastProbeTime": None, "lastTransitionTime": since,
                         "reason": None, "message": None}
            if kind in ("ContainersReady", "Ready") and not wanted[kind] and reason:
                cond["reason"] = reason
            out.append(cond)
        return out


def pod_status(*, phase: str, container: ContainerRecord, conditions: list[Obj], pod_ip: str | None,
               host_ip: str, start_time: str) -> Obj:
    status: Obj = {"phase": phase, "conditions": conditions, "hostIP": host_ip,
                   "hostIPs": [{"ip": host_ip}], "startTime": start_time,
                   "containerStatuses": [container.to_status()]}
    if pod_ip:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    return status


def status_patch(uid: str, status: Obj) -> Obj:
    return {"metadata": {"uid": uid}, "status": status}
