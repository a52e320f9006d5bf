"""Checkpoints on CUDA with real processes and signals (run on a GPU machine; skipped elsewhere).

The CPU tests prove exactness; these prove the CUDA path: pinned-memory snapshots of GPU
state, resume onto the GPU after SIGKILL, and the SIGTERM save exiting 143.
"""

from __future__ import annotations

import json
import signal
import subprocess

import pytest
import torch
from adamw_trainer.checkpoint.store import CheckpointStore

from tests.trainer.trainer_process import (
    free_port,
    json_events,
    small_config,
    trainer_cmd,
    trainer_env,
    wait_until,
    write_config,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def cuda_config(tmp_path, port: int, max_steps: int) -> dict:
    return small_config(
        tmp_path,
        model={"layers": 4, "heads": 4, "width": 256, "contextLength": 128},
        training={"maxSteps": max_steps, "batchSize": 16, "precision": "bf16", "logIntervalSteps": 10},
        metrics={"port": port, "host": "127.0.0.1"},
        checkpoint={"intervalSteps": 50, "preemptionSaveTimeoutSeconds": 60},
        device="cuda",
    )


def wait_for_step(port: int, proc: subprocess.Popen, step: int, timeout: float = 120) -> dict:
    return wait_until(
        port, proc, lambda s: (s.get("lastCheckpoint") or {}).get("step", 0) >= step, timeout, poll=0.2,
        what=f"no checkpoint at step {step}",
    )


def test_sigkill_then_resume_on_cuda_finishes_from_the_checkpoint(tmp_path):
    port = free_port()
    config = write_config(tmp_path, cuda_config(tmp_path, port, max_steps=400))
    proc = subprocess.Popen(trainer_cmd(config), env=trainer_env(), stdout=subprocess.PIPE, text=True)
    try:
        wait_for_step(port, proc, 100)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    saved = CheckpointStore(tmp_path / "checkpoints").newest_valid()
    assert saved is not None and saved.step >= 100

    second = subprocess.run(trainer_cmd(config), env=trainer_env(), capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    resumed = json_events(second.stdout, "resumed")
    assert resumed and resumed[0]["step"] >= saved.step
    assert CheckpointStore(tmp_path / "checkpoints").newest_valid().step == 400


def test_sigterm_on_cuda_saves_and_exits_143(tmp_path):
    port = free_port()
    config = write_config(tmp_path, cuda_config(tmp_path, port, max_steps=1_000_000))
    proc = subprocess.Popen(trainer_cmd(config), env=trainer_env(), stdout=subprocess.PIPE, text=True)
    wait_for_step(port, proc, 50)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out[-2000:]
    term = json.loads((tmp_path / "termination-log").read_text())
    assert term["reason"] == "Preempted"
    saved = CheckpointStore(tmp_path / "checkpoints").newest_valid()
    assert saved is not None and saved.step == term["step"] and saved.step > 50
