"""A local Kubernetes control plane from upstream binaries: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, plus virtual kubelets that run pods as processes.

    plane = ControlPlane(Path(".cluster"), nodes=[NodeSpec("node-1")])
    plane.start()                  # prints nothing; raises ClusterError naming the failed step
    plane.kubeconfig               # admin kubeconfig (system:masters)
    plane.stop()                   # every process it started, then (remove=True) its state

Everything is upstream and real except the kubelets (`cluster/kubelet/`, which says what
it does not do). The API server listens on loopback with TLS from a locally made CA,
authorizes with Node,RBAC, and signs service-account tokens, so `kubectl create token`,
projected tokens and the chart's RBAC all work as on a cluster. Ports are picked free
each start. `start(detach=True)` (`make cluster`) leaves the processes running after
this process exits; otherwise they die with it.

Shortened timings for a one-machine cluster (a real cluster keeps the defaults): a node
that stops heartbeating is marked Unknown after `node_monitor_grace_seconds` instead of
50 s, and its pods are evicted after `unreachable_toleration_seconds` instead of 300 s.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..local.pod_process import _die_with_parent
from .binaries import find_binaries
from .kubeconfig import write_kubeconfig
from .pki import PKI, CertPair, PKIError

SERVICE_CIDR = "10.96.0.0/16"
ISSUER = "https://kubernetes.default.svc.cluster.local"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")


class ClusterError(RuntimeError):
    """A step of bringing the cluster up failed; the message names it and the log."""


@dataclass(frozen=True)
class NodeSpec:
    """A virtual node: its name and the capacity it reports to the scheduler."""

    name: str
    cpu: str = "16"
    memory: str = "64Gi"
    gpus: int = 0

    def capacity(self) -> str:
        parts = [f"cpu={self.cpu}", f"memory={self.memory}", "pods=110"]
        if self.gpus:
            parts.append(f"nvidia.com/gpu={self.gpus}")
        return ",".join(parts)


@dataclass
class ClusterState:
    """What `state.json` records, so a later `make cluster`/`cluster-down` can find it."""

    server: str
    api_port: int
    etcd_port: int
    pids: dict[str, int] = field(default_factory=dict)
    nodes: list[str] = field(default_factory=list)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by us) is not alive.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
            return False
    return True


def stop_pid(pid: int, grace: float = 10.0) -> None:
    """SIGTERM the process group, wait up to `grace`, then SIGKILL it."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            if not alive(pid):
                return
            time.sleep(0.05)


class ControlPlane:
    def __init__(self, root: Path, *, nodes: list[NodeSpec] | None = None,
                 bin_dir: Path | None = None, node_monitor_grace_seconds: int = 10,
                 unreachable_toleration_seconds: int = 20, python: str | None = None) -> None:
        self.root = root.resolve()
        self.nodes = nodes if nodes is not None else [NodeSpec("node-1")]
        self._bin_dir = bin_dir
        self.node_monitor_grace_seconds = node_monitor_grace_seconds
        self.unreachable_toleration_seconds = unreachable_toleration_seconds
        self.python = python or sys.executable
        self.pki = PKI(self.root / "pki")
        self.front_proxy = PKI(self.root / "pki" / "front-proxy")
        self.logs = self.root / "logs"
        self.state_file = self.root / "state.json"
        self.kubeconfig = self.root / "kubeconfig"
        self.state: ClusterState | None = None
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._argv: dict[str, list[str]] = {}
        self._detach = False
        self._ssl_ctx: ssl.SSLContext | None = None

    # ---- finding a running one -------------------------------------------------------

    def load_state(self) -> ClusterState | None:
        if not self.state_file.exists():
            return None
        data = json.loads(self.state_file.read_text())
        return ClusterState(**data)

    def running(self) -> ClusterState | None:
        """The state of a cluster under this root whose API server answers, else None."""
        state = self.load_state()
        if state is None or not alive(state.pids.get("kube-apiserver", -1)):
            return None
        try:
            self._get(state.server, "/readyz", timeout=3)
        except (OSError, ClusterError):
            return None
        self.state = state
        return state

    # ---- start -----------------------------------------------------------------------

    def start(self, *, detach: bool = False, timeout: float = 120.0) -> ClusterState:
        bins = find_binaries(self._bin_dir)
        self.logs.mkdir(parents=True, exist_ok=True)
        api_port, etcd_port, peer_port = free_port(), free_port(), free_port()
        server = f"https://127.0.0.1:{api_port}"
        self.state = ClusterState(server=server, api_port=api_port, etcd_port=etcd_port)
        self._detach = detach
        try:
            certs = self._make_certs()
            self._spawn("etcd", [
                str(bins["etcd"]), "--name", "local", "--data-dir", str(self.root / "etcd"),
                "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
                "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
                "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
                "--initial-cluster", f"local=http://127.0.0.1:{peer_port}",
                "--log-level", "warn",
                # One throwaway member on one disk: fsync buys nothing a test can see.
                "--unsafe-no-fsync",
            ])
            self._wait("etcd", lambda: self._http_ok(f"http://127.0.0.1:{etcd_port}/health"), timeout)
            pki = self.pki.root
            self._spawn("kube-apiserver", [
                str(bins["kube-apiserver"]),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                f"--tls-cert-file={certs['apiserver'].cert}",
                f"--tls-private-key-file={certs['apiserver'].key}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--kubelet-client-certificate={certs['apiserver-kubelet-client'].cert}",
                f"--kubelet-client-key={certs['apiserver-kubelet-client'].key}",
                # The aggregation layer's front proxy, with a CA of its own as kubeadm does
                # (without it every component logs a missing requestheader CA bundle).
                f"--requestheader-client-ca-file={self.front_proxy.ca.cert}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={certs['front-proxy-client'].cert}",
                f"--proxy-client-key-file={certs['front-proxy-client'].key}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                f"--service-account-issuer={ISSUER}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # The `kubernetes` Service's endpoints would be 127.0.0.1, which the
                # API server refuses in Endpoints; pods reach it through the kubelet's
                # KUBERNETES_SERVICE_HOST/PORT instead (kube-proxy's job on a cluster).
                "--endpoint-reconciler-type=none",
                "--allow-privileged=true",
                f"--default-not-ready-toleration-seconds={self.unreachable_toleration_seconds}",
                f"--default-unreachable-toleration-seconds={self.unreachable_toleration_seconds}",
                "--profiling=false", "--v=1",
            ])
            self._wait("kube-apiserver", lambda: self._api_ready(server), timeout)
            admin = certs["admin"]
            write_kubeconfig(self.kubeconfig, server=server, ca=pki / "ca.crt",
                             user="kubernetes-admin", cert=admin)
            kcm_kc = write_kubeconfig(self.root / "kubeconfigs" / "controller-manager", server=server,
                                      ca=pki / "ca.crt", user="system:kube-controller-manager",
                                      cert=certs["controller-manager"])
            sched_kc = write_kubeconfig(self.root / "kubeconfigs" / "scheduler", server=server,
                                        ca=pki / "ca.crt", user="system:kube-scheduler",
                                        cert=certs["scheduler"])
            self._spawn("kube-controller-manager", [
                str(bins["kube-controller-manager"]),
                f"--kubeconfig={kcm_kc}", f"--authentication-kubeconfig={kcm_kc}",
                f"--authorization-kubeconfig={kcm_kc}",
                "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                "--use-service-account-credentials=true",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--leader-elect=false", "--controllers=*",
                "--node-monitor-period=2s",
                f"--node-monitor-grace-period={self.node_monitor_grace_seconds}s",
                "--concurrent-gc-syncs=5", "--v=1",
            ])
            self._spawn("kube-scheduler", [
                str(bins["kube-scheduler"]),
                f"--kubeconfig={sched_kc}", f"--authentication-kubeconfig={sched_kc}",
                f"--authorization-kubeconfig={sched_kc}",
                "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
                "--leader-elect=false", "--v=1",
            ])
            self._grant_cluster_dns(server)
            self._spawn("provisioner", [
                self.python, "-m", "adamw_operator.cluster.provisioner",
                "--kubeconfig", str(self.kubeconfig), "--root", str(self.root / "volumes"),
            ])
            for node in self.nodes:
                self.start_kubelet(node)
            self._write_state()
            self._wait("the default ServiceAccount", lambda: self._has_default_sa(server), timeout)
            if self.nodes:
                self._wait("the nodes to be Ready", lambda: self._nodes_ready(server), timeout)
        except BaseException:
            self.stop(remove=False)
            raise
        return self.state

    def start_kubelet(self, node: NodeSpec) -> None:
        """A virtual kubelet process for `node`, with its own node client certificate."""
        assert self.state is not None
        cert = self.pki.client(f"kubelet-{node.name}", f"system:node:{node.name}", "system:nodes")
        kc = write_kubeconfig(self.root / "kubeconfigs" / f"kubelet-{node.name}",
                              server=self.state.server, ca=self.pki.ca.cert,
                              user=f"system:node:{node.name}", cert=cert)
        self._spawn(f"kubelet-{node.name}", [
            self.python, "-m", "adamw_operator.cluster.kubelet", "--kubeconfig", str(kc),
            "--node", node.name, "--root", str(self.root / "nodes" / node.name),
            "--capacity", node.capacity(),
            "--dns-kubeconfig", str(self.root / "kubeconfigs" / "cluster-dns"),
        ])
        if node.name not in self.state.nodes:
            self.state.nodes.append(node.name)

    def _grant_cluster_dns(self, server: str) -> None:
        """The cluster-DNS stand-in (inside the kubelets) reads what CoreDNS reads, under
        an identity and ClusterRole of its own, as CoreDNS's `system:coredns` does."""
        user = "system:adamw-cluster-dns"
        write_kubeconfig(self.root / "kubeconfigs" / "cluster-dns", server=server, ca=self.pki.ca.cert,
                         user=user, cert=self.pki.client("cluster-dns", user))
        rbac = "/apis/rbac.authorization.k8s.io/v1"
        self._post(server, f"{rbac}/clusterroles", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": user},
            "rules": [{"apiGroups": [""], "resources": ["pods", "services", "namespaces", "endpoints"],
                       "verbs": ["get", "list", "watch"]},
                      {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                       "verbs": ["get", "list", "watch"]}]})
        self._post(server, f"{rbac}/clusterrolebindings", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": user},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": user},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]})

    def _post(self, server: str, path: str, body: dict[str, Any]) -> None:
        request = urllib.request.Request(server + path, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(request, context=self._ssl(), timeout=10).close()
        except urllib.error.HTTPError as e:
            if e.code != 409:  # already there (a restart of the same cluster)
                raise ClusterError(f"POST {path}: HTTP {e.code}: {e.read()[:500]!r}") from e

    def _make_certs(self) -> dict[str, CertPair]:
        try:
            self.pki.ensure_ca()
            return {
                "apiserver": self.pki.issue(
                    "apiserver", common_name="kube-apiserver", server=True,
                    dns=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                         "kubernetes.default.svc.cluster.local"),
                    ips=("127.0.0.1", "10.96.0.1")),
                "apiserver-kubelet-client": self.pki.client(
                    "apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters"),
                "admin": self.pki.client("admin", "kubernetes-admin", "system:masters"),
                "front-proxy-client": self.front_proxy.client("front-proxy-client", "front-proxy-client"),
                "controller-manager": self.pki.client("controller-manager", "system:kube-controller-manager"),
                "scheduler": self.pki.client("scheduler", "system:kube-scheduler"),
            }
        except PKIError as e:
            raise ClusterError(f"generate certificates: {e}") from e

    # ---- stop ------------------------------------------------------------------------

    def stop(self, *, remove: bool = True) -> None:
        """Stop every process of this cluster (kubelets first, so they stop their pods)."""
        state = self.state or self.load_state()
        pids: dict[str, int] = dict(state.pids) if state else {}
        for name, proc in self._procs.items():
            pids.setdefault(name, proc.pid)
        for name in sorted(pids, key=_stop_order):
            stop_pid(pids[name], grace=20.0 if name.startswith("kubelet-") else 10.0)
        for proc in self._procs.values():
            with contextlib.suppress(Exception):
                proc.wait(timeout=1)
        self._procs.clear()
        if remove and self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)
        elif state is not None and self.state_file.exists():
            self.state_file.unlink()

    def restart(self, name: str, *, down_seconds: float = 0.0, timeout: float = 60.0) -> None:
        """Stop one component (SIGTERM, then SIGKILL), wait `down_seconds`, start it again
        with the same flags and port: what a control-plane upgrade or crash looks like to
        clients (watches cut, connections refused, then the same server again)."""
        assert self.state is not None
        stop_pid(self.state.pids[name])
        self._procs.pop(name, None)
        time.sleep(down_seconds)
        self._spawn(name, self._argv[name])
        self._write_state()
        if name == "kube-apiserver":
            self._wait("kube-apiserver", lambda: self._api_ready(self.state.server), timeout)

    # ---- helpers ---------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> None:
        self._argv[name] = argv
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 (the child keeps it)
        preexec: Callable[[], None] | None = None if self._detach else _die_with_parent
        try:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, preexec_fn=preexec, cwd=self.root)
        except OSError as e:
            raise ClusterError(f"start {name}: {e}") from e
        finally:
            log.close()
        self._procs[name] = proc
        assert self.state is not None
        self.state.pids[name] = proc.pid

    def _wait(self, what: str, ready: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise ClusterError(
                        f"{name} exited with code {proc.returncode} while waiting for {what}; "
                        f"its log: {self.logs / (name + '.log')}\n{_tail(self.logs / (name + '.log'))}")
            with contextlib.suppress(OSError, ClusterError, ValueError):
                if ready():
                    return
            time.sleep(0.2)
        raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}; logs: {self.logs}")

    def _write_state(self) -> None:
        assert self.state is not None
        self.state_file.write_text(json.dumps(asdict(self.state), indent=2))

    def _ssl(self) -> ssl.SSLContext:
        """The admin's TLS context, made once (the readiness polls call this every 0.2 s)."""
        if self._ssl_ctx is None:
            ctx = ssl.create_default_context(cafile=str(self.pki.ca.cert))
            admin = self.pki.client("admin", "kubernetes-admin", "system:masters")
            ctx.load_cert_chain(str(admin.cert), str(admin.key))
            self._ssl_ctx = ctx
        return self._ssl_ctx

    def _get(self, server: str, path: str, timeout: float = 5) -> Any:
        try:
            with urllib.request.urlopen(server + path, context=self._ssl(), timeout=timeout) as r:
                body = r.read()
        except urllib.error.HTTPError as e:
            raise ClusterError(f"GET {path}: HTTP {e.code}") from e
        try:
            return json.loads(body)
        except ValueError:
            return body.decode()

    @staticmethod
    def _http_ok(url: str) -> bool:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200

    def _api_ready(self, server: str) -> bool:
        return self._get(server, "/readyz", timeout=2) == "ok"

    def _has_default_sa(self, server: str) -> bool:
        return bool(self._get(server, "/api/v1/namespaces/default/serviceaccounts/default"))

    def _nodes_ready(self, server: str) -> bool:
        nodes = self._get(server, "/api/v1/nodes")["items"]
        ready = {n["metadata"]["name"] for n in nodes
                 if any(c["type"] == "Ready" and c["status"] == "True"
                        for c in n.get("status", {}).get("conditions", []))}
        return all(n.name in ready for n in self.nodes)


def _stop_order(name: str) -> int:
    """Kubelets (they stop their pods first) and the provisioner, then the components in
    reverse start order: scheduler, controller-manager, API server, etcd last."""
    return 1 + COMPONENTS[::-1].index(name) if name in COMPONENTS else 0


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""
