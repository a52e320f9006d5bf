"""Helpers for tests that run `adamw-job run` as a real child process."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml

ADAMW_JOB = Path(sys.executable).parent / "adamw-job"


def tiny_job(name: str, port: int, **spec: Any) -> dict[str, Any]:
    """Two ranks of a tiny model: hundreds of steps per second once started."""
    job = {
        "apiVersion": "training.adamw.io/v1alpha1",
        "kind": "AdamWTrainingJob",
        "metadata": {"name": name},
        "spec": {
            "image": "adamw-trainer:dev",
            "replicas": 2,
            "trainer": {
                "model": {"layers": 1, "heads": 2, "width": 32, "contextLength": 32},
                "data": {"source": "synthetic", "evalIntervalSteps": 0},
                "training": {"maxSteps": 1500, "batchSize": 4, "logIntervalSteps": 10, "threads": 1},
                "schedule": {"warmupSteps": 2},
                "metrics": {"port": port},
                "checkpoint": {"dir": "/checkpoints", "intervalSteps": 25},
            },
            "restartPolicy": {"backoffSeconds": 0, "maxBackoffSeconds": 0},
            "pod": {"terminationGracePeriodSeconds": 20},
        },
    }
    job["spec"].update(spec)
    return job


class Run:
    """`adamw-job run` as a child process, its stdout collected line by line."""

    def __init__(self, manifest: Path, run_dir: Path) -> None:
        self.args = [str(ADAMW_JOB), "run", str(manifest), "--dir", str(run_dir)]
        self.lines: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> Run:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.proc = await asyncio.create_subprocess_exec(
            *self.args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env)
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    async def wait_for_line(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        regex = re.compile(pattern)
        async with asyncio.timeout(timeout):
            while True:
                for line in self.lines:
                    if match := regex.search(line):
                        return match
                if self.proc is not None and self.proc.returncode is not None:
                    raise AssertionError(f"exited {self.proc.returncode} before {pattern!r}:\n{self.output}")
                await asyncio.sleep(0.05)

    async def finish(self, timeout: float = 120) -> int:
        assert self.proc is not None and self._reader is not None
        async with asyncio.timeout(timeout):
            code = await self.proc.wait()
            await self._reader
        return code


async def wait_for_checkpoint(run_dir: Path, at_least: int, timeout: float = 60) -> int:
    async with asyncio.timeout(timeout):
        while True:
            steps = [int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("step-*")
                     if p.name.split("-")[1].isdigit()]
            if steps and max(steps) >= at_least:
                return max(steps)
            await asyncio.sleep(0.05)


def trainer_events(log: Path, event: str) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [r for r in records if r.get("event") == event]


def write(tmp_path: Path, manifest: dict[str, Any]) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path
