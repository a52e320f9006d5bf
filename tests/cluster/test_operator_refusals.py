"""What the real API server refuses, and what the operator makes of it.

- a spec the schema accepts but no pod can be built from: InvalidSpec, nothing created;
- a worker pod the server refuses (a real ResourceQuota): PodRejected, said once, retried,
  cleared when the quota allows it;
- a replica that acts on a stale read of the job (a peering hand-over, a slow operator):
  the server's resourceVersion check refuses its status write, so it cannot undo a restart.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from adamw_operator.controller import Controller
from adamw_operator.kube import KubeClient

from tests.cluster.harness import Cluster
from tests.cluster.training import (
    claim,
    condition,
    kill,
    reasons,
    status,
    submit,
    training_job,
    wait_phase,
    wait_running,
    wait_status,
    workers,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(300)]
LONG = {"training": {"maxSteps": 2000}}  # still running when each test ends


def test_a_spec_no_pod_can_be_built_from_is_reported_creates_nothing_and_runs_once_fixed(operator: Cluster):
    with operator.namespace("inv") as ns:
        submit(operator, training_job("inv", ns, checkpointStorage={"volumeName": "nope"}, trainer=LONG))
        st = wait_status(operator, ns, "inv", "the InvalidSpec condition",
                         lambda s: condition(s, "InvalidSpec").get("status") == "True")
        assert "spec.checkpointStorage.volumeName" in condition(st, "InvalidSpec")["message"], st
        assert "nope" in condition(st, "InvalidSpec")["message"]
        assert workers(operator, ns, "inv") == []
        # fixing the spec lets it run (a merge patch, as `kubectl patch --type=merge` sends)
        operator.apply(claim("inv-ckpt", ns))
        operator.kubectl("patch", "awj", "inv", "-n", ns, "--type=merge", "-p",
                         '{"spec":{"checkpointStorage":{"volumeName":null,"claimName":"inv-ckpt"}}}')
        wait_running(operator, ns, "inv", attempt=0, replicas=2)
        st = wait_phase(operator, ns, "inv", "Running", timeout=60)
        assert condition(st, "InvalidSpec")["status"] == "False", st


def test_a_worker_pod_over_the_namespaces_quota_is_reported_once_then_cleared(operator: Cluster):
    with operator.namespace("quota") as ns:
        operator.apply({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "pods", "namespace": ns},
                        "spec": {"hard": {"pods": "1"}}})
        # the quota controller must have counted the namespace before admission enforces it
        operator.wait_for("the quota's status", lambda: operator.get("resourcequota", "pods", ns)
                          .get("status", {}).get("hard"))
        submit(operator, training_job("quota", ns, trainer=LONG))
        st = wait_status(operator, ns, "quota", "PodRejected",
                         lambda s: condition(s, "InvalidSpec").get("reason") == "PodRejected")
        message = condition(st, "InvalidSpec")["message"]
        assert "exceeded quota" in message and "pods=1" in message, message
        assert len(workers(operator, ns, "quota")) == 1  # the pods are created at once: one got in
        # retried on every resync (5 s here), said once
        time.sleep(11)
        assert reasons(operator, ns, "quota").count("PodRejected") == 1
        operator.kubectl("delete", "resourcequota", "pods", "-n", ns)
        wait_running(operator, ns, "quota", attempt=0, replicas=2)
        st = wait_status(operator, ns, "quota", "the condition cleared",
                         lambda s: condition(s, "InvalidSpec").get("status") == "False")
        assert "quota" not in condition(st, "InvalidSpec")["message"] and st["attempt"] == 0, st
        assert st["phase"] == "Running" and st["restarts"] == 0, st


class StaleOnce(KubeClient):
    """A replica whose first read of the job predates a restart."""

    def __init__(self, stale: dict) -> None:
        super().__init__()
        self.stale: dict | None = stale

    async def get_job(self, namespace: str, name: str) -> dict | None:
        if self.stale is not None:
            stale, self.stale = self.stale, None
            return stale
        return await super().get_job(namespace, name)


def test_a_replica_acting_on_a_stale_view_cannot_undo_a_restart(operator: Cluster, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KUBECONFIG", str(operator.kubeconfig))  # the admin, for the second controller
    with operator.namespace("race") as ns:
        submit(operator, training_job("race", ns, trainer=LONG))
        wait_running(operator, ns, "race", attempt=0, replicas=2)
        wait_phase(operator, ns, "race", "Running", timeout=60)
        stale = operator.get("awj", "race", ns)
        kill(operator, ns, "race-worker-1")
        current = {p["metadata"]["uid"] for p in wait_running(operator, ns, "race", attempt=1, replicas=2)}

        async def act_on_the_stale_view() -> None:
            other = Controller(StaleOnce(stale), default_image="adamw-trainer:dev")
            try:
                await other.reconcile(ns, "race")  # decides on attempt 0: the server refuses its write
                st = status(operator, ns, "race")
                assert st["attempt"] == 1 and st["restarts"] == 1, st
                assert {p["metadata"]["uid"] for p in workers(operator, ns, "race")} == current
                await other.reconcile(ns, "race")  # then it reads fresh and agrees
            finally:
                await other.stop()

        asyncio.run(act_on_the_stale_view())
        st = status(operator, ns, "race")
        assert st["attempt"] == 1 and st["restarts"] == 1, st
        assert {p["metadata"]["uid"] for p in workers(operator, ns, "race")} == current
