"""HA: two `adamw-operator --peering` processes; Kopf's peering keeps one active."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys

import aiohttp
import pytest

from tests.kube.store import JOBS, PEERINGS, PODS
from tests.operator.harness import phase_is
from tests.operator.jobs import job_manifest
from tests.operator.test_e2e import free_port

pytestmark = pytest.mark.timeout(120)


async def reconciles(port: int) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    return next(float(line.split()[-1]) for line in text.splitlines()
                if line.startswith("adamw_operator_reconcile_duration_seconds_count"))


@contextlib.asynccontextmanager
async def replica(kube, tmp_path, name: str, priority: int):
    metrics, liveness = free_port(), free_port()
    log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "adamw_operator.cli", "-n", "default", "--peering", "adamw",
        "--priority", str(priority), "--metrics-port", str(metrics), "--liveness-port", str(liveness),
        env={**os.environ, "KUBECONFIG": str(kube.kubeconfig)}, stdout=log, stderr=log)
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{liveness}/healthz") as resp:
                        if resp.status == 200:
                            break
                await asyncio.sleep(0.1)
        yield proc, metrics
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()


async def test_only_the_leader_acts_and_the_standby_takes_over(kube, fake_kubelet, tmp_path):
    await kube.client.create(PEERINGS, {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering",
                                        "metadata": {"name": "adamw"}})
    async with replica(kube, tmp_path, "leader", 100) as (leader, leader_port), \
            replica(kube, tmp_path, "standby", 10) as (_, standby_port):
        while not {JOBS.key, PODS.key} <= set(kube.emulator.open_watches):
            await asyncio.sleep(0.05)
        await asyncio.sleep(2)  # the peers find each other; the lower priority pauses
        await kube.client.create("awj", job_manifest("ha"))
        await kube.client.wait_for("awj", "ha", phase_is("Running"), timeout=20)
        assert await reconciles(leader_port) > 0
        assert await reconciles(standby_port) == 0  # paused: it saw nothing, did nothing
        leader.terminate()  # a rolling update: the leader leaves the peering on its way out
        await asyncio.wait_for(leader.wait(), 20)
        await fake_kubelet.finish("ha-worker-1", 1)
        job = await kube.client.wait_for(
            "awj", "ha", lambda j: j and j["status"].get("restarts") == 1 and j["status"]["phase"] == "Running",
            timeout=60)
        assert job["status"]["attempt"] == 1
        assert await reconciles(standby_port) > 0
