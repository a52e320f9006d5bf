"""End to end: the real Kopf operator, the API emulator, and a node agent that runs the
operator's pods as real trainer processes (tiny CPU GPT, gloo over loopback).

Slow by nature (each worker imports torch); together well under the area's budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.kube.node_agent import NodeAgent
from tests.kube.store import JOBS, PODS
from tests.operator.harness import condition, events_for, phase_is, running_operator, workers
from tests.operator.jobs import job_manifest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
os.environ.setdefault("OMP_NUM_THREADS", "1")

TRAINER = {
    "model": {"layers": 2, "heads": 2, "width": 64, "contextLength": 32},
    "data": {"source": "synthetic", "evalIntervalSteps": 0},
    "training": {"maxSteps": 150, "batchSize": 8, "threads": 1, "logIntervalSteps": 5},
    "checkpoint": {"dir": "/checkpoints", "intervalSteps": 20},
    "metrics": {"port": 18090},
    "device": "cpu",
}


def e2e_job(name: str, **spec):
    trainer = json.loads(json.dumps(TRAINER))
    for section, values in spec.pop("trainer", {}).items():
        trainer.setdefault(section, {}).update(values)
    spec = {
        "replicas": 2, "checkpointStorage": {"claimName": f"{name}-ckpt"},
        # a worker stuck in a collective after its peer died must not hold up the restart
        "pod": {"terminationGracePeriodSeconds": 10},
        **spec,
        "restartPolicy": {"backoffSeconds": 1, "maxBackoffSeconds": 5, **spec.get("restartPolicy", {})},
    }
    return job_manifest(name, trainer=trainer, **spec)


def checkpoints(root: Path, claim: str) -> list[int]:
    folder = root / "claims" / "default" / claim
    return sorted(int(p.name[5:]) for p in folder.glob("step-*") if p.name[5:].isdigit())


async def wait_until(predicate, timeout: float, what: str):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.1)


async def test_killed_worker_gang_restarts_resumes_and_succeeds(kube, tmp_path):
    node = tmp_path / "node"
    async with NodeAgent(kube, node) as agent, running_operator(kube, poll_interval=0.5):
        await kube.client.create("awj", e2e_job("e2e"))
        await wait_until(lambda: checkpoints(node, "e2e-ckpt"), 90, "no checkpoint written")
        killed_at = max(checkpoints(node, "e2e-ckpt"))
        job = await kube.client.get("awj", "e2e")
        assert job["status"]["phase"] == "Running" and job["status"]["attempt"] == 0
        agent.kill("e2e-worker-1", signal.SIGKILL)
        job = await kube.client.wait_for("awj", "e2e", phase_is("Succeeded", "Failed"), timeout=180)
        st = job["status"]
        assert st["phase"] == "Succeeded", st
        assert st["restarts"] == 1 and st["attempt"] == 1 and st["preemptions"] == 0
        assert st["step"] == 150 and st["lastGoodCheckpoint"]["step"] == 150
        assert st["lastFailure"]["rank"] == 1 and st["lastFailure"]["exitCode"] == 137
        # the second attempt resumed from the checkpoint instead of starting over
        log = agent.log("e2e-worker-0")
        resumed = [json.loads(line) for line in log.splitlines() if '"event": "resumed"' in line]
        assert resumed and resumed[0]["step"] >= killed_at, log[-2000:]
        reasons = [e["reason"] for e in await events_for(kube, "e2e")]
        assert reasons.count("CrashedRestart") == 1 and "Succeeded" in reasons
        assert condition(job, "Succeeded")["status"] == "True"


async def test_invalid_config_fails_without_restarting(kube, tmp_path):
    async with NodeAgent(kube, tmp_path / "node"), running_operator(kube):
        # passes the schema, but the trainer cannot find its data: exit 2, InvalidConfig
        await kube.client.create("awj", e2e_job("badcfg", trainer={
            "data": {"source": "text", "path": "/data/missing.txt"}}))
        job = await kube.client.wait_for("awj", "badcfg", phase_is("Failed", "Succeeded"), timeout=90)
        assert condition(job, "Failed")["reason"] == "InvalidConfig", job["status"]
        assert job["status"]["restarts"] == 0 and job["status"]["attempt"] == 0
        await asyncio.sleep(1)
        assert await workers(kube, "badcfg", attempt=1) == []


async def test_preempted_job_restarts_without_using_the_budget(kube, tmp_path):
    node = tmp_path / "node"
    async with NodeAgent(kube, node) as agent, running_operator(kube, poll_interval=0.5):
        await kube.client.create("awj", e2e_job("pre", restartPolicy={"maxRestarts": 0}))
        await wait_until(lambda: checkpoints(node, "pre-ckpt"), 90, "no checkpoint written")
        await agent.preempt("pre-worker-0")  # SIGTERM: the trainer saves and exits 143
        job = await kube.client.wait_for("awj", "pre", phase_is("Succeeded", "Failed"), timeout=180)
        st = job["status"]
        assert st["phase"] == "Succeeded", st
        assert st["preemptions"] == 1 and st["restarts"] == 0


async def test_suspend_then_resume_continues_from_the_checkpoint(kube, tmp_path):
    node = tmp_path / "node"
    async with NodeAgent(kube, node) as agent, running_operator(kube, poll_interval=0.5):
        await kube.client.create("awj", e2e_job("sus"))
        await wait_until(lambda: checkpoints(node, "sus-ckpt"), 90, "no checkpoint written")
        await kube.client.patch("awj", "sus", {"spec": {"suspend": True}})
        await kube.client.wait_for("awj", "sus", phase_is("Suspended"), timeout=30)
        await kube.client.wait_for_list("pods", lambda items: not items,
                                        labels="training.adamw.io/job-name=sus", timeout=30)
        saved = max(checkpoints(node, "sus-ckpt"))  # SIGTERM saved one more on the way out
        await kube.client.patch("awj", "sus", {"spec": {"suspend": False}})
        job = await kube.client.wait_for("awj", "sus", phase_is("Succeeded", "Failed"), timeout=180)
        st = job["status"]
        assert st["phase"] == "Succeeded", st
        assert st["restarts"] == 0 and st["preemptions"] == 0
        log = agent.log("sus-worker-0")
        resumed = [json.loads(line) for line in log.splitlines() if '"event": "resumed"' in line]
        assert resumed and resumed[0]["step"] == saved, log[-2000:]
        reasons = [e["reason"] for e in await events_for(kube, "sus")]
        assert "Suspended" in reasons and "Resumed" in reasons


async def test_divergence_rollback_is_an_event_and_exhausted_divergence_fails(kube, tmp_path):
    divergence = {"maxConsecutiveNonfiniteSteps": 3, "action": "Rollback", "maxRollbacks": 1}
    async with NodeAgent(kube, tmp_path / "node"), running_operator(kube, poll_interval=0.2):
        # NaN gradients from step 45 until one rollback cures them: training goes on
        await kube.client.create("awj", e2e_job(
            "nan", replicas=1, trainer={"divergence": divergence, "training": {"maxSteps": 300}},
            pod={"terminationGracePeriodSeconds": 10, "env": [
                {"name": "ADAMW_FAULT_NAN_GRAD_STEPS", "value": "45-300"},
                {"name": "ADAMW_FAULT_NAN_GRAD_UNTIL_ROLLBACKS", "value": "1"}]}))
        job = await kube.client.wait_for("awj", "nan", phase_is("Succeeded", "Failed"), timeout=120)
        assert job["status"]["phase"] == "Succeeded", job["status"]
        assert job["status"]["rollbacks"] == 1 and job["status"]["restarts"] == 0
        rollback = [e for e in await events_for(kube, "nan") if e["reason"] == "Rollback"]
        assert len(rollback) == 1 and "rollbacks: 1" in rollback[0]["message"]
        # NaN for good and no rollbacks left: the trainer exits 3, onDivergence Fail ends the job
        await kube.client.create("awj", e2e_job(
            "div", replicas=1, trainer={"divergence": {**divergence, "maxRollbacks": 0}},
            pod={"terminationGracePeriodSeconds": 10, "env": [
                {"name": "ADAMW_FAULT_NAN_GRAD_STEPS", "value": "25-300"}]}))
        job = await kube.client.wait_for("awj", "div", phase_is("Succeeded", "Failed"), timeout=120)
        assert condition(job, "Failed")["reason"] == "Diverged", job["status"]
        assert job["status"]["restarts"] == 0 and job["status"]["lastFailure"]["exitCode"] == 3


@contextlib.asynccontextmanager
async def operator_process(kube, log_path: Path, metrics_port: int, liveness_port: int):
    """`adamw-operator` as a real process (what the Deployment runs), pointed at the emulator."""
    env = {**os.environ, "KUBECONFIG": str(kube.kubeconfig)}
    with open(log_path, "ab") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "adamw_operator.cli", "--namespace", "default", "--standalone",
            "--poll-interval", "0.5", "--resync-interval", "5", "--metrics-port", str(metrics_port),
            "--liveness-port", str(liveness_port), env=env, stdout=log, stderr=log)
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(300):  # liveness answers once Kopf runs
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{liveness_port}/healthz") as resp:
                        if resp.status == 200:
                            break
                assert proc.returncode is None, log_path.read_text()[-3000:]
                await asyncio.sleep(0.1)
        while not {"v1/pods", "training.adamw.io/v1alpha1/adamwtrainingjobs"} <= set(kube.emulator.open_watches):
            await asyncio.sleep(0.05)
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_operator_killed_mid_job_creates_no_duplicates(kube, tmp_path):
    """The operator process is SIGKILLed while the job runs; a new one takes over through
    dropped watches and API errors, creates no second set of pods, and finishes the job."""
    node = tmp_path / "node"
    created: list[str] = []
    kube.store.listeners.append(lambda rt, ev: created.append(ev.object["metadata"]["uid"])
                                if rt.key == PODS.key and ev.type == "ADDED" else None)
    log = tmp_path / "operator.log"
    metrics_port, liveness_port = free_port(), free_port()
    async with NodeAgent(kube, node):
        async with operator_process(kube, log, metrics_port, liveness_port) as first:
            await kube.client.create("awj", e2e_job("opre"))
            await kube.client.wait_for("awj", "opre", phase_is("Running"), timeout=60)
            first.kill()  # no graceful shutdown: a crash or a node loss
            await first.wait()
        assert len(created) == 2
        # the next one meets a flaky API (only the operator writes job status)
        kube.fail("PATCH", kube.url_of(JOBS, "default", "opre", "status"), 500, times=2)
        kube.fail("PATCH", kube.url_of(JOBS, "default", "opre", "status"), 409, times=1)
        async with operator_process(kube, log, metrics_port, liveness_port):
            await kube.drop_watches()
            job = await kube.client.wait_for("awj", "opre", phase_is("Succeeded", "Failed"), timeout=180)
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{metrics_port}/metrics") as resp:
                    metrics = await resp.text()
        assert job["status"]["phase"] == "Succeeded", (job["status"], log.read_text()[-3000:])
        assert len(created) == 2 and job["status"]["restarts"] == 0
        assert 'adamw_operator_jobs{namespace="default",phase="Succeeded"} 1.0' in metrics
        if shutil.which("promtool"):  # the real linter: naming, units, HELP, _total
            lint = await asyncio.create_subprocess_exec(
                "promtool", "check", "metrics", stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            out, _ = await lint.communicate(metrics.encode())
            assert lint.returncode == 0, out.decode()
        # structured logs: one JSON object per line
        lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
        assert lines and all(json.loads(line)["level"] for line in lines)
