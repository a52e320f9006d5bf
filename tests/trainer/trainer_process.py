"""Helpers for tests that run the real `adamw-train` in a subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def small_config(tmp_path: Path, **groups: dict[str, Any]) -> dict[str, Any]:
    """A config that trains in seconds on one thread; `groups` override per group."""
    cfg: dict[str, Any] = {
        "model": {"layers": 1, "heads": 2, "width": 32, "contextLength": 32},
        "data": {"source": "synthetic", "evalIntervalSteps": 0},
        "training": {"maxSteps": 20, "batchSize": 4, "logIntervalSteps": 5, "threads": 1},
        "schedule": {"warmupSteps": 2},
        "metrics": {"port": 0, "host": "127.0.0.1"},
        "checkpoint": {"dir": str(tmp_path / "checkpoints")},
        "terminationMessagePath": str(tmp_path / "termination-log"),
    }
    return override(cfg, groups)


def override(cfg: dict[str, Any], groups: dict[str, Any]) -> dict[str, Any]:
    """Merge each group's keys into `cfg` (a non-dict value replaces the group)."""
    for group, values in groups.items():
        if isinstance(values, dict) and isinstance(cfg.get(group), dict):
            cfg[group].update(values)
        else:
            cfg[group] = values
    return cfg


def write_config(tmp_path: Path, cfg: dict[str, Any], name: str = "trainer.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def trainer_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ADAMW_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def trainer_cmd(config: Path) -> list[str]:
    return [sys.executable, "-m", "adamw_trainer", "--config", str(config)]


def launch_world(configs: list[Path], env: dict[int, dict[str, str]] | None = None) -> list[subprocess.Popen]:
    """Start one `adamw-train` per config as ranks 0..n-1 of one gloo world on loopback."""
    master = str(free_port())
    procs = []
    for rank, config in enumerate(configs):
        extra = trainer_env(RANK=str(rank), WORLD_SIZE=str(len(configs)), LOCAL_RANK=str(rank),
                            MASTER_ADDR="127.0.0.1", MASTER_PORT=master, **(env or {}).get(rank, {}))
        procs.append(subprocess.Popen(trainer_cmd(config), env=extra, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    return procs


def run_trainer(config: Path, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        trainer_cmd(config), env=trainer_env(**env), capture_output=True, text=True, timeout=timeout
    )


def json_events(stdout: str, event: str | None = None) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return [r for r in records if event is None or r["event"] == event]


def wait_for_status(port: int, proc: subprocess.Popen, timeout: float = 60, host: str = "127.0.0.1") -> dict:
    """Poll GET /status until the trainer answers (fails early if the process died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited with {proc.returncode} before serving /status")
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/status", timeout=2) as r:
                return json.load(r)
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"no /status on port {port} within {timeout}s")


def wait_until(
    port: int, proc: subprocess.Popen, predicate, timeout: float = 60, poll: float = 0.05, what: str = ""
) -> dict:
    """Poll GET /status until `predicate(status)` holds; returns that status."""
    deadline = time.monotonic() + timeout
    status: dict = {}
    while time.monotonic() < deadline:
        status = wait_for_status(port, proc)
        if predicate(status):
            return status
        time.sleep(poll)
    raise AssertionError(f"{what or 'status never satisfied the condition'} within {timeout}s: {status}")


class RunsCode:
    """A pickle payload that would create a file if unpickled: what an attacker would plant."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def http_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read()
