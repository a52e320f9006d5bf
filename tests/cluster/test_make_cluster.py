"""`make cluster` / `make cluster-down` as a newcomer meets them: up, up again, status,
down, nothing left running; and a clear failure when the binaries cannot be built."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from adamw_operator.cluster.control_plane import alive

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "adamw_operator.cluster", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env or os.environ.copy())


def test_up_twice_reuses_status_answers_and_down_leaves_nothing(tmp_path: Path):
    root = tmp_path / "c"
    first = cli("up", "--root", str(root), "--nodes", "1")
    assert first.returncode == 0, first.stderr
    assert "export KUBECONFIG=" in first.stdout and "kubectl apply -f examples/quickstart.yaml" in first.stdout
    state = json.loads((root / "state.json").read_text())
    pids = state["pids"]
    assert {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet-node-1"} <= set(pids)
    assert all(alive(p) for p in pids.values())
    try:
        again = cli("up", "--root", str(root), "--nodes", "1")
        assert again.returncode == 0 and "already running" in again.stdout
        assert json.loads((root / "state.json").read_text())["pids"] == pids  # reused, nothing new
        status = cli("status", "--root", str(root))
        assert status.returncode == 0 and state["server"] in status.stdout
        kubeconfig = (root / "kubeconfig").read_text()
        assert state["server"] in kubeconfig
    finally:
        down = cli("down", "--root", str(root))
    assert down.returncode == 0, down.stderr
    assert not any(alive(p) for p in pids.values()), "a cluster process outlived make cluster-down"
    assert not root.exists()
    assert "No cluster" in cli("status", "--root", str(root)).stdout


def test_a_stale_state_file_is_cleaned_up_not_trusted(tmp_path: Path):
    root = tmp_path / "stale"
    root.mkdir()
    (root / "state.json").write_text(json.dumps({"server": "https://127.0.0.1:1", "api_port": 1,
                                                 "etcd_port": 2, "pids": {"kube-apiserver": 999999},
                                                 "nodes": []}))
    status = cli("status", "--root", str(root))
    assert status.returncode == 1 and "No cluster is running" in status.stdout
    assert cli("down", "--root", str(root)).returncode == 0
    assert not root.exists()


def test_unbuildable_binaries_fail_naming_the_step_and_the_retry(tmp_path: Path):
    env = {**os.environ, "ADAMW_KUBE_CACHE": str(tmp_path / "empty-cache"), "GOPROXY": "off",
           "GOFLAGS": "-mod=mod", "GOMODCACHE": str(tmp_path / "gomod")}
    result = cli("up", "--root", str(tmp_path / "c"), env=env, timeout=120)
    assert result.returncode != 0
    err = result.stderr
    assert "step 'download k8s.io/kubernetes@" in err, err
    assert "retry with" in err.lower() and "install_kubernetes.sh" in err
    assert not (tmp_path / "c" / "state.json").exists()
