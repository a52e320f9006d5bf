"""`adamw-job run` with real worker processes: crash recovery, Ctrl-C and resume, refusals."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.slow

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


async def test_kill_9_restarts_the_gang_from_the_checkpoint(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run = await Run(write(tmp_path, tiny_job("crashy", 9481)), run_dir).start()
    pid = int((await run.wait_for_line(r"attempt 0 rank 1: pid (\d+)")).group(1))
    saved = await wait_for_checkpoint(run_dir, 25)
    os.kill(pid, signal.SIGKILL)
    code = await run.finish()
    assert code == 0, run.output
    assert re.search(r"\[Warning CrashedRestart\] Crashed: rank 1 exited 137", run.output), run.output
    assert re.search(r"restarts\s+1 \(preemptions 0\)", run.output), run.output
    assert re.search(r"steps\s+1500 of 1500", run.output)
    # Attempt 1 (both ranks, new processes) resumed from a checkpoint no older than the one
    # on disk before the kill; rank 0 logs for the gang.
    assert len(re.findall(r"attempt 1 rank \d: pid \d+", run.output)) == 2
    rank0 = Path(re.search(r"attempt 1 rank 0: .* log (\S+)", run.output).group(1))
    [resumed] = trainer_events(rank0, "resumed")
    assert resumed["step"] >= saved
    assert (run_dir / "loss.png").stat().st_size > 10_000


async def test_ctrl_c_saves_and_the_same_command_resumes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    manifest = write(tmp_path, tiny_job("pausable", 9482))
    first = await Run(manifest, run_dir).start()
    await wait_for_checkpoint(run_dir, 50)
    first.proc.send_signal(signal.SIGINT)
    assert await first.finish() == 130, first.output
    assert "pausable: Interrupted" in first.output
    assert "run the same command again to resume" in first.output
    stopped = await wait_for_checkpoint(run_dir, 50, timeout=1)
    rank0 = Path(re.search(r"attempt 0 rank 0: .* log (\S+)", first.output).group(1))
    [preempted] = trainer_events(rank0, "preempted")  # SIGTERM made the trainer save its step
    assert preempted["saved"] and preempted["step"] == stopped

    second = await Run(manifest, run_dir).start()
    assert await second.finish() == 0, second.output
    rank0 = Path(re.search(r"attempt 0 rank 0: .* log (\S+)", second.output).group(1))
    assert trainer_events(rank0, "resumed")[0]["step"] == stopped
    assert re.search(r"restarts\s+0", second.output)


async def test_an_invalid_manifest_is_refused_like_the_cluster(tmp_path: Path) -> None:
    from tests.operator.crd_validation import load_crd, validate

    bad = tiny_job("bad", 9483)
    bad["spec"]["replicas"] = 0
    path = write(tmp_path, bad)
    run = await Run(path, tmp_path / "run").start()
    assert await run.finish(timeout=30) == 2
    assert "spec.replicas" in run.output and "greater than or equal to 1" in run.output
    # The cluster's admission (CRD schema) refuses the same field.
    assert any(p.startswith("spec.replicas:") for p in validate(load_crd(), bad))
    assert not (tmp_path / "run").exists()  # nothing was started


async def test_a_spec_that_cannot_run_gets_the_operators_message(tmp_path: Path) -> None:
    """The real operator's InvalidSpec condition and the runner's refusal say the same thing."""
    from tests.kube.emulator import kube_api
    from tests.operator.harness import condition, running_operator

    bad = tiny_job("unmountable", 9484, checkpointStorage={"volumeName": "nowhere"})
    async with kube_api(workdir=tmp_path) as api, running_operator(api):
        await api.client.create("awj", bad)
        job = await api.client.wait_for("awj", "unmountable", lambda j: j and condition(j, "InvalidSpec"))
    cluster_message = condition(job, "InvalidSpec")["message"]
    assert "spec.checkpointStorage.volumeName" in cluster_message

    run = await Run(write(tmp_path, bad), tmp_path / "run").start()
    assert await run.finish(timeout=30) == 2
    assert cluster_message in run.output
