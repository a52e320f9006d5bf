"""Pod status objects as a kubelet writes them (Running, terminated).

The local runner keeps one such status per worker so the operator's own `observe_pod`
reads local processes exactly as it reads pods; the virtual kubelet
(`adamw_operator.cluster.kubelet`) stamps its times the same way.
"""

from __future__ import annotations

import copy
import datetime
import uuid
from typing import Any

Obj = dict[str, Any]


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

_KEPT_CONDITIONS = {"DisruptionTarget"}  # set by the API server/scheduler, not the kubelet


def _conditions(pod: Obj, ready: bool) -> list[Obj]:
    now = now_iso()
    kept = [c for c in pod.get("status", {}).get("conditions", []) if c.get("type") in _KEPT_CONDITIONS]
    flag = "True" if ready else "False"
    return kept + [
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
        {"type": "Initialized", "status": "True", "lastTransitionTime": now},
        {"type": "ContainersReady", "status": flag, "lastTransitionTime": now},
        {"type": "Ready", "status": flag, "lastTransitionTime": now},
    ]


def _container_base(pod: Obj, name: str) -> Obj:
    image = next((c.get("image", "") for c in pod["spec"].get("containers", []) if c["name"] == name), "")
    return {"name": name, "image": image, "imageID": f"local://{image}",
            "containerID": f"local://{uuid.uuid4().hex[:12]}", "restartCount": 0}


def running(pod: Obj, pod_ip: str, host_ip: str = "127.0.0.1") -> Obj:
    """The status of a pod whose containers all started."""
    status = copy.deepcopy(pod.get("status", {}))
    started = now_iso()
    status.update({
        "phase": "Running", "podIP": pod_ip, "podIPs": [{"ip": pod_ip}], "hostIP": host_ip,
        "startTime": status.get("startTime", started), "conditions": _conditions(pod, ready=True),
        "containerStatuses": [
            {**_container_base(pod, c["name"]), "ready": True, "started": True,
             "state": {"running": {"startedAt": started}}}
            for c in pod["spec"].get("containers", [])
        ],
    })
    return status


def terminated(pod: Obj, exit_code: int, *, message: str = "", reason: str | None = None,
               signal: int | None = None) -> Obj:
    """The status after the (single) container exited; restartPolicy Never ends the pod."""
    status = copy.deepcopy(pod.get("status", {}))
    finished = now_iso()
    previous = (status.get("containerStatuses") or [{}])[0]
    started = previous.get("state", {}).get("running", {}).get("startedAt", finished)
    state: Obj = {"exitCode": exit_code, "reason": reason or ("Completed" if exit_code == 0 else "Error"),
                  "startedAt": started, "finishedAt": finished,
                  "containerID": previous.get("containerID", "local://gone")}
    if message:
        state["message"] = message
    if signal:
        state["signal"] = signal
    status.update({
        "phase": "Succeeded" if exit_code == 0 else "Failed",
        "conditions": _conditions(pod, ready=False),
        "containerStatuses": [
            {**_container_base(pod, c["name"]), "containerID": state["containerID"], "ready": False,
             "started": False, "state": {"terminated": dict(state)}}
            for c in pod["spec"].get("containers", [])
        ],
    })
    return status


def pending_reason(pod: Obj, reason: str, message: str) -> Obj:
    """A Pending pod whose container is waiting (e.g. its ConfigMap is missing)."""
    status = copy.deepcopy(pod.get("status", {}))
    status["containerStatuses"] = [
        {**_container_base(pod, c["name"]), "ready": False, "started": False,
         "state": {"waiting": {"reason": reason, "message": message}}}
        for c in pod["spec"].get("containers", [])
    ]
    return status
