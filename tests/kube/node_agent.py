"""A node agent that runs the emulator's pods as real local processes.

It is the kubelet for end-to-end tests: the operator's pods become processes started
with the pod's command and env (`adamw_operator.local.pod_process`, the same code the
local runner uses, which documents the volume, mount-path and DNS stand-ins), and their
exits become pod phases and `state.terminated` (exitCode, reason, message from the
termination-message file).

    async with kube_api() as api, NodeAgent(api, tmp_path) as agent:
        ...                                        # the operator creates pods; they run
        agent.kill("job-worker-1", signal.SIGKILL)   # the pod ends Failed with exit 137
        await agent.preempt("job-worker-0")          # DisruptionTarget + SIGTERM, grace, SIGKILL

Pod deletion sends SIGTERM, then SIGKILL after `deletionGracePeriodSeconds` (the pod's
`terminationGracePeriodSeconds`), as the kubelet does.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from adamw_operator.local import pod_status
from adamw_operator.local.pod_process import LocalProcess, PodSpecError, dns_names, prepare_pod

from tests.kube.emulator import KubeAPI
from tests.kube.kubelet import KubeletBase
from tests.kube.store import CONFIGMAPS, PODS, Obj

_CLUSTER_NAME = re.compile(r"\b[a-z0-9-]+\.[a-z0-9-]+\.[a-z0-9-]+\.svc(?:\.cluster\.local)?\b")


def loopback_addresses() -> Iterator[str]:
    """127.0.0.2 ... 127.0.255.254, round-robin: a fresh address per pod, ports never clash."""
    while True:
        for b in range(0, 256):
            for c in range(2 if b == 0 else 1, 255):
                yield f"127.0.{b}.{c}"


@dataclass
class _PodRun:
    pod: Obj
    ip: str
    process: LocalProcess | None = None
    stopping: bool = False
    stop_grace: float | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class NodeAgent(KubeletBase):
    """Runs pods bound to it as processes under `root` (pods/, claims/ for PVCs)."""

    def __init__(self, api: KubeAPI, root: Path, *, node_name: str = "node-1",
                 base_env: Mapping[str, str] | None = None, poll_interval: float = 0.05) -> None:
        super().__init__(api, node_name=node_name)
        self.root = Path(root)
        self.base_env = base_env
        self.poll_interval = poll_interval
        self._addresses = loopback_addresses()
        self.runs: dict[str, _PodRun] = {}  # by pod uid

    # -- the kubelet loop ---------------------------------------------------------------------

    async def _sync(self, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        run = self.runs.get(uid)
        if pod["metadata"].get("deletionTimestamp"):
            grace = float(pod["metadata"].get("deletionGracePeriodSeconds",
                                              pod["spec"].get("terminationGracePeriodSeconds", 30)))
            if run is None:
                self.confirm_deletion(pod)  # nothing was started
            elif not run.stopping:
                run.stopping, run.stop_grace = True, grace
                if run.process is not None:
                    self.spawn(run.process.stop(grace))
        elif run is None and pod.get("status", {}).get("phase") == "Pending":
            self.runs[uid] = _PodRun(pod=pod, ip=next(self._addresses))
            self.spawn(self._run(uid))

    async def _run(self, uid: str) -> None:
        run = self.runs[uid]
        try:
            launch = await self._prepare(run)
            if launch is None:  # deleted while waiting for its ConfigMap / peers
                self.confirm_deletion(run.pod)
                return
            run.process = LocalProcess(launch)
            await run.process.start()
            current = self._current(run.pod)
            if current is not None:
                self.write_status(current, pod_status.running(current, run.ip))
            if run.stopping:
                await run.process.stop(run.stop_grace)
            ended = await run.process.wait()
            current = self._current(run.pod)
            if current is not None:
                self.write_status(current, pod_status.terminated(
                    current, ended.exit_code, message=ended.message, signal=ended.signal))
                if current["metadata"].get("deletionTimestamp"):
                    self.confirm_deletion(current)
        except Exception as e:
            self._failed(run.pod["metadata"]["name"], e)
        finally:
            run.done.set()

    async def _prepare(self, run: _PodRun):  # -> LocalLaunch | None
        """Wait, like a kubelet in ContainerCreating, until ConfigMaps and peer names resolve."""
        waiting_reported = ""
        while True:
            current = self._current(run.pod)
            if current is None or current["metadata"].get("deletionTimestamp"):
                return None
            problem = self._missing(current)
            if not problem:
                try:
                    return prepare_pod(current, root=self.root, pod_ip=run.ip,
                                       config_maps=self._config_maps(current), hosts=self._hosts(current),
                                       base_env=self.base_env)
                except PodSpecError as e:
                    problem = ("CreateContainerConfigError", str(e))
            if problem[1] != waiting_reported:
                self.write_status(current, pod_status.pending_reason(current, *problem))
                waiting_reported = problem[1]
            await asyncio.sleep(self.poll_interval)

    def _missing(self, pod: Obj) -> tuple[str, str] | None:
        for name, _ in self._config_maps_wanted(pod):
            if (CONFIGMAPS.key, pod["metadata"]["namespace"], name) not in self.store.objects:
                return ("ContainerCreating", f'configmap "{name}" not found')
        hosts = self._hosts(pod)
        for container in pod["spec"].get("containers", []):
            for item in container.get("env") or []:
                for name in _CLUSTER_NAME.findall(str(item.get("value", ""))):
                    if name not in hosts:
                        return ("ContainerCreating", f"waiting for DNS name {name}")
        return None

    @staticmethod
    def _config_maps_wanted(pod: Obj) -> list[tuple[str, bool]]:
        return [(v["configMap"]["name"], bool(v["configMap"].get("optional")))
                for v in pod["spec"].get("volumes") or [] if "configMap" in v]

    def _config_maps(self, pod: Obj) -> dict[str, Mapping[str, str]]:
        ns = pod["metadata"]["namespace"]
        found = {}
        for name, _ in self._config_maps_wanted(pod):
            cm = self.store.objects.get((CONFIGMAPS.key, ns, name))
            if cm is not None:
                found[name] = cm.get("data") or {}
        return found

    def _hosts(self, pod: Obj) -> dict[str, str]:
        """Cluster DNS: pods with hostname+subdomain resolve to their IPs (ours or reported)."""
        ips = {run.pod["metadata"]["uid"]: run.ip for run in self.runs.values()}
        hosts: dict[str, str] = {}
        for other in self.store.all_objects(PODS):
            ip = ips.get(other["metadata"]["uid"]) or other.get("status", {}).get("podIP")
            if ip and not other["metadata"].get("deletionTimestamp"):
                for name in dns_names(other):
                    hosts[name] = ip
        return hosts

    def _current(self, pod: Obj) -> Obj | None:
        meta = pod["metadata"]
        current = self.store.objects.get((PODS.key, meta.get("namespace"), meta["name"]))
        return current if current is not None and current["metadata"]["uid"] == meta["uid"] else None

    async def _shutdown(self) -> None:
        for run in self.runs.values():
            if run.process is not None and run.process.running:
                run.process.signal(signal.SIGKILL)
        for run in self.runs.values():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(run.done.wait(), timeout=5)

    # -- test helpers ---------------------------------------------------------------------------

    def run_of(self, name: str, namespace: str = "default") -> _PodRun:
        pod = self.pod(name, namespace)
        return self.runs[pod["metadata"]["uid"]]

    def kill(self, name: str, sig: int = signal.SIGKILL, namespace: str = "default") -> int:
        """Signal a pod's process (as the OOM killer or a crash would); returns its pid."""
        run = self.run_of(name, namespace)
        if run.process is None or not run.process.running:
            raise RuntimeError(f"pod {name} has no running process")
        run.process.signal(sig)
        return run.process.pid or 0

    def log(self, name: str, namespace: str = "default") -> str:
        """The container's stdout+stderr so far (`kubectl logs`)."""
        run = self.run_of(name, namespace)
        if run.process is None:
            return ""
        return run.process.launch.layout.log_file.read_text(errors="replace")
