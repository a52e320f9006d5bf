"""The test session's real control plane, and the real kubectl and helm pointed at it.

One `ControlPlane` (the code behind `make cluster`) per test session: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and two virtual kubelets. Tests isolate themselves
in namespaces of their own (`Cluster.namespace()`), never by starting another cluster.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from adamw_operator.cluster.binaries import default_bin_dir
from adamw_operator.cluster.control_plane import ControlPlane

from tests.chart.helm import CHART, helm_bin

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "crds"
_names = itertools.count(1)
# The chart as a user installs it, with this checkout's images and test-speed timers.
OPERATOR_VALUES = (
    "--set", "image.repository=adamw-operator", "--set", "image.tag=dev",
    "--set", "trainerImage.repository=adamw-trainer", "--set", "trainerImage.tag=dev",
    "--set", "operator.logFormat=plain",
    "--set-json", 'operator.extraArgs=["--poll-interval=0.5","--resync-interval=5"]',
)


class KubectlError(AssertionError):
    def __init__(self, args: list[str], proc: subprocess.CompletedProcess[str]) -> None:
        self.stderr = proc.stderr
        self.stdout = proc.stdout
        super().__init__(f"kubectl {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")


class Cluster:
    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.kubeconfig = plane.kubeconfig
        self.env = {**os.environ, "KUBECONFIG": str(self.kubeconfig),
                    # kubectl's discovery cache lives per user; keep it inside the cluster's folder
                    "KUBECACHEDIR": str(plane.root / "kube-cache"), "HOME": str(plane.root)}

    @property
    def server(self) -> str:
        assert self.plane.state is not None
        return self.plane.state.server

    # ---- real clients ----------------------------------------------------------------

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 60, as_user: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = [str(default_bin_dir() / "kubectl"), *args]
        if as_user:
            argv.append(f"--as={as_user}")
        proc = subprocess.run(argv, input=input, capture_output=True, text=True, env=self.env,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise KubectlError(list(args), proc)
        return proc

    def helm(self, *args: str, check: bool = True, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([helm_bin(), *args], capture_output=True, text=True, env=self.env,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def get(self, kind: str, name: str | None = None, namespace: str | None = None,
            selector: str | None = None) -> Any:
        args = ["get", kind, *([name] if name else []), "-o", "json"]
        if namespace:
            args += ["-n", namespace]
        if selector:
            args += ["-l", selector]
        return json.loads(self.kubectl(*args).stdout)

    def apply(self, manifest: dict[str, Any] | str, namespace: str | None = None,
              check: bool = True) -> subprocess.CompletedProcess[str]:
        text = manifest if isinstance(manifest, str) else yaml.safe_dump(manifest)
        ns = ["-n", namespace] if namespace else []
        return self.kubectl("apply", "--server-side", "--field-manager=tests", *ns, "-f", "-",
                            input=text, check=check)

    def wait_for(self, what: str, probe: Callable[[], Any], timeout: float = 60,
                 interval: float = 0.3) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            with contextlib.suppress(KubectlError):
                last = probe()
                if last:
                    return last
            time.sleep(interval)
        raise TimeoutError(f"timed out after {timeout} s waiting for {what}; last: {str(last)[:2000]}")

    # ---- isolation -------------------------------------------------------------------

    @contextlib.contextmanager
    def namespace(self, prefix: str = "t", keep: bool = False) -> Iterator[str]:
        """A fresh namespace for one test, deleted afterwards (without waiting)."""
        name = f"{prefix}-{next(_names)}-{os.getpid() % 10000}"
        self.kubectl("create", "namespace", name)
        try:
            yield name
        finally:
            if not keep:
                self.kubectl("delete", "namespace", name, "--wait=false", check=False)

    def install_operator(self, namespace: str = "adamw-system", release: str = "adamw-operator",
                         *values: str, upgrade: bool = False) -> None:
        """`helm install` the chart from this checkout: the operator then runs as a pod (the
        virtual kubelet maps the chart's image to this checkout's `adamw-operator`) under
        the chart's ServiceAccount and RBAC."""
        verb = ("upgrade", "--install") if upgrade else ("install",)
        self.helm(*verb, release, str(CHART), "--namespace", namespace, "--create-namespace",
                  *OPERATOR_VALUES, *values, "--wait", "--timeout", "180s")

    def kubelet(self, node: str) -> dict[str, Any]:
        """The virtual kubelet's control file (`url`, `pid`, `root`) for `node`."""
        return json.loads((self.plane.root / "nodes" / node / "control.json").read_text())

    def pod_processes(self) -> list[dict[str, Any]]:
        """Every pod the virtual kubelets run: namespace, name, uid, podIP, phase, pid, dir."""
        import urllib.request

        out: list[dict[str, Any]] = []
        for node in self.plane.state.nodes if self.plane.state else []:
            with urllib.request.urlopen(self.kubelet(node)["url"] + "/pods", timeout=5) as r:
                out += [{**p, "node": node} for p in json.loads(r.read())]
        return out

    def pid_of(self, namespace: str, pod: str) -> int:
        found = [p for p in self.pod_processes() if p["namespace"] == namespace and p["name"] == pod
                 and p.get("pid")]
        if not found:
            raise LookupError(f"no running process for pod {namespace}/{pod}")
        return int(found[0]["pid"])

    def install_crds(self) -> None:
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRDS))
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                     "crd/adamwtrainingjobs.training.adamw.io")
        # Established comes before the server publishes the OpenAPI document for the new
        # type (what `kubectl explain` and strict field validation read): wait for that too.
        self.wait_for("the CRD's OpenAPI schema", lambda: self.kubectl("explain", "awj.spec", check=False)
                      .returncode == 0, timeout=60)


__all__ = ["CHART", "Cluster", "ControlPlane"]
