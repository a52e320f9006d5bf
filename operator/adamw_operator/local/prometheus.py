"""`adamw-job run --prometheus`: a local Prometheus scraping the workers, the chart's alerts loaded.

The targets carry the labels the chart's PodMonitor adds on a cluster (`job_name`,
`namespace`, `pod`), so the recording rules and alerts of
`charts/adamw-operator/files/alerts.yaml` evaluate here exactly as they do there.
Uses the `prometheus` binary on PATH (Debian: `apt-get install prometheus`).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..builders.names import worker_name
from .supervisor import LocalJob, free_port

SCRAPE_SECONDS = 5


def alert_rules_file() -> Path | None:
    """The chart's rules file, when running from a source checkout."""
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "charts" / "adamw-operator" / "files" / "alerts.yaml"
        if candidate.is_file():
            return candidate
    return None


def prometheus_config(job: LocalJob, rules: Path | None) -> dict[str, Any]:
    port = job.spec.trainer.metrics.port
    targets = [
        {"targets": [f"{job.ip_of(rank)}:{port}"],
         "labels": {"job_name": job.name, "namespace": job.namespace, "pod": worker_name(job.name, rank)}}
        for rank in range(job.spec.replicas)
    ]
    config: dict[str, Any] = {
        "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "evaluation_interval": f"{SCRAPE_SECONDS}s"},
        "scrape_configs": [{"job_name": "adamw-trainer", "static_configs": targets}],
    }
    if rules is not None:
        config["rule_files"] = [str(rules)]
    return config


@dataclass
class LocalPrometheus:
    process: asyncio.subprocess.Process
    url: str

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), timeout=10)
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()


async def _ready(url: str, process: asyncio.subprocess.Process, timeout: float = 15.0) -> bool:
    """Wait for /-/ready (about 0.1 s normally)."""
    import aiohttp

    deadline = asyncio.get_running_loop().time() + timeout
    async with aiohttp.ClientSession() as session:
        while asyncio.get_running_loop().time() < deadline and process.returncode is None:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"{url}/-/ready", timeout=aiohttp.ClientTimeout(total=1)) as r:
                    if r.status == 200:
                        return True
            await asyncio.sleep(0.05)
    return False


async def start_prometheus(job: LocalJob, view: Any) -> LocalPrometheus | None:
    """Start Prometheus for this job; None (with a note) when it cannot be started."""
    binary = shutil.which("prometheus")
    if binary is None:
        view.message("  --prometheus: no `prometheus` on PATH (Debian/Ubuntu: apt-get install prometheus); "
                     "continuing without it")
        return None
    if not job.spec.trainer.metrics.port:
        view.message("  --prometheus: spec.trainer.metrics.port is 0, nothing to scrape; continuing without it")
        return None
    rules = alert_rules_file()
    folder = job.root / "prometheus"
    folder.mkdir(parents=True, exist_ok=True)
    config_file = folder / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(prometheus_config(job, rules), sort_keys=False))
    port = free_port()
    log = open(folder / "prometheus.log", "ab")  # noqa: SIM115 - handed to the child process
    try:
        process = await asyncio.create_subprocess_exec(
            binary, f"--config.file={config_file}", f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", stdout=log, stderr=log,
            stdin=asyncio.subprocess.DEVNULL, start_new_session=True)
    finally:
        log.close()
    url = f"http://127.0.0.1:{port}"
    if not await _ready(url, process):
        view.message(f"  --prometheus: Prometheus did not become ready; see {folder / 'prometheus.log'}")
        await LocalPrometheus(process=process, url=url).stop()
        return None
    rules_note = f"alert rules from {rules}" if rules else "no alert rules found (not a source checkout)"
    view.message(f"  Prometheus: {url} (graph, {url}/alerts); {rules_note}; "
                 f"scraping every {SCRAPE_SECONDS} s, log {folder / 'prometheus.log'}")
    return LocalPrometheus(process=process, url=url)
