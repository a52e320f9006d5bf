"""The operator's own troubles on the real control plane: its process SIGKILLed mid-job.

The job must still finish as it would have, and no worker pod may be created twice (the
scheduler's `Scheduled` Events count every pod the server ever held).
"""

from __future__ import annotations

import pytest

from tests.cluster.harness import Cluster
from tests.cluster.training import (
    kill,
    operator_pods,
    pod_creations,
    reasons,
    status,
    submit,
    training_job,
    wait_finished,
    wait_phase,
    wait_running,
    wait_status,
    workers,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(400)]
SYSTEM = "adamw-system"


def _created(cluster: Cluster, ns: str) -> dict[str, int]:
    return {name: len(uids) for name, uids in pod_creations(cluster, ns).items()}


def _restart_count(pod: dict) -> int:
    return sum(c.get("restartCount", 0) for c in pod.get("status", {}).get("containerStatuses") or [])


def test_operator_killed_mid_job_comes_back_in_place_and_creates_no_duplicates(operator: Cluster):
    with operator.namespace("opkill") as ns:
        submit(operator, training_job("opkill", ns, trainer={"training": {"maxSteps": 400}}))
        wait_running(operator, ns, "opkill", attempt=0, replicas=2)
        wait_phase(operator, ns, "opkill", "Running", timeout=60)
        pod = operator_pods(operator)[0]
        before = _restart_count(pod)
        kill(operator, SYSTEM, pod["metadata"]["name"])  # the operator's process: no shutdown at all
        # while it is down, a worker crashes: the operator that comes back must restart the gang once
        kill(operator, ns, "opkill-worker-1")
        operator.wait_for("the operator restarted in place", lambda: (lambda p: _restart_count(p) > before and _ready(
            [p]))(operator.get("pod", pod["metadata"]["name"], SYSTEM)), timeout=90)
        assert [p["metadata"]["uid"] for p in operator_pods(operator)] == [pod["metadata"]["uid"]]
        st = wait_finished(operator, ns, "opkill")
        assert st["phase"] == "Succeeded", st
        assert st["restarts"] == 1 and st["attempt"] == 1, st
        assert _created(operator, ns) == {"opkill-worker-0": 2, "opkill-worker-1": 2}
        assert reasons(operator, ns, "opkill").count("CrashedRestart") == 1


def test_the_api_server_restarted_mid_job_every_watch_recovers(operator: Cluster):
    """kube-apiserver stopped and started again (an upgrade, a crash) while a job trains:
    the operator's and the kubelets' watches must come back, or the crash after it is missed."""
    with operator.namespace("apirestart") as ns:
        submit(operator, training_job("apirestart", ns, trainer={"training": {"maxSteps": 3000}}))
        wait_running(operator, ns, "apirestart", attempt=0, replicas=2)
        wait_phase(operator, ns, "apirestart", "Running", timeout=60)
        before = {p["metadata"]["uid"] for p in workers(operator, ns, "apirestart", 0)}
        operator.plane.restart("kube-apiserver", down_seconds=3)
        # the trainers never noticed: the same pods, the same processes
        again = wait_running(operator, ns, "apirestart", attempt=0, replicas=2, timeout=60)
        assert {p["metadata"]["uid"] for p in again} == before
        # Wait until kube-scheduler has caught up (a new pod gets scheduled) before the
        # crash: kube-scheduler v1.37.2, when a pod is deleted and recreated under the same
        # name while its own pod watch is still down, files the new pod as the old
        # scheduled one ("Scheduler cache is corrupted") and never schedules it, nor the
        # pods after it (tests/cluster/README.md). The operator's watches are what this tests.
        _scheduler_caught_up(operator, ns)
        kill(operator, ns, "apirestart-worker-1")
        wait_running(operator, ns, "apirestart", attempt=1, replicas=2, timeout=150)
        st = status(operator, ns, "apirestart")
        assert st["phase"] == "Running" and st["restarts"] == 1 and st["attempt"] == 1, st
        assert st["lastFailure"]["rank"] == 1 and st["lastFailure"]["exitCode"] == 137, st
        # and rank 0's progress is polled again, through the restarted server
        wait_status(operator, ns, "apirestart", "progress of attempt 1", lambda s: s.get("progressAttempt") == 1,
                    timeout=90)
        workers_created = {k: v for k, v in _created(operator, ns).items() if k != "canary"}
        assert workers_created == {"apirestart-worker-0": 2, "apirestart-worker-1": 2}


def _scheduler_caught_up(cluster: Cluster, ns: str) -> None:
    canary = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "canary", "namespace": ns},
              "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 0, "containers": [
                  {"name": "c", "image": "adamw-trainer:dev", "command": ["python", "-c", "pass"]}]}}
    cluster.apply(canary)
    cluster.wait_for("kube-scheduler to schedule a new pod", lambda: cluster.get("pod", "canary", ns)
                     ["spec"].get("nodeName"), timeout=90)
    cluster.kubectl("delete", "pod", "canary", "-n", ns, "--wait=false")


def _reconciles(cluster: Cluster, pod: dict) -> float:
    """The replica's own count of reconciles, from its /metrics (pod IP, chart's port)."""
    import urllib.request

    with urllib.request.urlopen(f"http://{pod['status']['podIP']}:9100/metrics", timeout=5) as r:  # noqa: S310
        text = r.read().decode()
    return next(float(line.split()[-1]) for line in text.splitlines()
                if line.startswith("adamw_operator_reconcile_duration_seconds_count"))


def _ready(pods: list[dict]) -> bool:
    return all(c.get("ready") for p in pods for c in p.get("status", {}).get("containerStatuses") or [{}])


def test_two_replicas_with_peering_one_acts_and_the_other_takes_over(operator: Cluster):
    ha = ("--set", "replicaCount=2", "--set", "peering.enabled=true")
    try:
        operator.install_operator(SYSTEM, "adamw-operator", *ha, upgrade=True)
        pods = operator.wait_for("two Ready operator replicas", lambda: (
            lambda ps: ps if len(ps) == 2 and _ready(ps) else None)(operator_pods(operator)), timeout=120)
        with operator.namespace("ha") as ns:
            submit(operator, training_job("ha", ns, trainer={"training": {"maxSteps": 2000}}))
            wait_running(operator, ns, "ha", attempt=0, replicas=2)
            wait_phase(operator, ns, "ha", "Running", timeout=60)
            counts = {p["metadata"]["name"]: _reconciles(operator, p) for p in pods}
            acting = [name for name, n in counts.items() if n > 0]
            assert len(acting) == 1, counts  # the other one is paused: it saw nothing, did nothing
            standby = next(p for p in pods if p["metadata"]["name"] not in acting)
            # a rolling restart: the leader leaves the peering on its way out (SIGTERM)
            operator.kubectl("delete", "pod", acting[0], "-n", SYSTEM, "--wait=true", timeout=90)
            kill(operator, ns, "ha-worker-1")
            wait_running(operator, ns, "ha", attempt=1, replicas=2, timeout=120)
            st = status(operator, ns, "ha")
            assert st["restarts"] == 1 and st["attempt"] == 1, st
            assert _reconciles(operator, standby) > 0
            assert _created(operator, ns) == {"ha-worker-0": 2, "ha-worker-1": 2}
    finally:
        operator.install_operator(SYSTEM, "adamw-operator", "--set", "replicaCount=1",
                                  "--set", "peering.enabled=false", upgrade=True)
        operator.wait_for("one operator replica", lambda: (
            lambda ps: len(ps) == 1 and _ready(ps))(operator_pods(operator)), timeout=120)
