"""API faults the real server does not produce on demand: 409 conflicts, 500s, cut watches.

The fault proxy (`fault_proxy.py`) sits between one operator process and the real
kube-apiserver. The operator authenticates through it with a token of the chart's own
ServiceAccount, so every request it makes is still authorized by the server's RBAC.
While this runs, the chart's operator Deployment is scaled to 0, so exactly one operator
acts on the job; the fixture scales it back and waits for it to be Ready again.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from adamw_operator.cluster.control_plane import free_port

from tests.cluster.fault_proxy import FaultProxy
from tests.cluster.harness import Cluster
from tests.cluster.test_operator_resilience import SYSTEM
from tests.cluster.training import (
    kill,
    operator_pods,
    pod_creations,
    reasons,
    submit,
    training_job,
    wait_finished,
    wait_phase,
    wait_running,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(420)]
DEPLOYMENT = "deployment/adamw-operator"
JOBS_PATH = "/apis/training.adamw.io/v1alpha1/namespaces/{ns}/adamwtrainingjobs"


@contextlib.contextmanager
def chart_operator_stopped(cluster: Cluster) -> Iterator[None]:
    cluster.kubectl("scale", DEPLOYMENT, "-n", SYSTEM, "--replicas=0")
    try:
        cluster.wait_for("the chart's operator pod gone", lambda: not cluster.get(
            "pods", namespace=SYSTEM, selector="app.kubernetes.io/name=adamw-operator")["items"], timeout=90)
        yield
    finally:
        cluster.kubectl("scale", DEPLOYMENT, "-n", SYSTEM, "--replicas=1")
        cluster.kubectl("rollout", "status", DEPLOYMENT, "-n", SYSTEM, "--timeout=120s", timeout=130)


def proxied_kubeconfig(cluster: Cluster, proxy: FaultProxy, path: Path) -> Path:
    """A kubeconfig for the proxy, logged in as the chart's ServiceAccount."""
    token = cluster.kubectl("create", "token", "adamw-operator", "-n", SYSTEM, "--duration=1h").stdout.strip()
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "proxy",
        "clusters": [{"name": "proxy", "cluster": {"server": proxy.url}}],
        "users": [{"name": "adamw-operator", "user": {"token": token}}],
        "contexts": [{"name": "proxy", "context": {"cluster": "proxy", "user": "adamw-operator"}}],
    }))
    return path


@contextlib.contextmanager
def operator_process(kubeconfig: Path, namespace: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`adamw-operator` as the chart runs it (standalone, one namespace), outside a pod."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "adamw_operator.cli", "-n", namespace, "--standalone",
             "--metrics-port", str(free_port()), "--liveness-port", str(free_port()),
             "--default-trainer-image", "adamw-trainer:dev", "--log-format", "plain",
             "--poll-interval", "0.5", "--resync-interval", "5"],
            env={**os.environ, "KUBECONFIG": str(kubeconfig)}, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_conflicts_server_errors_and_cut_watches_change_nothing_the_user_sees(operator: Cluster, tmp_path: Path):
    ca = str(operator.plane.root / "pki" / "ca.crt")
    with operator.namespace("faults") as ns, chart_operator_stopped(operator), \
            FaultProxy(operator.server, ca) as proxy, \
            operator_process(proxied_kubeconfig(operator, proxy, tmp_path / "kubeconfig"), ns,
                             tmp_path / "operator.log") as proc:
        jobs = JOBS_PATH.format(ns=ns)
        status_writes = proxy.fail("PATCH", rf"{jobs}/flaky/status$", 409, times=2)
        pod_creates = proxy.fail("POST", rf"/api/v1/namespaces/{ns}/pods$", 500, times=2)
        submit(operator, training_job("flaky", ns, trainer={"training": {"maxSteps": 300}}))
        wait_running(operator, ns, "flaky", attempt=0, replicas=2)
        wait_phase(operator, ns, "flaky", "Running", timeout=60)
        assert status_writes.fired == 2 and pod_creates.fired == 2, proxy.faults
        # the API server "restarts" under the operator: every watch is cut, reads fail a while
        assert proxy.drop_watches() >= 2
        reads = proxy.fail("GET", rf"{jobs}(/flaky)?$", 500, times=3)
        time.sleep(1)
        kill(operator, ns, "flaky-worker-1")
        wait_running(operator, ns, "flaky", attempt=1, replicas=2)
        st = wait_finished(operator, ns, "flaky")
        assert proc.poll() is None, (tmp_path / "operator.log").read_text()[-3000:]
        assert reads.fired >= 1, proxy.faults
        watches = [p for m, p in proxy.requests if m == "GET" and "watch=" in p and jobs in p]
        assert len(watches) >= 2, "the job watch was never re-established"
        assert st["phase"] == "Succeeded" and st["restarts"] == 1 and st["attempt"] == 1, st
        assert reasons(operator, ns, "flaky").count("CrashedRestart") == 1
        # no duplicates anywhere: each worker pod created once per attempt
        assert {name: len(uids) for name, uids in pod_creations(operator, ns).items()} == \
            {"flaky-worker-0": 2, "flaky-worker-1": 2}
    assert len(operator_pods(operator)) == 1  # the chart's operator is back
