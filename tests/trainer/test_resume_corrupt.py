"""Resume skips a truncated or booby-trapped newest checkpoint (logged, counted) and uses the one before."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
import torch
from adamw_trainer.checkpoint.store import CheckpointMeta, CheckpointStore

from tests.trainer.trainer_process import (
    RunsCode,
    free_port,
    http_get,
    json_events,
    run_trainer,
    small_config,
    trainer_cmd,
    trainer_env,
    wait_for_status,
    write_config,
)


@pytest.mark.slow
def test_truncated_and_unsafe_newest_checkpoints_are_skipped_and_counted(tmp_path):
    cfg = small_config(tmp_path, training={"maxSteps": 30}, checkpoint={"intervalSteps": 10, "keepLatest": 5})
    first = run_trainer(write_config(tmp_path, cfg))
    assert first.returncode == 0, first.stderr[-2000:]
    store = CheckpointStore(tmp_path / "checkpoints")
    assert store.steps() == [10, 20, 30]
    # step-30: truncated model file (the manifest no longer matches).
    model30 = store.path(30) / "model.pt"
    model30.write_bytes(model30.read_bytes()[:1000])
    # step-35: complete, checksummed, but its model file runs code when unpickled.
    marker = tmp_path / "pwned"
    good = store.path(20)
    store.write(
        CheckpointMeta(step=35, loss=1.0, finite=True, time=time.time(), config_hash="x", world_size=1, tokens_seen=0),
        {
            "model.pt": lambda f: torch.save({"weight": RunsCode(marker)}, f),
            "optimizer.pt": lambda f: f.write((good / "optimizer.pt").read_bytes()),
            "train_state.pt": lambda f: f.write((good / "train_state.pt").read_bytes()),
        },
    )

    port = free_port()
    cfg = small_config(
        tmp_path, training={"maxSteps": 1_000_000}, metrics={"port": port, "host": "127.0.0.1"},
        checkpoint={"intervalSteps": 0, "keepLatest": 5},
    )
    proc = subprocess.Popen(
        trainer_cmd(write_config(tmp_path, cfg, "long.yaml")), env=trainer_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        status = wait_for_status(port, proc)
        metrics = http_get(f"http://127.0.0.1:{port}/metrics").decode()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert status["resumedFromStep"] == 20 and status["lastGoodCheckpoint"]["step"] == 20
    assert 'adamw_checkpoint_corrupt_skipped_total{rank="0"} 2.0' in metrics
    assert 'adamw_resumed_from_step{rank="0"} 20.0' in metrics
    skipped = json_events(out, "checkpoint-skipped")
    assert [s["step"] for s in skipped] == [35, 30]
    assert "refused to load" in skipped[0]["error"] and "could execute code" in skipped[0]["error"]
    assert "truncated" in skipped[1]["error"]
    resumed = json_events(out, "resumed")[0]
    assert resumed["step"] == 20 and resumed["configChanged"] is True  # maxSteps differs now
    assert not marker.exists(), "resuming executed code from a checkpoint"
    assert proc.returncode == 143, err[-2000:]
