"""The kubelet loop: the Node, its Lease, the pod watch, and the control API."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import platform
import signal
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from adamw_operator.local.pod_status import now_iso

from . import dns, server
from .api import ApiClient, ApiError, KubeConfig, retrying
from .pods import PodWorker
from .volumes import TokenSource

logger = logging.getLogger(__name__)

Obj = dict[str, Any]

KUBELET_VERSION = "v1.37.2"  # the control plane's release (scripts/install_kubernetes.sh)
LEASE_SECONDS = 40
DEFAULT_CAPACITY = {"cpu": "16", "memory": "64Gi", "nvidia.com/gpu": "8", "pods": "110",
                    "ephemeral-storage": "100Gi"}


@dataclass
class Options:
    node: str
    root: Path
    capacity: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_CAPACITY))
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[Obj] = field(default_factory=list)
    pod_cidr: str | None = None  # 127.X.0.0/16; default: the first one free on this machine
    python_bin: Path | None = None  # the venv's bin, where the images' entry points live
    heartbeat_seconds: float = 2.0  # Lease renewals
    node_status_seconds: float = 10.0  # Node status (conditions' heartbeat) writes
    poll_seconds: float = 0.5  # re-check of a waiting pod (ConfigMaps, peers' DNS names)
    restart_backoff: float = 1.0  # in-place restart backoff, doubling...
    restart_backoff_max: float = 10.0  # ...up to this (a real kubelet: 10 s up to 5 min)
    probe_period_max: float | None = None  # cap on probes' periodSeconds (faster tests)
    control_port: int = 0
    shutdown_grace: float = 5.0


CIDR_LOCKS = Path(tempfile.gettempdir()) / "adamw-virtual-kubelet"
_held_locks: list[Any] = []  # open lock files: the ranges this process holds until it exits


def claim_pod_cidr(wanted: str | None = None, previous: str | None = None) -> str:
    """A 127.X.0.0/16 no other virtual kubelet on this machine holds (an flock per range),
    `previous` (this node's range before a restart) first if it is still free.

    Every cluster on the machine shares the loopback interface: two clusters' pods with
    the same IP would answer each other's probes and steal each other's ports.
    """
    CIDR_LOCKS.mkdir(parents=True, exist_ok=True)
    candidates = [wanted] if wanted else [*([previous] if previous else []),
                                          *(f"127.{x}.0.0/16" for x in range(20, 255))]
    for cidr in candidates:
        lock = open(CIDR_LOCKS / cidr.replace("/", "_"), "w")  # noqa: SIM115 - held for life
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            continue
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        _held_locks.append(lock)
        return cidr
    raise RuntimeError(f"pod CIDR {wanted} is held by another virtual kubelet on this machine" if wanted
                       else "every 127.X.0.0/16 pod range is held by another virtual kubelet")


def _addresses(cidr: str) -> Iterator[str]:
    net = ipaddress.ip_network(cidr)
    if not net.subnet_of(ipaddress.ip_network("127.0.0.0/8")):
        raise ValueError(f"--pod-cidr {cidr}: pod IPs must be loopback addresses (127.0.0.0/8)")
    while True:
        for host in net.hosts():
            if int(host) & 0xFF not in (0, 1, 255):
                yield str(host)


class Kubelet:
    def __init__(self, api: ApiClient, options: Options, *, dns_api: ApiClient | None = None) -> None:
        self.api = api
        self.dns_api = dns_api
        self.options = options
        self.node = options.node
        self.root = Path(options.root).resolve()
        self.host_ip = "127.0.0.1"
        self.workers: dict[str, PodWorker] = {}
        self.paused = False
        self.reachable = asyncio.Event()  # cleared while paused: a partitioned node reaches nothing
        self.reachable.set()
        self._held: dict[str, tuple[str, Obj]] = {}  # pod events that arrived while paused
        self.mount_namespace_error: str | None = None
        self.pod_cidr = options.pod_cidr or claim_pod_cidr()
        self._addresses = _addresses(self.pod_cidr)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._node_uid: str | None = None
        self._node_conditions: dict[str, Obj] = {}
        self._ready_since = now_iso()
        self._control: web.AppRunner | None = None
        self._server: web.AppRunner | None = None
        self.control_port: int | None = None
        self.server_port: int | None = None  # HTTPS for kube-apiserver (kubectl logs)
        path = os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")
        if options.python_bin is not None:
            path = f"{options.python_bin}{os.pathsep}{path}"
        self.base_env = {k: v for k, v in os.environ.items() if k in ("LANG", "LC_ALL", "OMP_NUM_THREADS")}
        self.base_env["PATH"] = path

    # -- running -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.mount_namespace_error = await check_mount_namespace()
        if self.mount_namespace_error:
            logger.warning("no mount namespaces (%s): pods with a service-account token will wait",
                           self.mount_namespace_error)
        await self._start_control()
        try:
            self._server, self.server_port = await server.start(self)
        except (OSError, subprocess.CalledProcessError) as e:  # kubectl logs is a convenience
            logger.warning("no kubelet HTTPS server (kubectl logs will not work): %s", e)
        await self.register_node()
        loops = [self._spawn(self._lease_loop()), self._spawn(self._node_status_loop()),
                 self._spawn(self._watch_pods())]
        self._write_control_file()
        logger.info("node %s registered; control API on 127.0.0.1:%s", self.node, self.control_port)
        try:
            await stop.wait()
        finally:
            for task in loops:
                task.cancel()
            await self.shutdown()

    async def shutdown(self) -> None:
        """Stop every pod's process (no orphans), then the control API.

        No status is written for containers stopped this way (a real kubelet leaves them
        running): the next kubelet of this node reports them as ContainerStatusUnknown.
        """
        self.reachable.clear()
        workers = list(self.workers.values())
        await asyncio.gather(*(w.shutdown(self.options.shutdown_grace) for w in workers),
                             return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for runner in (self._control, self._server):
            if runner is not None:
                await runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            (self.root / "control.json").unlink()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- the Node and its Lease --------------------------------------------------------------

    def _node_status(self) -> Obj:
        now = now_iso()
        conditions = []
        for kind, status, reason, message in (
            ("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            ("Ready", "True", "KubeletReady", "virtual kubelet is posting ready status"),
        ):
            seen = self._node_conditions.get(kind) or {}
            since = seen.get("lastTransitionTime") if seen.get("status") == status else now
            conditions.append({"type": kind, "status": status, "reason": reason, "message": message,
                               "lastHeartbeatTime": now, "lastTransitionTime": since or now})
        capacity = dict(self.options.capacity)
        return {
            "capacity": capacity, "allocatable": capacity, "conditions": conditions,
            "addresses": [{"type": "InternalIP", "address": self.host_ip}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.server_port or 10250}},
            "nodeInfo": {"machineID": uuid.uuid5(uuid.NAMESPACE_DNS, self.node).hex,
                         "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_DNS, self.node)),
                         "bootID": _boot_id(), "kernelVersion": platform.release(),
                         "osImage": "adamw virtual kubelet (local processes)",
                         "containerRuntimeVersion": "virtual://0.1.0", "kubeletVersion": KUBELET_VERSION,
                         "kubeProxyVersion": "", "operatingSystem": "linux",
                         "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(),
                                                                                      platform.machine())},
        }

    def _remember(self, node: Obj) -> None:
        self._node_uid = node["metadata"].get("uid", self._node_uid)
        self._node_conditions = {c["type"]: c for c in node.get("status", {}).get("conditions") or []}

    async def register_node(self) -> None:
        labels = {"kubernetes.io/hostname": self.node, "kubernetes.io/os": "linux",
                  "kubernetes.io/arch": self._node_status()["nodeInfo"]["architecture"],
                  "node.kubernetes.io/instance-type": "virtual", **self.options.labels}
        body = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.node, "labels": labels},
                "spec": {"taints": self.options.taints} if self.options.taints else {},
                "status": self._node_status()}
        for attempt in range(60):
            try:
                self._remember(await self.api.create("/api/v1/nodes", body))
                break
            except ApiError as e:
                if e.status == 409:
                    self._remember(await self.api.get(f"/api/v1/nodes/{self.node}"))
                    break
                if e.status < 500 and e.status != 429 or attempt == 59:
                    raise
            except (TimeoutError, aiohttp.ClientError):
                if attempt == 59:
                    raise
            await asyncio.sleep(0.5)
        await self.update_node_status()
        await self.renew_lease()

    async def update_node_status(self) -> None:
        node = await retrying("node status", lambda: self.api.patch(
            f"/api/v1/nodes/{self.node}/status", {"status": self._node_status()}))
        self._remember(node)

    async def renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node}"
        spec = {"holderIdentity": self.node, "leaseDurationSeconds": LEASE_SECONDS,
                "renewTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
        try:
            await self.api.patch(path, {"spec": spec}, kind="application/merge-patch+json")
        except ApiError as e:
            if e.status != 404:
                raise
            owner = [{"apiVersion": "v1", "kind": "Node", "name": self.node, "uid": self._node_uid}] \
                if self._node_uid else []
            await self.api.create("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.node, "namespace": "kube-node-lease", "ownerReferences": owner},
                "spec": spec})

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.heartbeat_seconds)
            if not self.paused:
                try:
                    await self.renew_lease()
                except Exception as e:
                    logger.warning("lease renewal failed: %s", e)

    async def _node_status_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.node_status_seconds)
            if not self.paused:
                try:
                    await self.update_node_status()
                except Exception as e:
                    logger.warning("node status update failed: %s", e)

    async def set_paused(self, paused: bool) -> None:
        """Paused: as if the node were cut off from the control plane (its pods keep running).

        No heartbeats (Lease, Node status), no pod status writes or deletion confirmations,
        and pod changes seen meanwhile are applied only on resume; then every pod's status
        is written afresh (the node-lifecycle controller marked them NotReady meanwhile).
        """
        was, self.paused = self.paused, paused
        if paused:
            self.reachable.clear()
            return
        self.reachable.set()
        if was:  # back at once, as a kubelet whose network returned
            with contextlib.suppress(Exception):
                await self.update_node_status()
                await self.renew_lease()
            held, self._held = self._held, {}
            for kind, obj in held.values():
                self._apply(kind, obj)
            for worker in list(self.workers.values()):
                worker.resync()

    # -- pods ----------------------------------------------------------------------------------

    async def _watch_pods(self) -> None:
        selector = f"spec.nodeName={self.node}"
        version: str | None = None
        failures = 0
        while True:
            try:
                if version is None:
                    listed = await self.api.get("/api/v1/pods", fieldSelector=selector)
                    version = listed["metadata"]["resourceVersion"]
                    present = set()
                    for pod in listed.get("items") or []:
                        present.add(pod["metadata"]["uid"])
                        self._event("ADDED", pod)
                    for uid, worker in list(self.workers.items()):
                        if uid not in present:
                            self._event("DELETED", worker.pod)
                async for event in self.api.watch("/api/v1/pods", resource_version=version,
                                                  fieldSelector=selector):
                    failures = 0
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            version = None
                            break
                        raise ApiError(obj.get("code", 500), obj, "WATCH", "/api/v1/pods")
                    version = obj["metadata"].get("resourceVersion", version)
                    if kind != "BOOKMARK":
                        self._event(kind, obj)
            except asyncio.CancelledError:
                raise
            except ApiError as e:
                if e.status == 410:
                    version = None
                    continue
                failures += 1
                logger.warning("pod watch: %s", e)
            except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as e:
                failures += 1
                logger.info("pod watch interrupted (%s); resuming", e.__class__.__name__)
            await asyncio.sleep(min(0.2 * 2 ** failures, 5.0) if failures else 0)

    def _event(self, kind: str, obj: Obj) -> None:
        if self.paused:
            self._held[obj["metadata"]["uid"]] = (kind, obj)
        else:
            self._apply(kind, obj)

    def _apply(self, kind: str, obj: Obj) -> None:
        if kind != "DELETED":
            self._on_pod(obj)
        elif (worker := self.workers.get(obj["metadata"]["uid"])) is not None:
            worker.update(obj)
            worker.gone()

    def _on_pod(self, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        worker = self.workers.get(uid)
        if worker is not None:
            worker.update(pod)
            return
        in_use = {w.ip for w in self.workers.values()}
        ip = pod.get("status", {}).get("podIP")  # a pod from this node's previous kubelet keeps its IP
        if not ip or ip in in_use or ipaddress.ip_address(ip) not in ipaddress.ip_network(self.pod_cidr):
            ip = next(a for a in self._addresses if a not in in_use)
        worker = PodWorker(self, pod, ip)
        self.workers[uid] = worker
        task = self._spawn(worker.run())
        task.add_done_callback(lambda _: self.workers.pop(uid, None))

    async def get_or_none(self, path: str) -> Obj | None:
        await self.reachable.wait()
        return await retrying(path, lambda: self.api.get_or_none(path))

    async def patch_status(self, path: str, body: Obj) -> Obj:
        return await retrying(path, lambda: self.api.patch(f"{path}/status", body))

    async def delete_pod(self, path: str, uid: str) -> None:
        """Confirm a deletion as the kubelet does: grace period 0, only this uid."""
        await self.reachable.wait()
        await self.api.delete(path, {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                                     "preconditions": {"uid": uid}})

    async def request_token(self, pod: Obj, token: TokenSource) -> str:
        meta, spec = pod["metadata"], pod["spec"]
        account = spec.get("serviceAccountName") or "default"
        body: Obj = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                     "spec": {"expirationSeconds": token.expiration_seconds,
                              "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"],
                                                 "uid": meta["uid"]}}}
        if token.audience:
            body["spec"]["audiences"] = [token.audience]
        path = f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{account}/token"
        answer = await retrying(path, lambda: self.api.create(path, body))
        return answer["status"]["token"]

    async def resolve(self, name: str) -> str | None:
        """Cluster DNS (see `dns`): through `dns_api` when given, else this node's own view."""
        client = self.dns_api or self.api
        own = {uid: w.ip for uid, w in self.workers.items()}

        async def get_service(namespace: str, service: str) -> Obj | None:
            return await client.get_or_none(f"/api/v1/namespaces/{namespace}/services/{service}")

        async def list_pods(namespace: str, selector: Mapping[str, str]) -> list[Obj]:
            if self.dns_api is None:  # a node may list only its own pods
                return [w.pod for w in self.workers.values() if w.namespace == namespace]
            listed = await self.dns_api.get(f"/api/v1/namespaces/{namespace}/pods",
                                            labelSelector=",".join(f"{k}={v}" for k, v in selector.items()))
            return listed.get("items") or []

        try:
            return await dns.resolve(name, get_service=get_service, list_pods=list_pods, own_ips=own)
        except (TimeoutError, ApiError, aiohttp.ClientError) as e:
            logger.info("DNS %s: %s", name, e)
            return None

    def event(self, pod: Obj, kind: str, reason: str, message: str) -> None:
        """Post an Event about the pod (`kubectl describe pod`); best effort."""
        meta = pod["metadata"]
        now = now_iso()
        body = {"apiVersion": "v1", "kind": "Event",
                "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
                "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"],
                                   "namespace": meta["namespace"], "uid": meta["uid"],
                                   "fieldPath": f"spec.containers{{{pod['spec']['containers'][0]['name']}}}"},
                "reason": reason, "message": message[:1024], "type": kind, "count": 1,
                "firstTimestamp": now, "lastTimestamp": now,
                "source": {"component": "kubelet", "host": self.node},
                "reportingComponent": "kubelet", "reportingInstance": self.node}

        async def post() -> None:
            await self.reachable.wait()
            with contextlib.suppress(Exception):
                await self.api.create(f"/api/v1/namespaces/{meta['namespace']}/events", body)

        self._spawn(post())

    # -- the control API -----------------------------------------------------------------------

    async def _start_control(self) -> None:
        app = web.Application()
        app.add_routes([
            web.get("/healthz", lambda _: web.Response(text="ok")),
            web.get("/status", self._http_status),
            web.get("/pods", self._http_pods),
            web.post("/heartbeat", self._http_heartbeat),
            web.post("/pods/{namespace}/{name}/signal", self._http_signal),
        ])
        self._control = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._control.setup()
        site = web.TCPSite(self._control, "127.0.0.1", self.options.control_port)
        await site.start()
        self.control_port = int(self._control.addresses[0][1])

    def _write_control_file(self) -> None:
        info = {"pid": os.getpid(), "port": self.control_port, "url": f"http://127.0.0.1:{self.control_port}",
                "node": self.node, "root": str(self.root), "kubeletPort": self.server_port,
                "podCIDR": self.pod_cidr}
        tmp = self.root / ".control.json.tmp"
        tmp.write_text(json.dumps(info))
        tmp.replace(self.root / "control.json")

    async def _http_status(self, _: web.Request) -> web.Response:
        return web.json_response({"node": self.node, "paused": self.paused, "pods": len(self.workers),
                                  "mountNamespaces": self.mount_namespace_error is None})

    async def _http_pods(self, _: web.Request) -> web.Response:
        return web.json_response([w.summary() for w in self.workers.values()])

    async def _http_heartbeat(self, request: web.Request) -> web.Response:
        body = await request.json()
        await self.set_paused(bool(body.get("paused")))
        return web.json_response({"paused": self.paused})

    async def _http_signal(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else {}
        raw = body.get("signal", "SIGKILL")
        sig = int(raw) if str(raw).isdigit() else int(getattr(signal, str(raw)))
        ns, name = request.match_info["namespace"], request.match_info["name"]
        for worker in self.workers.values():
            if worker.namespace == ns and worker.name == name and not worker.removed:
                pid = worker.kill(sig)
                if pid is not None:
                    return web.json_response({"pid": pid, "signal": sig})
        return web.json_response({"error": f"pod {ns}/{name} has no running process on {self.node}"},
                                 status=404)


async def check_mount_namespace() -> str | None:
    """None when `unshare --mount` works here, else why not."""
    try:
        proc = await asyncio.create_subprocess_exec(
            "unshare", "--mount", "--propagation", "private", "true",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    except FileNotFoundError:
        return "the unshare command is missing (util-linux)"
    _, err = await proc.communicate()
    return None if proc.returncode == 0 else (err.decode().strip() or f"unshare exited {proc.returncode}")


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return socket.gethostname()


def make_kubelet(kubeconfig: KubeConfig, options: Options, dns_kubeconfig: KubeConfig | None = None) -> Kubelet:
    return Kubelet(ApiClient(kubeconfig), options,
                   dns_api=ApiClient(dns_kubeconfig) if dns_kubeconfig else None)
