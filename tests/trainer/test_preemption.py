"""SIGTERM to a real trainer: checkpoint saved within the budget, exit 143; else a crash."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest
from adamw_trainer.checkpoint.store import CheckpointStore
from adamw_trainer.preemption import PreemptionWatcher

from tests.trainer.trainer_process import (
    free_port,
    http_get,
    json_events,
    small_config,
    trainer_cmd,
    trainer_env,
    wait_until,
    write_config,
)


def test_watcher_turns_a_real_sigterm_into_a_flag_and_ignores_repeats():
    watcher = PreemptionWatcher().install()
    try:
        assert not watcher.requested
        signal.raise_signal(signal.SIGTERM)
        assert watcher.requested and watcher.signal_name == "SIGTERM"
        first = watcher.received_at
        signal.raise_signal(signal.SIGTERM)
        assert watcher.received_at == first
        assert 0 < watcher.seconds_left(60) <= 60
    finally:
        watcher.uninstall()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_second_ctrl_c_stops_at_once():
    watcher = PreemptionWatcher().install()
    try:
        signal.raise_signal(signal.SIGINT)
        assert watcher.requested and watcher.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    finally:
        watcher.uninstall()


def start_long_run(tmp_path, port: int, **env: str) -> subprocess.Popen:
    cfg = small_config(
        tmp_path,
        training={"maxSteps": 1_000_000, "logIntervalSteps": 5},
        metrics={"port": port, "host": "127.0.0.1"},
        checkpoint={
            "intervalSteps": int(env.pop("INTERVAL", "50")),
            "preemptionSaveTimeoutSeconds": float(env.pop("BUDGET", "30")),
        },
    )
    return subprocess.Popen(
        trainer_cmd(write_config(tmp_path, cfg)),
        env=trainer_env(ADAMW_RESTART_COUNT="4", **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_143(tmp_path):
    port = free_port()
    proc = start_long_run(tmp_path, port)
    try:
        status = wait_until(port, proc, lambda s: s.get("lastCheckpoint") is not None)
        # /status carries what the operator copies into the job's status.
        assert status["lastGoodCheckpoint"]["step"] == status["lastCheckpoint"]["step"] >= 50
        assert status["lastCheckpoint"]["time"].endswith("Z")
        assert status["checkpointSaveSeconds"] > 0 and status["restarts"] == 4
        metrics = http_get(f"http://127.0.0.1:{port}/metrics").decode()
        for series in (
            "adamw_checkpoint_step", "adamw_checkpoint_saves_total",
            "adamw_checkpoint_last_success_timestamp_seconds", "adamw_checkpoint_save_duration_seconds_count",
            "adamw_checkpoint_failures_total", "adamw_checkpoint_corrupt_skipped_total",
            "adamw_rollbacks_total", "adamw_resumed_from_step",
        ):
            assert f'{series}{{rank="0"}}' in metrics, series
        assert 'adamw_restarts{rank="0"} 4.0' in metrics
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-2000:]
    message = json.loads((tmp_path / "termination-log").read_text())
    preempted = json_events(out, "preempted")[0]
    step = preempted["step"]
    assert preempted["saved"] is True
    assert message["reason"] == "Preempted" and message["exitCode"] == 143
    assert message["step"] == step and message["lastGoodCheckpointStep"] == step
    # The step the trainer stopped at is on disk and verifies (it is not a multiple of 50).
    assert CheckpointStore(tmp_path / "checkpoints").verify(step).known_good


@pytest.mark.slow
def test_sigterm_save_over_budget_is_a_crash_not_a_preemption(tmp_path):
    port = free_port()
    # No periodic saves; the SIGTERM save's files take 1 s each (fault injection), budget 0.5 s.
    proc = start_long_run(
        tmp_path, port, INTERVAL="0", BUDGET="0.5", ADAMW_FAULT_CHECKPOINT_WRITE_DELAY_SECONDS="1"
    )
    try:
        wait_until(port, proc, lambda s: s.get("step", 0) >= 10)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1, err[-2000:]
    message = json.loads((tmp_path / "termination-log").read_text())
    assert message["reason"] == "Crashed" and message["exitCode"] == 1
    assert f"SIGTERM at step {message['step']} but checkpoint step-{message['step']} did not finish" in message["message"]
    assert "preemptionSaveTimeoutSeconds" in message["message"] and message["lastGoodCheckpointStep"] is None
    # Nothing half-written is visible as a checkpoint.
    store = CheckpointStore(tmp_path / "checkpoints")
    assert message["step"] not in store.steps()
