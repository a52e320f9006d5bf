"""Training jobs on the session's real cluster: tiny CPU trainer configs, a PVC per job,
and what the tests read back (status, Events, pod creations, checkpoints, worker logs).

Every worker is a real `adamw-train` process run by a virtual kubelet, with its own
loopback address as pod IP (rank 0's rendezvous port included).
"""

from __future__ import annotations

import copy
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.cluster.harness import Cluster, KubectlError
from tests.operator.jobs import job_manifest

JOB_LABEL = "training.adamw.io/job-name"
ATTEMPT_LABEL = "training.adamw.io/attempt"

# 2 layers x 64 wide over 32 tokens of synthetic data: about 10 steps/s per rank on one
# busy core, so a job is mostly torch's import time.
TRAINER: dict[str, Any] = {
    "model": {"layers": 2, "heads": 2, "width": 64, "contextLength": 32},
    "data": {"source": "synthetic", "evalIntervalSteps": 0},
    "training": {"maxSteps": 120, "batchSize": 8, "threads": 1, "logIntervalSteps": 5},
    "checkpoint": {"dir": "/checkpoints", "intervalSteps": 20},
    "device": "cpu",
}


def training_job(name: str, namespace: str, *, trainer: dict[str, Any] | None = None,
                 **spec: Any) -> dict[str, Any]:
    """An AdamWTrainingJob for `TRAINER` (sections of `trainer` merged in), on PVC `<name>-ckpt`."""
    config = copy.deepcopy(TRAINER)
    for section, values in (trainer or {}).items():
        if isinstance(values, dict):
            config.setdefault(section, {}).update(values)
        else:
            config[section] = values
    spec = {
        "replicas": 2,
        "checkpointStorage": {"claimName": f"{name}-ckpt"},
        # a worker stuck in a collective after its peer died must not hold up the restart
        "pod": {"terminationGracePeriodSeconds": 10},
        **spec,
        "restartPolicy": {"backoffSeconds": 0, "maxBackoffSeconds": 0, **spec.get("restartPolicy", {})},
    }
    job = job_manifest(name, trainer=config, **spec)
    job["metadata"]["namespace"] = namespace
    return job


def claim(name: str, namespace: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}}


def submit(cluster: Cluster, job: dict[str, Any]) -> str:
    """Apply the job's PVC (the provisioner binds it) and the job; returns the job's name."""
    meta = job["metadata"]
    claim_name = (job["spec"].get("checkpointStorage") or {}).get("claimName")
    if claim_name:
        cluster.apply(claim(claim_name, meta["namespace"]))
    cluster.apply(job)
    return meta["name"]


# ---- reading the world back -----------------------------------------------------------


def status(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    return cluster.get("awj", name, ns).get("status") or {}


def condition(st: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions") or [] if c["type"] == kind), {})


def wait_status(cluster: Cluster, ns: str, name: str, what: str, holds: Callable[[dict[str, Any]], Any],
                timeout: float = 60) -> dict[str, Any]:
    """The job's status once `holds(status)` is true."""
    def probe() -> dict[str, Any] | None:
        st = status(cluster, ns, name)
        return st if holds(st) else None
    return cluster.wait_for(f"{ns}/{name}: {what}", probe, timeout=timeout)


def wait_phase(cluster: Cluster, ns: str, name: str, *phases: str, timeout: float = 180) -> dict[str, Any]:
    """The job's status once its phase is one of `phases`."""
    return wait_status(cluster, ns, name, f"phase in {phases}", lambda st: st.get("phase") in phases, timeout)


def wait_finished(cluster: Cluster, ns: str, name: str, timeout: float = 180) -> dict[str, Any]:
    return wait_phase(cluster, ns, name, "Succeeded", "Failed", timeout=timeout)


def workers(cluster: Cluster, ns: str, name: str, attempt: int | None = None) -> list[dict[str, Any]]:
    selector = f"{JOB_LABEL}={name}" + (f",{ATTEMPT_LABEL}={attempt}" if attempt is not None else "")
    return cluster.get("pods", namespace=ns, selector=selector)["items"]


def wait_running(cluster: Cluster, ns: str, name: str, attempt: int, replicas: int,
                 timeout: float = 120) -> list[dict[str, Any]]:
    """The attempt's worker pods once all `replicas` run, each with a live process."""
    def probe() -> list[dict[str, Any]] | None:
        pods = [p for p in workers(cluster, ns, name, attempt) if not p["metadata"].get("deletionTimestamp")]
        if len(pods) != replicas or any(p.get("status", {}).get("phase") != "Running" for p in pods):
            return None
        running = {(p["name"]) for p in cluster.pod_processes() if p["namespace"] == ns and p.get("pid")}
        return pods if all(p["metadata"]["name"] in running for p in pods) else None
    try:
        return cluster.wait_for(f"attempt {attempt} of {ns}/{name} running", probe, timeout=timeout)
    except TimeoutError as e:  # say what the operator said about the job
        pods = [(p["metadata"]["name"], p["metadata"]["labels"].get(ATTEMPT_LABEL), p["spec"].get("nodeName"),
                 p.get("status", {}).get("phase"), p["metadata"].get("deletionTimestamp"))
                for p in workers(cluster, ns, name)]
        said = [(e["involvedObject"]["name"], e["reason"], e.get("message", "")[:200])
                for e in events(cluster, ns, kind="Pod")][-6:]
        nodes = [(n["metadata"]["name"], n["spec"].get("taints"))
                 for n in cluster.get("nodes")["items"]]
        raise TimeoutError(f"{e}; its pods (name, attempt, node, phase, deleting): {pods}; "
                           f"their last events: {said}; node taints: {nodes}; "
                           f"the job's status: {status(cluster, ns, name)}") from None


def events(cluster: Cluster, ns: str, name: str | None = None, kind: str = "AdamWTrainingJob") -> list[dict[str, Any]]:
    """Core/v1 Events about `kind` objects (named `name`), oldest first."""
    items = cluster.get("events", namespace=ns)["items"]
    found = [e for e in items if e["involvedObject"].get("kind") == kind
             and (name is None or e["involvedObject"].get("name") == name)]
    return sorted(found, key=lambda e: (e.get("firstTimestamp") or e.get("eventTime") or "",
                                        e["metadata"].get("resourceVersion", "")))


def reasons(cluster: Cluster, ns: str, name: str) -> list[str]:
    out: list[str] = []
    for e in events(cluster, ns, name):
        out += [e["reason"]] * int(e.get("count") or 1)
    return out


def pod_creations(cluster: Cluster, ns: str) -> dict[str, set[str]]:
    """Every pod the server ever scheduled in `ns`: name -> the uids it had (from the
    scheduler's `Scheduled` Events, which outlive the pods)."""
    out: dict[str, set[str]] = {}
    for e in events(cluster, ns, kind="Pod"):
        if e["reason"] == "Scheduled":
            out.setdefault(e["involvedObject"]["name"], set()).add(e["involvedObject"]["uid"])
    return out


def checkpoint_dir(cluster: Cluster, ns: str, claim_name: str) -> Path:
    """The folder behind the claim: its bound PersistentVolume's hostPath."""
    pvc = cluster.get("pvc", claim_name, ns)
    pv = cluster.get("pv", pvc["spec"]["volumeName"])
    return Path(pv["spec"]["hostPath"]["path"])


def checkpoints(cluster: Cluster, ns: str, claim_name: str) -> list[int]:
    try:
        folder = checkpoint_dir(cluster, ns, claim_name)
    except (KubectlError, KeyError):
        return []
    return sorted(int(p.name[5:]) for p in folder.glob("step-*") if p.name[5:].isdigit())


def wait_checkpoint(cluster: Cluster, ns: str, claim_name: str, above: int = -1, timeout: float = 120) -> int:
    """The newest checkpoint step once one newer than `above` exists."""
    return cluster.wait_for(f"a checkpoint after step {above} in {claim_name}", lambda: (
        lambda steps: steps[-1] if steps and steps[-1] > above else None)(checkpoints(cluster, ns, claim_name)),
        timeout=timeout)


def worker_logs(cluster: Cluster, ns: str, pod: str) -> dict[str, str]:
    """Every run of pod `pod` on any node (pod dirs outlive the pods): uid prefix -> log."""
    out: dict[str, str] = {}
    for folder in (cluster.plane.root / "nodes").glob(f"*/pods/{ns}_{pod}_*"):
        log = folder / "container.log"
        out[folder.name.rsplit("_", 1)[1]] = log.read_text(errors="replace") if log.exists() else ""
    return out


def log_events(text: str, event: str) -> list[dict[str, Any]]:
    """The trainer's JSON log lines whose `event` is `event`."""
    out = []
    for line in text.splitlines():
        if f'"{event}"' in line and line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == event:
                out.append(record)
    return out


def kill(cluster: Cluster, ns: str, pod: str, sig: int = signal.SIGKILL) -> int:
    """Signal the pod's process itself (its pid on this machine); returns the pid."""
    pid = cluster.pid_of(ns, pod)
    os.kill(pid, sig)
    return pid


def node_of(cluster: Cluster, ns: str, pod: str) -> str:
    return cluster.get("pod", pod, ns)["spec"]["nodeName"]


def operator_pods(cluster: Cluster, namespace: str = "adamw-system") -> list[dict[str, Any]]:
    pods = cluster.get("pods", namespace=namespace, selector="app.kubernetes.io/name=adamw-operator")["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def elapsed(since: float) -> str:
    return f"{time.monotonic() - since:.1f} s"


def process_of(cluster: Cluster, pod: dict[str, Any]) -> int | None:
    """The pid of `pod`'s (this very pod's, by uid) running process, else None."""
    uid = pod["metadata"]["uid"]
    return next((int(p["pid"]) for p in cluster.pod_processes() if p["uid"] == uid and p.get("pid")), None)


def evict(cluster: Cluster, ns: str, pod: str) -> None:
    """Evict through the Eviction API (policy/v1), as `kubectl drain` and autoscalers do."""
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod, "namespace": ns}}
    cluster.kubectl("create", "--raw", f"/api/v1/namespaces/{ns}/pods/{pod}/eviction", "-f", "-",
                    input=json.dumps(eviction))


def heartbeat(cluster: Cluster, node: str, paused: bool) -> None:
    """Stop or restart the node's heartbeats (the virtual kubelet's control API): a partition."""
    import urllib.request

    request = urllib.request.Request(cluster.kubelet(node)["url"] + "/heartbeat", method="POST",
                                     data=json.dumps({"paused": paused}).encode())
    with urllib.request.urlopen(request, timeout=10) as r:  # noqa: S310 - loopback
        assert json.loads(r.read()) == {"paused": paused}


def node_ready(cluster: Cluster, node: str) -> str:
    conditions = cluster.get("node", node).get("status", {}).get("conditions") or []
    return next((c["status"] for c in conditions if c["type"] == "Ready"), "Unknown")


def gone(cluster: Cluster, kind: str, name: str, ns: str) -> bool:
    return cluster.kubectl("get", kind, name, "-n", ns, "--ignore-not-found", "-o", "name").stdout.strip() == ""
