"""Session-wide fixtures. `cluster` starts one real control plane for the whole session,
only when a test asks for it (the code behind `make cluster`; see tests/cluster/harness.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from adamw_operator.cluster.control_plane import ControlPlane, NodeSpec, alive, stop_pid

from tests.cluster.harness import Cluster


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    plane = ControlPlane(tmp_path_factory.mktemp("cluster"),
                         nodes=[NodeSpec("node-1", gpus=8), NodeSpec("node-2")])
    plane.start()
    cluster = Cluster(plane)
    try:
        yield cluster
    finally:
        # Nothing may outlive the session: the components, the kubelets, their pods.
        pids = dict(plane.state.pids if plane.state else {})
        with contextlib.suppress(Exception):
            pids.update({f"pod {p['namespace']}/{p['name']}": p["pid"]
                         for p in cluster.pod_processes() if p.get("pid")})
        plane.stop(remove=False)
        left = {name: pid for name, pid in pids.items() if alive(pid)}
        for pid in left.values():
            stop_pid(pid, grace=0)
        assert not left, f"still running after the cluster stopped: {left}"


@pytest.fixture(scope="session")
def crds(cluster: Cluster) -> Cluster:
    """The CRDs from crds/ applied and Established on the real server."""
    cluster.install_crds()
    return cluster


@pytest.fixture(scope="session")
def operator(crds: Cluster) -> Cluster:
    """The chart installed by the real helm into `adamw-system`, watching every namespace;
    its operator pod Ready (the virtual kubelet runs it as this checkout's adamw-operator)."""
    crds.install_operator()
    return crds
