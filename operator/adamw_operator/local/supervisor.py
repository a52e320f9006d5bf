"""Supervise one AdamWTrainingJob's workers as local processes with the operator's decisions.

The loop is the operator's reconcile with processes for pods: observe the workers
(`observe_pod` on kubelet-shaped pod statuses), `decide`, then carry out the Plan —
create workers from `build_worker_pod`, stop the ones to delete (SIGTERM, SIGKILL after
the grace period), report events — and fold rank 0's `/status` into the job status with
`fold_progress`. Gang restarts, backoff, the exit-code contract, the preemption cap, the
no-progress breaker and the divergence policy therefore behave exactly as on a cluster.

Local stand-ins (documented in `pod_process`): every rank gets its own loopback address,
the checkpoint volume is `<run dir>/checkpoints` whatever the manifest says (so a later
run resumes), and each attempt gets a free rendezvous port instead of the fixed
MASTER_PORT (several local jobs share one network namespace).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from ..api.checks import CHECKPOINT_VOLUME
from ..api.spec import AdamWTrainingJobSpec
from ..builders.configmap import build_configmap
from ..builders.pods import build_worker_pod
from ..decisions import Event, decide
from ..observe import observe_pod
from ..progress import fold_progress, read_status
from ..status import TERMINAL_PHASES
from . import pod_status
from .pod_process import LocalProcess, PodSpecError, dns_names, prepare_pod

POLL_SECONDS = 1.0  # how often rank 0's /status is read (the operator: every 10 s)


class Reporter(Protocol):
    def worker_started(self, worker: Worker) -> None: ...
    def event(self, event: Event) -> None: ...
    def update(self, status: dict[str, Any]) -> None: ...


class LocalRunError(RuntimeError):
    """The job cannot run on this machine (e.g. a volume type with no local equivalent)."""


@dataclass
class Worker:
    rank: int
    attempt: int
    pod: dict[str, Any]
    ip: str
    process: LocalProcess
    metrics_url: str | None
    task: asyncio.Task[None] | None = None
    deleting: bool = False

    @property
    def name(self) -> str:
        return self.pod["metadata"]["name"]

    @property
    def log_file(self) -> Path:
        return self.process.launch.layout.log_file


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@dataclass
class LocalJob:
    name: str
    spec: AdamWTrainingJobSpec
    root: Path  # the run directory: checkpoints/, pods/, loss.png
    reporter: Reporter
    namespace: str = "default"
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    status: dict[str, Any] = field(default_factory=dict)
    workers: dict[str, Worker] = field(default_factory=dict)
    history: list[Worker] = field(default_factory=list)  # every worker started, in order
    interrupted: bool = False

    def __post_init__(self) -> None:
        self.uid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"adamw-job:{self.namespace}/{self.name}"))
        self._changed = asyncio.Event()
        self._stop_requests = 0
        self._subnet = random.randrange(1, 255)  # 127.<subnet>.x.y: apart from other local runs
        self._master_port: tuple[int, int] | None = None  # (attempt, port)
        self._deletions: set[asyncio.Task[None]] = set()

    @property
    def checkpoint_dir(self) -> Path:
        return self.root / "checkpoints"

    # -- control ---------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Ctrl-C: workers get SIGTERM (they save and exit 143); a second one kills them."""
        self._stop_requests += 1
        self.interrupted = True
        if self._stop_requests > 1:
            for worker in self.workers.values():
                worker.process.signal(signal.SIGKILL)
        self._changed.set()

    async def run(self) -> dict[str, Any]:
        """Run until the job succeeds, fails or is interrupted; the final job status."""
        self.root.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        next_poll = 0.0
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            try:
                while not self.interrupted:
                    self._changed.clear()
                    plan = decide(spec=self.spec, status=self.status,
                                  workers=[observe_pod(w.pod) for w in self.workers.values()],
                                  now=self.clock(), generation=1)
                    self.status = plan.status
                    for event in plan.events:
                        self.reporter.event(event)
                    for name in plan.delete_pods:
                        self._delete(name)
                    if plan.create_ranks:
                        await self._create(plan.create_ranks)
                    if self.status.get("phase") in TERMINAL_PHASES:
                        break  # workers still running are stopped below, whatever cleanPodPolicy says
                    if self.status.get("phase") == "Running" and loop.time() >= next_poll:
                        next_poll = loop.time() + POLL_SECONDS
                        await self._poll_progress(http)
                    self.reporter.update(self.status)
                    wait = POLL_SECONDS if plan.requeue_after is None else min(POLL_SECONDS, plan.requeue_after)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), timeout=max(wait, 0.01))
            finally:
                await self._stop_all()
        self.reporter.update(self.status)
        return self.status

    # -- carrying out the plan --------------------------------------------------------------

    def ip_of(self, rank: int) -> str:
        """Rank r's pod IP: its own loopback address, the same in every attempt of this run."""
        return f"127.{self._subnet}.{rank // 250}.{rank % 250 + 2}"

    def _port_for(self, attempt: int) -> int:
        if self._master_port is None or self._master_port[0] != attempt:
            self._master_port = (attempt, free_port())
        return self._master_port[1]

    def _localize(self, pod: dict[str, Any], master_port: int) -> dict[str, Any]:
        """The cluster pod, adjusted for this machine (see the module docstring)."""
        pod["metadata"]["uid"] = str(uuid.uuid4())  # the API server gives every pod its own
        for volume in pod["spec"]["volumes"]:
            if volume["name"] == CHECKPOINT_VOLUME:
                for source in ("persistentVolumeClaim", "emptyDir"):
                    volume.pop(source, None)
                volume["hostPath"] = {"path": str(self.checkpoint_dir)}
        for env in pod["spec"]["containers"][0]["env"]:
            if env["name"] == "MASTER_PORT":
                env["value"] = str(master_port)
        pod["status"] = {"phase": "Pending"}
        return pod

    async def _create(self, ranks: list[int]) -> None:
        st = self.status
        attempt = st["attempt"]
        port = self._port_for(attempt)
        built = build_configmap(self.name, self.namespace, self.uid, self.spec)  # as on a cluster
        config = {built["metadata"]["name"]: built["data"]}
        pods = {
            rank: self._localize(build_worker_pod(
                self.name, self.namespace, self.uid, self.spec, rank, attempt,
                st.get("restarts", 0) + st.get("preemptions", 0), st.get("checkpointSaveSeconds"),
                config_map=built["metadata"]["name"]), port)
            for rank in range(self.spec.replicas)  # every rank's pod, for the DNS names
        }
        hosts = {dns: self.ip_of(rank) for rank, pod in pods.items() for dns in dns_names(pod)}
        metrics_port = self.spec.trainer.metrics.port
        for rank in ranks:
            pod, ip = pods[rank], self.ip_of(rank)
            try:
                launch = prepare_pod(pod, root=self.root, pod_ip=ip, config_maps=config,
                                     hosts=hosts, claim_dir=lambda claim: self.root / "volumes" / claim)
            except PodSpecError as err:
                raise LocalRunError(str(err)) from None
            process = LocalProcess(launch)
            await process.start()
            pod["status"] = pod_status.running(pod, ip)
            worker = Worker(rank=rank, attempt=attempt, pod=pod, ip=ip, process=process,
                            metrics_url=f"http://{ip}:{metrics_port}/metrics" if metrics_port else None)
            worker.task = asyncio.create_task(self._watch(worker))
            self.workers[worker.name] = worker
            self.history.append(worker)
            self.reporter.worker_started(worker)

    async def _watch(self, worker: Worker) -> None:
        ended = await worker.process.wait()
        worker.pod["status"] = pod_status.terminated(
            worker.pod, ended.exit_code, message=ended.message, signal=ended.signal)
        self._changed.set()

    def _delete(self, name: str) -> None:
        worker = self.workers.get(name)
        if worker is None or worker.deleting:
            return
        worker.deleting = True
        worker.pod["metadata"]["deletionTimestamp"] = pod_status.now_iso()

        async def stop_and_forget() -> None:
            await worker.process.stop()
            if worker.task is not None:
                await worker.task
            self.workers.pop(name, None)  # the kubelet confirmed: the pod object is gone
            self._changed.set()

        task = asyncio.create_task(stop_and_forget())
        self._deletions.add(task)
        task.add_done_callback(self._deletions.discard)

    async def _stop_all(self) -> None:
        """Stop every worker like a pod deletion (SIGTERM, grace, SIGKILL) and wait."""
        stops = [w.process.stop() for w in self.workers.values() if w.process.running]
        await asyncio.gather(*stops)
        tasks = [w.task for w in self.workers.values() if w.task is not None]
        await asyncio.gather(*tasks, *self._deletions, return_exceptions=True)

    async def _poll_progress(self, http: aiohttp.ClientSession) -> None:
        rank0 = next((w for w in self.workers.values() if w.rank == 0 and not w.deleting), None)
        port = self.spec.trainer.metrics.port
        if rank0 is None or not port:
            return
        report = await read_status(http, rank0.ip, port, timeout=1.0)
        if report is None:
            return
        patch, events = fold_progress(self.status, report, self.clock())
        for key, value in patch.items():
            if value is None:
                self.status.pop(key, None)
            else:
                self.status[key] = value
        for event in events:
            self.reporter.event(event)
