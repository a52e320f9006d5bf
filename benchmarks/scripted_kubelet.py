"""A scripted kubelet for the operator benchmark: Nodes whose pods cost nothing.

It registers Nodes of its own on a real API server and plays the kubelet's part of the
API for the pods the real scheduler binds to them, over HTTPS like any kubelet:

- each Node is created with a large capacity, the label `adamw.io/bench-node=true` and
  the taint `adamw.io/bench-node=true:NoSchedule` (so only pods that select and tolerate
  it land there, and nothing else does); its status says Ready and its Lease in
  `kube-node-lease` is renewed every 2 s, so the node controller keeps it Ready;
- one watch per node (`fieldSelector=spec.nodeName=<node>`), as a kubelet does; a pod
  bound to a node gets `Running` (podIP, conditions, container `running.startedAt`)
  written through `pods/status` at once;
- `finish()` ends a pod on demand: `terminated` with an exit code and message, phase
  Failed/Succeeded, written through `pods/status`;
- a pod marked for deletion gets its final status (exit 143 if it was running) and
  the deletion is confirmed with grace period 0 (uid precondition), as the kubelet does
  once the containers stopped.

What it does not do, unlike the virtual kubelet (`adamw_operator.cluster.kubelet`): no
processes, volumes, probes, DNS, logs, in-place container restarts, Events or node-client
certificates (it authenticates with the admin kubeconfig, so NodeRestriction does not
apply to it). Container "start" is instant. The timestamps it records (`bound`,
`running`) are when its own watch saw the binding and when its status write returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from adamw_operator.cluster.kubelet.api import MERGE, ApiClient, ApiError
from adamw_operator.local import pod_status

Obj = dict[str, Any]
LABEL = "adamw.io/bench-node"
TAINT: Obj = {"key": LABEL, "value": "true", "effect": "NoSchedule"}
TOLERATION: Obj = {"key": LABEL, "operator": "Equal", "value": "true", "effect": "NoSchedule"}
NODE_SELECTOR = {LABEL: "true"}


def _micro_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class PodTimes:
    bound: float | None = None  # our watch saw the pod bound to our node
    running: float | None = None  # our Running status write returned


@dataclass
class ScriptedKubelet:
    api: ApiClient
    nodes: list[str]
    capacity: Obj = field(default_factory=lambda: {"cpu": "1000", "memory": "4Ti", "pods": "1000",
                                                   "ephemeral-storage": "10Ti"})
    pods: dict[tuple[str, str], Obj] = field(default_factory=dict)  # (ns, name) -> newest object
    times: dict[str, PodTimes] = field(default_factory=dict)  # uid -> times
    writes: int = 0
    errors: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._tasks: list[asyncio.Task[Any]] = []
        self._busy: set[str] = set()
        self._ips = (f"127.1.{b}.{c}" for b, c in itertools.product(range(256), range(1, 255)))
        self._started: set[str] = set()
        self._ended: set[str] = set()

    # ---- nodes --------------------------------------------------------------------------

    async def start(self) -> None:
        for node in self.nodes:
            await self._register(node)
        for node in self.nodes:
            self._tasks.append(asyncio.create_task(self._watch(node), name=f"watch-{node}"))
            self._tasks.append(asyncio.create_task(self._heartbeat(node), name=f"lease-{node}"))

    async def _register(self, node: str) -> None:
        body = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": node, "labels": {LABEL: "true", "kubernetes.io/hostname": node,
                                                      "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}},
                "spec": {"taints": [TAINT]}}
        with contextlib.suppress(ApiError):
            await self.api.create("/api/v1/nodes", body)
        await self._node_status(node)
        lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                 "metadata": {"name": node, "namespace": "kube-node-lease"},
                 "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": _micro_now()}}
        with contextlib.suppress(ApiError):
            await self.api.create("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", lease)

    async def _node_status(self, node: str) -> None:
        now = pod_status.now_iso()
        conditions = [{"type": t, "status": s, "reason": r, "message": r, "lastHeartbeatTime": now,
                       "lastTransitionTime": now}
                      for t, s, r in (("Ready", "True", "KubeletReady"), ("MemoryPressure", "False", "Fine"),
                                      ("DiskPressure", "False", "Fine"), ("PIDPressure", "False", "Fine"))]
        await self.api.patch(f"/api/v1/nodes/{node}/status", {"status": {
            "capacity": self.capacity, "allocatable": self.capacity, "conditions": conditions,
            "addresses": [{"type": "InternalIP", "address": "127.1.0.1"}, {"type": "Hostname", "address": node}],
            "nodeInfo": {"kubeletVersion": "v1.37.2-bench", "architecture": "amd64", "operatingSystem": "linux",
                         "containerRuntimeVersion": "none://scripted", "kernelVersion": "", "osImage": "",
                         "kubeProxyVersion": "", "machineID": "", "systemUUID": "", "bootID": ""}}},
            kind=MERGE)

    async def _heartbeat(self, node: str) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node}"
        ticks = 0
        while True:
            await asyncio.sleep(2.0)
            ticks += 1
            with contextlib.suppress(Exception):
                await self.api.patch(path, {"spec": {"renewTime": _micro_now()}}, kind=MERGE)
                if ticks % 15 == 0:  # conditions' heartbeat, as a kubelet every few tens of s
                    await self._node_status(node)

    async def wait_ready(self, timeout: float = 60) -> None:
        """Every node Ready and free of the node controller's not-ready taints."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            items = (await self.api.get("/api/v1/nodes", labelSelector=f"{LABEL}=true"))["items"]
            ok = [n for n in items
                  if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))
                  and all(t["key"] == LABEL for t in n["spec"].get("taints", []))]
            if len(ok) == len(self.nodes):
                return
            await asyncio.sleep(0.3)
        raise TimeoutError("bench nodes not Ready")

    async def stop(self, *, remove_nodes: bool = True) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if remove_nodes:
            for node in self.nodes:
                with contextlib.suppress(Exception):
                    await self.api.delete(f"/api/v1/nodes/{node}")

    # ---- pods ---------------------------------------------------------------------------

    async def _watch(self, node: str) -> None:
        selector = f"spec.nodeName={node}"
        while True:
            try:
                listed = await self.api.get("/api/v1/pods", fieldSelector=selector)
                for pod in listed["items"]:
                    self._seen(pod)
                rv = listed["metadata"]["resourceVersion"]
                while True:
                    async for event in self.api.watch("/api/v1/pods", resource_version=rv, fieldSelector=selector):
                        obj = event["object"]
                        if event["type"] == "BOOKMARK":
                            rv = obj["metadata"]["resourceVersion"]
                            continue
                        if event["type"] == "ERROR":
                            raise ApiError(obj.get("code", 500), obj, "WATCH", "pods")
                        rv = obj["metadata"]["resourceVersion"]
                        if event["type"] == "DELETED":
                            key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
                            if self.pods.get(key, {}).get("metadata", {}).get("uid") == obj["metadata"]["uid"]:
                                del self.pods[key]
                            self.changed.set()
                        else:
                            self._seen(obj)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a dropped watch: list again, as a kubelet does
                self.errors.append(f"{node}: {type(e).__name__}: {e}"[:300])
                await asyncio.sleep(0.2)

    def _seen(self, pod: Obj) -> None:
        meta = pod["metadata"]
        self.pods[(meta["namespace"], meta["name"])] = pod
        uid = meta["uid"]
        times = self.times.setdefault(uid, PodTimes())
        times.bound = times.bound or time.time()
        self.changed.set()
        phase = (pod.get("status") or {}).get("phase", "Pending")
        if meta.get("deletionTimestamp"):
            if uid not in self._ended:
                self._ended.add(uid)
                self._spawn(self._delete(pod, phase))
        elif phase == "Pending" and uid not in self._started:
            self._started.add(uid)
            self._spawn(self._run(pod))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.append(task)
        task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)

    async def _write_status(self, pod: Obj, status: Obj) -> Obj | None:
        meta = pod["metadata"]
        try:
            self.writes += 1
            return await self.api.patch(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
                                        {"metadata": {"uid": meta["uid"]}, "status": status}, kind=MERGE)
        except ApiError as e:
            if e.status not in (404, 409):
                self.errors.append(str(e)[:300])
            return None

    async def _run(self, pod: Obj) -> None:
        if await self._write_status(pod, pod_status.running(pod, next(self._ips))) is not None:
            self.times[pod["metadata"]["uid"]].running = time.time()

    async def _delete(self, pod: Obj, phase: str) -> None:
        meta = pod["metadata"]
        if phase in ("Pending", "Running"):
            await self._write_status(pod, pod_status.terminated(pod, 143, reason="Error"))
        try:
            self.writes += 1
            await self.api.delete(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                                  {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                                   "preconditions": {"uid": meta["uid"]}})
        except ApiError as e:
            if e.status not in (404, 409):
                self.errors.append(str(e)[:300])

    async def finish(self, namespace: str, name: str, exit_code: int = 1, message: str = "") -> float:
        """End the pod's container; returns when the write was sent (time.time())."""
        pod = self.pods[(namespace, name)]
        self._ended.discard(pod["metadata"]["uid"])
        sent = time.time()
        await self._write_status(pod, pod_status.terminated(pod, exit_code, message=message))
        return sent
