"""Carries out Plans against the API: one reconcile = read the job and its pods fresh,
`decide`, then delete, create, write status, post events. Kopf only tells us *when*.

Per job, reconciles never overlap: a trigger that arrives while one runs marks the job
dirty and the running reconcile goes round once more (so bursts of pod events coalesce).
A background ticker re-runs jobs whose Plan asked for a requeue (backoff expiry, hang
deadline, TTL), polls rank 0's /status for Running jobs, and resyncs every job now and then.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

import aiohttp
from adamw_trainer.config import ConfigError

from .api.constants import API_VERSION, KIND, LABEL_JOB
from .api.spec import AdamWTrainingJobSpec, parse_spec, with_default_image
from .builders.configmap import build_configmap
from .builders.network_policy import build_network_policy
from .builders.pods import build_worker_pod
from .builders.service import build_service
from .decisions import Event, Plan, decide
from .kube import ApiError, KubeClient
from .metrics import OperatorMetrics, finished_outcome
from .observe import WorkerObservation, observe_pod
from .progress import fold_progress, read_status
from .status import TERMINAL_PHASES, get_condition, rfc3339

log = logging.getLogger("adamw_operator")
Key = tuple[str, str]


def merge_patch(old: Any, new: Any) -> Any:
    """RFC 7386 merge patch turning `old` into `new` (None where a key went away)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            patch[key] = merge_patch(old[key], value) if isinstance(value, dict) else value
    return patch


class Controller:
    def __init__(
        self,
        kube: KubeClient,
        metrics: OperatorMetrics | None = None,
        poll_interval: float = 10.0,
        resync_interval: float = 60.0,
        tick: float = 0.1,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        default_image: str | None = None,
    ):
        self.kube = kube
        self.default_image = default_image
        self.metrics = metrics or OperatorMetrics()
        self.poll_interval = poll_interval
        self.resync_interval = resync_interval
        self.tick = tick
        self.clock = clock
        self._locks: dict[Key, asyncio.Lock] = {}
        self._dirty: set[Key] = set()
        self._due: dict[Key, float] = {}
        self._error_backoff: dict[Key, float] = {}
        self._phase: dict[Key, str | None] = {}
        self._rank0: dict[Key, tuple[str, int]] = {}
        self._failure_seen: dict[Key, tuple[float, float]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ticker: asyncio.Task[Any] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._event_seq = 0
        self._written: dict[Key, str] = {}  # resourceVersion of our last status write
        self._pods: dict[Key, tuple[str | None, WorkerObservation]] = {}
        # per job: pod name -> its last observation, from the watch's DELETED event
        self._vanished: dict[Key, dict[str, WorkerObservation]] = {}

    # Lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._run_ticker(), name="adamw-ticker")

    async def stop(self) -> None:
        tasks = [t for t in (self._ticker, *self._tasks) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._ticker = None
        if self._http is not None:
            await self._http.close()
        await self.kube.close()

    def forget(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        for table in (self._due, self._phase, self._rank0, self._failure_seen, self._error_backoff,
                      self._written, self._vanished):
            table.pop(key, None)
        self.metrics.set_phase(namespace, name, None)
        lock = self._locks.get(key)
        if lock is not None and not lock.locked():
            del self._locks[key]
        for pod_key in [k for k in self._pods if k[0] == namespace and k[1].startswith(f"{name}-worker-")]:
            del self._pods[pod_key]

    # Triggers --------------------------------------------------------------------
    async def job_event(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        """A job changed; the echo of this operator's own status write needs no reconcile."""
        rv = (body.get("metadata") or {}).get("resourceVersion")
        if rv is not None and self._written.get((namespace, name)) == rv:
            return
        await self.reconcile(namespace, name)

    async def pod_event(self, namespace: str, job: str, event_type: str | None, pod: dict[str, Any]) -> None:
        """A worker pod changed; reconcile only when what the decision reads changed."""
        meta = pod.get("metadata") or {}
        key = (namespace, meta.get("name", ""))
        if event_type == "DELETED":
            self._pods.pop(key, None)
            self._vanished.setdefault((namespace, job), {})[key[1]] = observe_pod(pod)
        else:
            seen = (meta.get("uid"), observe_pod(pod))
            if self._pods.get(key) == seen:
                return  # e.g. the scheduler binding it to a node
            self._pods[key] = seen
        await self.reconcile(namespace, job)

    async def reconcile(self, namespace: str, name: str) -> None:
        """Reconcile now, or make the one in progress go round again."""
        key = (namespace, name)
        lock = self._locks.setdefault(key, asyncio.Lock())
        if lock.locked():
            self._dirty.add(key)
            return
        async with lock:
            rounds = 0
            while True:
                self._dirty.discard(key)
                await self._reconcile_guarded(namespace, name)
                rounds += 1
                if key not in self._dirty or rounds > 20:
                    break

    def _spawn(self, namespace: str, name: str) -> None:
        self._track(self.reconcile(namespace, name))

    def _track(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` in the background; `stop` cancels whatever is still running."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reconcile_guarded(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        started = time.perf_counter()
        try:
            await self._reconcile_once(namespace, name)
            self._error_backoff.pop(key, None)
        except asyncio.CancelledError:
            raise
        except ApiError as err:
            if err.status == 409:
                # Someone wrote the job since we read it (the user, or another replica):
                # decide again on the new state at once rather than after an error backoff.
                self.metrics.reconcile_errors.labels(kind="conflict").inc()
                self._requeue(key, 0.05)
            else:
                self._failed(key, err, f"http{err.status}")
        except Exception as err:  # noqa: BLE001 - any failure: count, log, retry later
            self._failed(key, err, type(err).__name__)
        finally:
            self.metrics.reconcile_seconds.observe(time.perf_counter() - started)

    def _failed(self, key: Key, err: Exception, kind: str) -> None:
        """Count, log and retry with a growing delay (capped at 30 s)."""
        self.metrics.reconcile_errors.labels(kind=kind).inc()
        delay = min(30.0, self._error_backoff.get(key, 0.25) * 2)
        self._error_backoff[key] = delay
        self._requeue(key, delay)
        log.warning("reconcile %s/%s failed (retry in %.1fs): %s", *key, delay, err)

    def _requeue(self, key: Key, seconds: float) -> None:
        due = time.monotonic() + seconds
        if key not in self._due or self._due[key] > due:
            self._due[key] = due

    # One reconcile -----------------------------------------------------------------
    async def _reconcile_once(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        body = await self.kube.get_job(namespace, name)
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            self.forget(namespace, name)
            return
        meta = body["metadata"]
        uid, generation = meta.get("uid", ""), meta.get("generation")
        status = body.get("status") or {}
        now = self.clock()
        spec: AdamWTrainingJobSpec | None = None
        problems: list[str] = []
        try:
            spec = with_default_image(parse_spec(body.get("spec")), self.default_image)
        except ConfigError as err:
            problems = err.problems
        workers: list[WorkerObservation] = []
        if spec is not None:
            pods = await self.kube.list_pods(namespace, f"{LABEL_JOB}={name}")
            workers = [observe_pod(p) for p in pods if _owned_by(p, uid)]
            self._remember_rank0(key, spec, workers, status.get("attempt", 0))
        observed = dict(spec=spec, workers=workers, generation=generation, spec_problems=problems,
                        vanished=list(self._vanished.get(key, {}).values()), annotations=meta.get("annotations"))
        plan = decide(status=status, now=now, **observed)
        version = await self._apply(body, status, spec, plan)
        if spec is not None and plan.create_ranks:
            refused = await self._create_workers(namespace, name, uid, spec, plan.status, plan.create_ranks)
            if refused is not None:
                # The refusal is an observation like any other: decide again with it (it creates
                # nothing in answer) and carry that out, conditionally on the version just written.
                after = decide(status=plan.status, now=self.clock(), rejected=refused, **observed)
                await self._apply(body, plan.status, spec, after, version)
            elif key in self._failure_seen:
                seen, delay = self._failure_seen.pop(key)
                self.metrics.replacement_seconds.observe(max(0.0, time.monotonic() - seen - delay))

    async def _apply(self, body: dict[str, Any], old: dict[str, Any], spec: AdamWTrainingJobSpec | None,
                     plan: Plan, version: str | None = None) -> str | None:
        """Everything in the Plan but pod creation; the job's resourceVersion after it."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        key = (namespace, name)
        st = plan.status
        # Status first: once the next attempt number is stored, a crash of this process
        # between here and the deletes can never count the same failure twice.
        patch = merge_patch(old, st)
        version = version or meta.get("resourceVersion")
        if patch:
            version = await self._write_status(namespace, name, patch, version)
        self.metrics.charge(namespace, name, old, st)
        if plan.restart is not None:
            self.metrics.restarts.labels(namespace=namespace, job_name=name, reason=plan.restart.reason).inc()
            self._failure_seen[key] = (time.monotonic(), plan.restart.delay)
        if st.get("phase") == "Failed" and old.get("phase") != "Failed":
            reason = (get_condition(st, "Failed") or {}).get("reason", "Unknown")
            self.metrics.failures.labels(namespace=namespace, job_name=name, reason=reason).inc()
        if (finished := finished_outcome(old, st)) is not None:  # the job-success SLI, once per job
            self.metrics.job_finished(namespace, *finished)
        await asyncio.gather(*(self.kube.delete_pod(namespace, n) for n in plan.delete_pods))
        for event in plan.events:
            await self.post_event(body, event)
        self._phase[key] = st.get("phase")
        self.metrics.set_phase(namespace, name, st.get("phase"))
        if plan.delete_job:
            await self.kube.delete_job(namespace, name)
            self.forget(namespace, name)
            return version
        if plan.requeue_after is not None:
            self._requeue(key, plan.requeue_after)
        return version

    async def _write_status(self, namespace: str, name: str, patch: dict[str, Any],
                            resource_version: str | None) -> str | None:
        """Write status conditionally on the version we decided from; the new version.

        Two replicas (a peering hand-over, a restarted operator) can never both act on the
        same observation: the second write fails with 409 and that reconcile starts over.
        """
        result = await self.kube.patch_job_status(namespace, name, patch, resource_version)
        rv = ((result or {}).get("metadata") or {}).get("resourceVersion")
        if rv is not None:
            self._written[(namespace, name)] = rv
        return rv

    async def _create_workers(self, namespace: str, name: str, uid: str, spec: AdamWTrainingJobSpec,
                              st: dict[str, Any], ranks: list[int]) -> str | None:
        """Create the ConfigMap, Service, NetworkPolicy and pods; the server's message if it refused one."""
        try:
            config = build_configmap(name, namespace, uid, spec)  # immutable: create, never patch
            await self.kube.create(namespace, "configmaps", config)
            await self.kube.create(namespace, "services", build_service(name, namespace, uid, spec))
            if spec.network_policy.enabled:  # before the pods, so they never run unprotected
                await self.kube.create_network_policy(namespace, build_network_policy(
                    name, namespace, uid, spec, self.kube.own_namespace))
            pods = [
                build_worker_pod(name, namespace, uid, spec, rank, st["attempt"],
                                 st.get("restarts", 0) + st.get("preemptions", 0),
                                 st.get("checkpointSaveSeconds"), st.get("avoidedNodes") or (),
                                 config_map=config["metadata"]["name"])
                for rank in ranks
            ]
            await asyncio.gather(*(self.kube.create(namespace, "pods", p) for p in pods))
        except ApiError as err:
            if err.status in (400, 403, 422):
                return err.message
            raise
        return None

    # Events ------------------------------------------------------------------------
    async def post_event(self, body: dict[str, Any], event: Event) -> None:
        meta = body["metadata"]
        self._event_seq += 1
        stamp = rfc3339(self.clock())
        obj = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{meta['name']}.{time.time_ns():x}{self._event_seq:x}",
                "namespace": meta["namespace"],
            },
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid", ""),
            },
            "type": event.type,
            "reason": event.reason,
            "message": event.message[:1024],
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
            "source": {"component": "adamw-operator"},
            "reportingComponent": "adamw-operator",
            "reportingInstance": os.environ.get("HOSTNAME", "adamw-operator"),
        }
        try:
            await self.kube.create(meta["namespace"], "events", obj)
        except Exception as err:  # noqa: BLE001 - events are best effort
            log.info("could not post event %s for %s: %s", event.reason, meta["name"], err)

    # Progress polling ------------------------------------------------------------------
    def _remember_rank0(self, key: Key, spec: AdamWTrainingJobSpec,
                        workers: list[WorkerObservation], attempt: int) -> None:
        rank0 = next((w for w in workers if w.rank == 0 and w.attempt == attempt and w.pod_ip), None)
        if rank0 and spec.trainer.metrics.port and rank0.phase == "Running":
            self._rank0[key] = (rank0.pod_ip or "", spec.trainer.metrics.port)
        else:
            self._rank0.pop(key, None)

    async def poll_progress(self, namespace: str, name: str) -> None:
        """Read rank 0's /status once and fold it into the job status."""
        key = (namespace, name)
        target = self._rank0.get(key)
        if target is None or self._phase.get(key) != "Running":
            return
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        report = await read_status(self._http, target[0], target[1])
        if report is None:
            return
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            body = await self.kube.get_job(namespace, name)
            if body is None:
                return
            status = body.get("status") or {}
            if status.get("phase") in TERMINAL_PHASES:
                return
            patch, events = fold_progress(status, report, self.clock())
            if patch:
                await self._write_status(namespace, name, patch,
                                         (body.get("metadata") or {}).get("resourceVersion"))
            for event in events:
                await self.post_event(body, event)

    # Ticker ------------------------------------------------------------------------------
    async def _run_ticker(self) -> None:
        last_poll = last_resync = time.monotonic()
        while True:
            await asyncio.sleep(self.tick)
            now = time.monotonic()
            for key, due in list(self._due.items()):
                if due <= now:
                    del self._due[key]
                    self._spawn(*key)
            if now - last_poll >= self.poll_interval:
                last_poll = now
                for key in list(self._rank0):
                    self._track(self._safe_poll(*key))
            if now - last_resync >= self.resync_interval:
                last_resync = now
                for key, phase in list(self._phase.items()):
                    if phase not in TERMINAL_PHASES:
                        self._spawn(*key)

    async def _safe_poll(self, namespace: str, name: str) -> None:
        try:
            await self.poll_progress(namespace, name)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001
            self.metrics.reconcile_errors.labels(kind="progress").inc()
            log.info("progress poll of %s/%s failed: %s", namespace, name, err)


def _owned_by(pod: dict[str, Any], uid: str) -> bool:
    refs = (pod.get("metadata") or {}).get("ownerReferences") or []
    return not uid or any(r.get("uid") == uid for r in refs)
