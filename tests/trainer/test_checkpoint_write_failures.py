"""A trainer whose checkpoint writes fail keeps training, counts the failures, shows nothing partial."""

from __future__ import annotations

import json
import re
import resource
import signal
import subprocess
import time

import pytest

from tests.trainer.trainer_process import (
    free_port,
    http_get,
    json_events,
    small_config,
    trainer_cmd,
    trainer_env,
    wait_for_status,
    write_config,
)

FILE_SIZE_LIMIT = 16 * 1024  # smaller than the tiny model's checkpoint files


def _limit_file_size() -> None:
    # A real kernel refusal: write(2) fails with EFBIG past RLIMIT_FSIZE (Python ignores
    # SIGXFSZ, so the process gets the error instead of being killed). Works without root.
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


def metric(text: str, name: str) -> float:
    m = re.search(rf'^{name}{{rank="0"}} (\S+)$', text, re.M)
    assert m, f"{name} missing"
    return float(m.group(1))


@pytest.mark.slow
def test_failing_writes_are_counted_training_goes_on_and_nothing_partial_is_visible(tmp_path):
    port = free_port()
    cfg = small_config(
        tmp_path, training={"maxSteps": 1_000_000}, metrics={"port": port, "host": "127.0.0.1"},
        checkpoint={"intervalSteps": 10},
    )
    proc = subprocess.Popen(
        trainer_cmd(write_config(tmp_path, cfg)), env=trainer_env(), preexec_fn=_limit_file_size,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            wait_for_status(port, proc)
            metrics = http_get(f"http://127.0.0.1:{port}/metrics").decode()
            if metric(metrics, "adamw_checkpoint_failures_total") >= 3:
                break
            time.sleep(0.05)
        status = wait_for_status(port, proc)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert metric(metrics, "adamw_checkpoint_failures_total") >= 3
    assert metric(metrics, "adamw_checkpoint_saves_total") == 0
    assert status["step"] > 30 and status["lastCheckpoint"] is None  # training went on
    failed = json_events(out, "checkpoint-failed")
    assert failed and "File too large" in failed[0]["error"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == []
    # The SIGTERM save fails the same way: not a preemption, a crash with the reason.
    assert proc.returncode == 1, err[-2000:]
    message = json.loads((tmp_path / "termination-log").read_text())
    assert message["reason"] == "Crashed" and "File too large" in message["message"]
