"""One pod's life on this node: ContainerCreating, running, restarts, termination, deletion.

A `PodWorker` per pod uid, fed the pod's latest object by the kubelet's watch. It mirrors
the kubelet's pod worker: admit (allocate the pod IP), wait until the image, volumes,
env sources and peers' DNS names are there, start the container as a local process
(`adamw_operator.local.pod_process`), probe it, restart it in place as `restartPolicy`
says, and on deletion stop it (SIGTERM, the grace period, SIGKILL), write the final
status and confirm the deletion.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import signal
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from adamw_operator.local.pod_process import (
    LocalLaunch,
    LocalProcess,
    PodSpecError,
    Termination,
    pod_dir_name,
    prepare_pod,
)
from adamw_operator.local.pod_status import now_iso

from . import dns, images, probes, volumes
from .api import ApiError
from .status import Conditions, ContainerRecord, phase_of, pod_status, status_patch

if TYPE_CHECKING:
    from .kubelet import Kubelet

logger = logging.getLogger(__name__)

Obj = dict[str, Any]

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
BIND_PATHS = ("/var/run/secrets",)  # libraries read these fixed paths: bind-mount, never rewrite
MIN_GRACE_SECONDS = 2.0  # the kubelet never gives a container less (minimumGracePeriodInSeconds)
SHIM_DIR = Path(__file__).with_name("pod_python")  # sitecustomize: bind("0.0.0.0") -> the pod IP


class Waiting(Exception):
    """The container cannot start yet: (reason, message) for `state.waiting`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


class PodWorker:
    def __init__(self, kubelet: Kubelet, pod: Obj, pod_ip: str) -> None:
        self.kubelet = kubelet
        self.pod = pod
        self.uid: str = pod["metadata"]["uid"]
        self.ip = pod_ip
        self.changed = asyncio.Event()
        self.removed = False
        first = (pod["spec"].get("containers") or [{}])[0]
        self.container = ContainerRecord(name=first.get("name", "main"), image=first.get("image", ""))
        self.conditions = Conditions()
        self.start_time = pod.get("status", {}).get("startTime") or now_iso()
        self.launch: LocalLaunch | None = None
        self.process: LocalProcess | None = None
        self.pid: int | None = None
        self.terminal = False
        self.sandbox = False
        self.done = asyncio.Event()
        self._tokens: list[volumes.TokenSource] = []
        self._written: Obj | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._liveness_failed = False
        self._write_lock = asyncio.Lock()
        self._retry_pending = False
        self._retry_delay = 0.5

    # -- the kubelet's view ----------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.pod["metadata"]["name"]

    @property
    def namespace(self) -> str:
        return self.pod["metadata"]["namespace"]

    @property
    def path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/pods/{self.name}"

    @property
    def deleting(self) -> bool:
        return self.removed or bool(self.pod["metadata"].get("deletionTimestamp"))

    @property
    def restart_policy(self) -> str:
        return self.pod["spec"].get("restartPolicy") or "Always"

    @property
    def spec_container(self) -> Obj:
        return (self.pod["spec"].get("containers") or [{}])[0]

    def update(self, pod: Obj) -> None:
        self.pod = pod
        self.changed.set()

    def gone(self) -> None:
        self.removed = True
        self.changed.set()

    def resync(self) -> None:
        """Write the status again even if unchanged (others may have changed it meanwhile)."""
        if self._written is not None and not self.removed:
            self._written = None
            self._spawn(self._write())

    def summary(self) -> Obj:
        pod_dir = self.kubelet.root / "pods" / pod_dir_name(self.pod)
        return {"namespace": self.namespace, "name": self.name, "uid": self.uid, "podIP": self.ip,
                "phase": (self._written or {}).get("phase", "Pending"),
                "pid": self.process.pid if self.process is not None and self.process.running else None,
                "lastPid": self.pid, "restartCount": self.container.restart_count,
                "state": self.container.state, "dir": str(pod_dir), "log": str(pod_dir / "container.log")}

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._lifecycle()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("pod %s/%s: the pod worker failed", self.namespace, self.name)
        finally:
            await self._stop_process(MIN_GRACE_SECONDS)
            for task in list(self._tasks):
                task.cancel()
            self.done.set()

    async def shutdown(self, grace: float) -> None:
        """The kubelet is stopping: no container outlives it."""
        await self._stop_process(grace)

    async def _lifecycle(self) -> None:
        prior = self.pod.get("status", {})
        if self._adopt_prior(prior):
            await self._until_deleted()
            await self._confirm_deletion()
            return
        if not await self._prepare():
            await self._confirm_deletion()  # deleted before a container ever ran
            return
        backoff = self.kubelet.options.restart_backoff
        while True:
            started = time.monotonic()
            ended = await self._run_container()
            if self.deleting or not self._restarts(ended.exit_code):
                break
            ran = time.monotonic() - started
            backoff = self.kubelet.options.restart_backoff if ran > 60 else backoff
            delay = min(backoff, self.kubelet.options.restart_backoff_max)
            backoff = delay * 2
            self.container.last_state = {"terminated": self.container.state["terminated"]}
            self.container.state = {"waiting": {
                "reason": "CrashLoopBackOff",
                "message": f"back-off {delay:g}s restarting failed container={self.container.name} "
                           f"pod={self.name}_{self.namespace}({self.uid})"}}
            await self._write()
            self.kubelet.event(self.pod, "Warning", "BackOff", "Back-off restarting failed container "
                               f"{self.container.name} in pod {self.name}")
            if await self._wait_deleting(delay):
                break
            self.container.restart_count += 1
        self.terminal = True
        await self._write()
        await self._until_deleted()
        await self._confirm_deletion()

    def _adopt_prior(self, prior: Obj) -> bool:
        """A pod that ran before this kubelet started; True when it is already finished."""
        statuses = prior.get("containerStatuses") or []
        if prior.get("phase") in ("Succeeded", "Failed"):
            if statuses:
                self.container.state = statuses[0].get("state") or self.container.state
                self.container.restart_count = statuses[0].get("restartCount", 0)
            self.terminal = True
            self._written = {"phase": prior["phase"]}
            return True
        state = (statuses[0].get("state") or {}) if statuses else {}
        if "running" in state or "terminated" in state:
            # Its process died with the previous kubelet: what a kubelet reports for a
            # container the runtime lost.
            self.container.restart_count = statuses[0].get("restartCount", 0)
            self.container.state = {"terminated": {
                "exitCode": 137, "reason": "ContainerStatusUnknown",
                "message": "The container could not be located when the pod was terminated",
                "startedAt": (state.get("running") or {}).get("startedAt"), "finishedAt": now_iso()}}
            if not self._restarts(137):
                self.terminal = True
                self._spawn(self._write())
                return True
            self.container.last_state = {"terminated": self.container.state["terminated"]}
            self.container.restart_count += 1
        return False

    def _restarts(self, exit_code: int) -> bool:
        policy = self.restart_policy
        return policy == "Always" or (policy == "OnFailure" and exit_code != 0)

    async def _wait_change(self, timeout: float | None) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.changed.wait(), timeout)

    async def _wait_deleting(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while not self.deleting and (left := deadline - time.monotonic()) > 0:
            self.changed.clear()
            await self._wait_change(left)
        return self.deleting

    async def _until_deleted(self) -> None:
        while not self.deleting:
            self.changed.clear()
            await self._wait_change(None)

    # -- ContainerCreating -------------------------------------------------------------------

    async def _prepare(self) -> bool:
        """Wait until the container can start; False when the pod was deleted meanwhile."""
        reported: tuple[str, str] | None = None
        while True:
            self.changed.clear()
            if self.deleting:
                return False
            try:
                self.launch = await self._try_prepare()
                self.sandbox = True
                return True
            except (aiohttp.ClientError, TimeoutError, ApiError) as e:  # the API server is away
                logger.info("pod %s/%s: preparing: %s; retrying", self.namespace, self.name, e)
            except Waiting as w:
                if (w.reason, w.message) != reported:
                    reported = (w.reason, w.message)
                    self.container.state = {"waiting": {"reason": w.reason, "message": w.message}}
                    await self._write()
                    if w.reason != "ContainerCreating":
                        self.kubelet.event(self.pod, "Warning", _event_reason(w.reason), w.message)
            await self._wait_change(self.kubelet.options.poll_seconds)

    async def _try_prepare(self) -> LocalLaunch:
        k, pod, container = self.kubelet, self.pod, self.spec_container
        if len(pod["spec"].get("containers") or []) != 1 or pod["spec"].get("initContainers"):
            raise Waiting("CreateContainerConfigError",
                          "this virtual kubelet runs pods with exactly one container and no initContainers")
        try:
            command = images.container_command(container)
        except images.UnknownImage as e:
            raise Waiting("ErrImagePull", str(e)) from None
        needs_bind = any(probes_path.startswith(BIND_PATHS) for probes_path in
                         (m.get("mountPath", "") for m in container.get("volumeMounts") or []))
        if needs_bind and k.mount_namespace_error:
            raise Waiting("CreateContainerError",
                          f"cannot mount {SERVICE_ACCOUNT_DIR}: this machine cannot make a mount namespace "
                          f"({k.mount_namespace_error}); run the virtual kubelet as root, or set "
                          "automountServiceAccountToken: false")
        try:
            resolved = await volumes.resolve_volumes(pod, k.get_or_none, pod_ip=self.ip, host_ip=k.host_ip)
            env = await volumes.resolve_env(pod, container, k.get_or_none, pod_ip=self.ip, host_ip=k.host_ip)
        except volumes.SourceMissing as e:
            raise Waiting("ContainerCreating", f"MountVolume.SetUp failed: {e}") from None
        except volumes.Unsupported as e:
            raise Waiting("CreateContainerConfigError", str(e)) from None
        hosts: dict[str, str] = {}
        for name in dns.names_in([*command, *(str(e.get("value", "")) for e in env),
                                  *(v for data in resolved.config_maps.values() for v in data.values())]):
            ip = await k.resolve(name)
            if ip is not None:
                hosts[name] = ip
        for name in dns.names_in(str(e.get("value", "")) for e in env):
            if name not in hosts:
                raise Waiting("ContainerCreating", f"waiting for DNS name {name}")
        for token in resolved.tokens:
            try:
                resolved.files[token.volume][token.path] = (await k.request_token(pod, token)).encode()
            except ApiError as e:
                raise Waiting("ContainerCreating", f"MountVolume.SetUp failed for volume {token.volume!r}: "
                                                   f"service account token: {e}") from None
        self._tokens = resolved.tokens
        local = copy.deepcopy(pod)
        local_container = local["spec"]["containers"][0]
        local_container["command"], local_container["args"] = command, []
        local_container["env"] = env
        try:
            launch = prepare_pod(local, root=k.root, pod_ip=self.ip, config_maps=resolved.config_maps,
                                 hosts=hosts, base_env=k.base_env, volume_files=resolved.files,
                                 bind_paths=BIND_PATHS, any_address_to_pod_ip=True,
                                 claim_dir=lambda claim: resolved.claims.get(claim)
                                 or k.root / "claims" / self.namespace / claim)
        except (PodSpecError, OSError) as e:
            raise Waiting("CreateContainerConfigError", str(e)) from None
        self._container_env(launch)
        return launch

    def _container_env(self, launch: LocalLaunch) -> None:
        """What the runtime and the kubelet add: the `kubernetes` Service, the bind shim."""
        env, api = launch.env, self.kubelet.api.config
        for key, value in {"KUBERNETES_SERVICE_HOST": api.host, "KUBERNETES_SERVICE_PORT": str(api.port),
                           "KUBERNETES_SERVICE_PORT_HTTPS": str(api.port),
                           "KUBERNETES_PORT": f"tcp://{api.host}:{api.port}",
                           "KUBERNETES_PORT_443_TCP": f"tcp://{api.host}:{api.port}",
                           "KUBERNETES_PORT_443_TCP_PROTO": "tcp",
                           "KUBERNETES_PORT_443_TCP_ADDR": api.host,
                           "KUBERNETES_PORT_443_TCP_PORT": str(api.port)}.items():
            env.setdefault(key, value)
        env["ADAMW_VIRTUAL_POD_IP"] = self.ip
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SHIM_DIR), env.get("PYTHONPATH")) if p)

    # -- running -----------------------------------------------------------------------------

    async def _run_container(self) -> Termination:
        assert self.launch is not None
        launch = self.launch
        launch.layout.termination_log.write_bytes(b"")  # a fresh container, a fresh file
        self.process = LocalProcess(launch)
        await self.process.start()
        self.pid = self.process.pid
        readiness = self.spec_container.get("readinessProbe")
        self.container.container_id = f"virtual://{uuid.uuid4().hex}"
        self.container.state = {"running": {"startedAt": now_iso()}}
        self.container.ready = not probes.supported(readiness)
        self._liveness_failed = False
        await self._write()
        self.kubelet.event(self.pod, "Normal", "Started", f"Started container {self.container.name}")
        running = [self._spawn(self._refresh_tokens())]
        if probes.supported(readiness):
            running.append(self._spawn(probes.run_probe(
                readiness, self.spec_container, self.ip, self._readiness_changed, initial=False,
                max_period=self.kubelet.options.probe_period_max)))
        liveness = self.spec_container.get("livenessProbe")
        if probes.supported(liveness):
            running.append(self._spawn(probes.run_probe(
                liveness, self.spec_container, self.ip, self._liveness_changed, initial=True,
                max_period=self.kubelet.options.probe_period_max)))
        waiter = asyncio.ensure_future(self.process.wait())
        stopping = False
        while not waiter.done():
            self.changed.clear()
            if (self.deleting or self._liveness_failed) and not stopping:
                stopping = True
                grace = self._grace()
                reason = "Stopping container" if self.deleting else "Container failed liveness probe, will be restarted"
                self.kubelet.event(self.pod, "Normal", "Killing", f"{reason} {self.container.name}")
                self._spawn(self.process.stop(grace))
            changed = asyncio.ensure_future(self.changed.wait())
            await asyncio.wait([waiter, changed], return_when=asyncio.FIRST_COMPLETED)
            changed.cancel()
        ended = waiter.result()
        # What tearing down the container's cgroup does: nothing it started outlives it
        # (the process began its own session, so its process group is its pid).
        if self.pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        for task in running:
            task.cancel()
        started = self.container.state.get("running", {}).get("startedAt")
        terminated: Obj = {"exitCode": ended.exit_code, "reason": ended.reason, "startedAt": started,
                           "finishedAt": now_iso(), "containerID": self.container.container_id}
        if ended.message:
            terminated["message"] = ended.message
        if ended.signal:
            terminated["signal"] = ended.signal
        self.container.state = {"terminated": terminated}
        self.container.ready = False
        if not self.deleting and not self._restarts(ended.exit_code):
            self.terminal = True
        await self._write()
        return ended

    def _grace(self) -> float:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        grace = meta.get("deletionGracePeriodSeconds") if self.deleting else None
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds", 30)
        return max(float(grace), MIN_GRACE_SECONDS)

    def _readiness_changed(self, ready: bool) -> None:
        if self.container.running and self.container.ready != ready:
            self.container.ready = ready
            self._spawn(self._write())

    def _liveness_changed(self, alive: bool) -> None:
        if not alive:
            self.kubelet.event(self.pod, "Warning", "Unhealthy", "Liveness probe failed")
            self._liveness_failed = True
            self.changed.set()

    async def _refresh_tokens(self) -> None:
        """Rewrite projected tokens at 80% of their lifetime, as the kubelet's token manager does."""
        if not self._tokens:
            return
        assert self.launch is not None
        while True:
            await asyncio.sleep(0.8 * min(t.expiration_seconds for t in self._tokens))
            for token in self._tokens:
                target = self.launch.layout.pod_dir / "volumes" / token.volume / token.path
                try:
                    value = await self.kubelet.request_token(self.pod, token)
                except Exception as e:  # keep the old one; it is still valid for 20% of its life
                    logger.warning("pod %s: token refresh failed: %s", self.name, e)
                    continue
                tmp = target.with_name(f".{target.name}.tmp")
                tmp.write_text(value)
                tmp.replace(target)

    async def _stop_process(self, grace: float) -> None:
        if self.process is not None and self.process.running:
            with contextlib.suppress(ProcessLookupError):
                await self.process.stop(grace)
        if self.pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)

    def kill(self, sig: int = signal.SIGKILL) -> int | None:
        if self.process is None or not self.process.running:
            return None
        self.process.signal(sig)
        return self.process.pid

    # -- API writes --------------------------------------------------------------------------

    async def _write(self) -> None:
        await self.kubelet.reachable.wait()
        async with self._write_lock:
            await self._write_locked()

    async def _write_locked(self) -> None:
        ready = self.container.ready and self.container.running
        phase = phase_of(self.container, self.restart_policy, terminal=self.terminal)
        reason = "PodCompleted" if phase in ("Succeeded", "Failed") else "ContainersNotReady"
        status = pod_status(
            phase=phase, container=self.container,
            conditions=self.conditions.build(sandbox=self.sandbox, ready=ready, terminal=self.terminal,
                                             reason=None if ready else reason),
            pod_ip=self.ip, host_ip=self.kubelet.host_ip, start_time=self.start_time)
        if status == self._written or self.removed:
            return
        try:
            await self.kubelet.patch_status(self.path, status_patch(self.uid, status))
            self._written = status
            self._retry_delay = 0.5
        except ApiError as e:
            if e.status == 404:
                self.gone()
                return
            if e.status < 500 and e.status not in (403, 429):
                logger.warning("pod %s/%s: status write refused: %s", self.namespace, self.name, e)
            self._retry_later()  # 403: a restarted API server's Node authorizer is still syncing
        except (aiohttp.ClientError, TimeoutError):
            self._retry_later()

    def _retry_later(self) -> None:
        """Write the then-current status again shortly, as the status manager's resync does."""
        if self._retry_pending:
            return
        self._retry_pending = True
        delay, self._retry_delay = self._retry_delay, min(self._retry_delay * 2, 10.0)

        async def retry() -> None:
            await asyncio.sleep(delay)
            self._retry_pending = False
            await self._write()

        self._spawn(retry())

    async def _confirm_deletion(self) -> None:
        if self.removed:
            return
        while not self.removed:
            try:
                await self.kubelet.delete_pod(self.path, self.uid)
                return
            except ApiError as e:
                if e.status in (404, 409):
                    return
                if e.status < 500 and e.status not in (403, 429):
                    logger.warning("pod %s/%s: confirming the deletion failed: %s", self.namespace, self.name, e)
                    return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(1.0)  # the API server is away: confirm when it is back

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _event_reason(waiting_reason: str) -> str:
    return {"ErrImagePull": "Failed", "CreateContainerConfigError": "Failed",
            "CreateContainerError": "Failed"}.get(waiting_reason, waiting_reason)
