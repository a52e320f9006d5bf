"""`adamw-job run --prometheus`: a real Prometheus scrapes the local workers with the chart's rules."""

from __future__ import annotations

import asyncio
import shutil
import signal
from pathlib import Path

import aiohttp
import pytest

from tests.local.runner import Run, tiny_job, write

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not installed (make tools)"),
]


async def query(session: aiohttp.ClientSession, url: str, promql: str) -> list[dict]:
    async with session.get(f"{url}/api/v1/query", params={"query": promql}) as response:
        return (await response.json())["data"]["result"]


async def test_prometheus_scrapes_both_ranks_and_evaluates_the_chart_rules(tmp_path: Path) -> None:
    job = tiny_job("watched", 9485)
    job["spec"]["trainer"]["training"]["maxSteps"] = 1_000_000
    run = Run(write(tmp_path, job), tmp_path / "run")
    run.args.append("--prometheus")
    await run.start()
    url = (await run.wait_for_line(r"Prometheus: (http://127\.0\.0\.1:\d+)")).group(1)
    async with aiohttp.ClientSession() as session:
        async with asyncio.timeout(60):
            while True:  # the first sample lands after a scrape interval; a rate needs two
                steps = await query(session, url, 'adamw_step{job_name="watched"}')
                rate = await query(session, url, 'namespace_job_name:adamw_steps:rate5m{job_name="watched"}')
                if len(steps) == 2 and rate and float(rate[0]["value"][1]) > 0:
                    break
                await asyncio.sleep(0.5)
        assert {s["metric"]["pod"] for s in steps} == {"watched-worker-0", "watched-worker-1"}
        async with session.get(f"{url}/api/v1/rules") as response:
            groups = (await response.json())["data"]["groups"]
    alerts = {r["name"] for g in groups for r in g["rules"] if r["type"] == "alerting"}
    assert len(alerts) >= 3
    assert all(r["health"] == "ok" for g in groups for r in g["rules"]), groups
    run.proc.send_signal(signal.SIGINT)
    assert await run.finish() == 130
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            await query(session, url, "up")  # Prometheus stopped with the run
