"""Kubelets for the emulator: the scheduler+kubelet loop, and a process-free fake.

Both run inside the emulator's process and write pod state through its store (watch
events are emitted as for any write), so fault injection aimed at the operator never
hits them. What they stand for:

- scheduling: an unbound pod gets `spec.nodeName` (one node, no resource accounting);
- Pending -> Running with a podIP once the containers "start";
- deletion of a running pod: the containers are stopped (SIGTERM, SIGKILL after the
  grace period for real processes), the final state is recorded, then the kubelet
  confirms the deletion (grace period 0) and the object disappears;
- restartPolicy is treated as Never (the operator's pods use Never; the kubelet's
  in-place container restarts are not emulated).

    async with kube_api() as api, FakeKubelet(api) as kubelet:
        ...                                   # the operator creates pods; they run
        await kubelet.finish("job-worker-1", exit_code=1, message="boom")
        await kubelet.preempt("job-worker-0")  # DisruptionTarget + graceful delete
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from typing import Any

from adamw_operator.local import pod_status

from tests.kube.emulator import KubeAPI
from tests.kube.store import PODS, ApiError, Obj, WatchEvent

logger = logging.getLogger(__name__)


class KubeletBase:
    """The event loop shared by the kubelets: every pod change triggers `_sync(pod)`."""

    def __init__(self, api: KubeAPI, *, node_name: str = "node-1") -> None:
        self.api = api
        self.store = api.store
        self.node_name = node_name
        self._dirty: asyncio.Queue[tuple[str | None, str]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self.errors: list[Exception] = []

    async def __aenter__(self) -> KubeletBase:
        self.store.listeners.append(self._on_event)
        for pod in self.store.all_objects(PODS):
            self._dirty.put_nowait((pod["metadata"].get("namespace"), pod["metadata"]["name"]))
        self._task = asyncio.create_task(self._loop(), name=f"kubelet-{self.node_name}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.store.listeners.remove(self._on_event)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._shutdown()
        for task in list(self._background):
            task.cancel()
        for task in list(self._background):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _shutdown(self) -> None:
        """Stop whatever still runs when the test ends."""

    def _on_event(self, rt: Any, event: WatchEvent) -> None:
        if rt.key == PODS.key:
            meta = event.object["metadata"]
            self._dirty.put_nowait((meta.get("namespace"), meta["name"]))

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _loop(self) -> None:
        while True:
            namespace, name = await self._dirty.get()
            pod = self.store.objects.get((PODS.key, namespace, name))
            try:
                if pod is None:
                    await self._gone(namespace, name)
                elif not pod["spec"].get("nodeName"):
                    self._bind(pod)
                elif pod["spec"]["nodeName"] == self.node_name:
                    await self._sync(pod)
            except ApiError as e:
                if e.code != 404:  # 404: the pod vanished meanwhile; the next event says so
                    self._failed(name, e)
            except Exception as e:  # keep serving other pods; tests assert `errors` is empty
                self._failed(name, e)

    def _failed(self, name: str, error: Exception) -> None:
        logger.exception("kubelet %s: pod %s: %s", self.node_name, name, error)
        self.errors.append(error)

    def _bind(self, pod: Obj) -> None:
        """The scheduler's part: one node, so every pod lands here."""
        node = self.node_name

        def bind(p: Obj) -> Obj:
            p["spec"]["nodeName"] = node
            return p

        meta = pod["metadata"]
        self.store.update(PODS, meta.get("namespace"), meta["name"], bind)

    async def _sync(self, pod: Obj) -> None:
        raise NotImplementedError

    async def _gone(self, namespace: str | None, name: str) -> None:
        """The pod object was removed."""

    def write_status(self, pod: Obj, status: Obj) -> Obj | None:
        meta = pod["metadata"]
        current = self.store.objects.get((PODS.key, meta.get("namespace"), meta["name"]))
        if current is None or current["metadata"]["uid"] != meta["uid"]:
            return None  # replaced by a new pod of the same name: not ours to write
        return self.store.update(PODS, meta.get("namespace"), meta["name"],
                                 pod_status.set_status(status), "status")

    def confirm_deletion(self, pod: Obj) -> None:
        meta = pod["metadata"]
        current = self.store.objects.get((PODS.key, meta.get("namespace"), meta["name"]))
        if current is not None and current["metadata"]["uid"] == meta["uid"]:
            self.store.delete(PODS, meta.get("namespace"), meta["name"], grace_period=0)

    def pod(self, name: str, namespace: str = "default") -> Obj:
        return self.store.get(PODS, namespace, name)

    async def preempt(self, name: str, namespace: str = "default", *,
                      reason: str = "PreemptionByScheduler") -> None:
        """Preempt like the scheduler: a DisruptionTarget condition, then a graceful delete."""
        self.api.emulator.evict(namespace, name, reason=reason)
        await asyncio.sleep(0)

    async def evict(self, name: str, namespace: str = "default") -> None:
        """An Eviction API call (node drain): same shape, reason EvictionByEvictionAPI."""
        await self.preempt(name, namespace, reason="EvictionByEvictionAPI")


def _fake_ips() -> Any:
    for b, c in itertools.product(range(0, 256), range(1, 255)):
        yield f"10.244.{b}.{c}"


class FakeKubelet(KubeletBase):
    """Pods "run" instantly without processes; tests end them with any exit code."""

    def __init__(self, api: KubeAPI, *, node_name: str = "node-1", start_delay: float = 0.0,
                 exit_code_on_delete: int = 143, termination_message_on_delete: str = "") -> None:
        super().__init__(api, node_name=node_name)
        self.start_delay = start_delay
        self.exit_code_on_delete = exit_code_on_delete
        self.termination_message_on_delete = termination_message_on_delete
        self._ips = _fake_ips()
        self._starting: set[str] = set()

    async def _sync(self, pod: Obj) -> None:
        uid, phase = pod["metadata"]["uid"], pod.get("status", {}).get("phase")
        if pod["metadata"].get("deletionTimestamp"):
            if phase == "Running":
                self.write_status(pod, pod_status.terminated(
                    pod, self.exit_code_on_delete, message=self.termination_message_on_delete))
            self.confirm_deletion(pod)
        elif phase == "Pending" and uid not in self._starting:
            self._starting.add(uid)
            if self.start_delay:
                self.spawn(self._start_later(pod))
            else:
                self.write_status(pod, pod_status.running(pod, next(self._ips)))

    async def _start_later(self, pod: Obj) -> None:
        await asyncio.sleep(self.start_delay)
        fresh = self.store.objects.get((PODS.key, pod["metadata"].get("namespace"), pod["metadata"]["name"]))
        if fresh is not None and fresh["metadata"]["uid"] == pod["metadata"]["uid"] \
                and not fresh["metadata"].get("deletionTimestamp"):
            self.write_status(fresh, pod_status.running(fresh, next(self._ips)))

    async def finish(self, name: str, exit_code: int = 0, *, message: str = "",
                     namespace: str = "default", reason: str | None = None) -> Obj | None:
        """End a pod's container with this exit code and termination message."""
        pod = self.pod(name, namespace)
        result = self.write_status(pod, pod_status.terminated(pod, exit_code, message=message, reason=reason))
        await asyncio.sleep(0)
        return result

    async def wait_running(self, name: str, namespace: str = "default", timeout: float = 5.0) -> Obj:
        return await self.api.client.wait_for(
            "pods", name, lambda p: p is not None and p.get("status", {}).get("phase") == "Running",
            namespace, timeout=timeout)
