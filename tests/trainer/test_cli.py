"""`adamw-train` as a user and the operator see it: exit codes, messages, env overrides."""

from __future__ import annotations

import json
import os
import pty
import subprocess

import pytest
from adamw_trainer.cli import apply_env_overrides
from adamw_trainer.config import ConfigError, TrainerConfig
from trainer_process import (
    free_port,
    json_events,
    run_trainer,
    small_config,
    trainer_cmd,
    trainer_env,
    wait_for_status,
    write_config,
)


def termination(tmp_path) -> dict:
    return json.loads((tmp_path / "termination-log").read_text())


@pytest.mark.parametrize(
    "group, values, field",
    [
        ("optimizer", {"lr": -0.1}, "optimizer.lr"),
        ("optimizer", {"betas": [0.9, 1.0]}, "optimizer.betas"),
        ("training", {"maxSteps": 10, "bogusField": 1}, "training.bogusField"),
        ("model", {"width": "wide"}, "model.width"),
        ("training", {"targetValidationLoss": 0}, "training.targetValidationLoss"),
        ("training", {"earlyStopping": {"patience": -1}}, "training.earlyStopping.patience"),
        # small_config turns evaluation off: a target could never be reached
        ("training", {"targetValidationLoss": 1.5}, "data.evalIntervalSteps"),
    ],
)
def test_invalid_config_exits_2_naming_the_field(tmp_path, group, values, field):
    cfg = small_config(tmp_path, **{group: values})
    done = run_trainer(write_config(tmp_path, cfg), timeout=60)
    assert done.returncode == 2
    assert field in done.stderr
    assert done.stdout == ""  # stopped before any work
    msg = termination(tmp_path)
    assert msg["reason"] == "InvalidConfig" and msg["exitCode"] == 2 and field in msg["message"]


def test_missing_and_unparsable_config_files_exit_2(tmp_path):
    done = run_trainer(tmp_path / "absent.yaml", timeout=60)
    assert done.returncode == 2 and "cannot read config file" in done.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    done = run_trainer(bad, timeout=60)
    assert done.returncode == 2 and "not valid YAML" in done.stderr


def test_unusable_data_is_a_permanent_config_error(tmp_path):
    cfg = small_config(tmp_path, data={"source": "text", "path": str(tmp_path / "missing-corpus")})
    done = run_trainer(write_config(tmp_path, cfg), timeout=60)
    assert done.returncode == 2
    assert "missing-corpus does not exist" in done.stderr
    assert termination(tmp_path)["reason"] == "InvalidConfig"


def test_successful_run_logs_config_and_writes_termination_message(tmp_path):
    cfg = small_config(tmp_path)
    done = run_trainer(write_config(tmp_path, cfg))
    assert done.returncode == 0, done.stderr
    start = json_events(done.stdout, "start")[0]
    resolved = TrainerConfig.model_validate(cfg)
    assert start["configHash"] == resolved.config_hash()
    assert start["config"] == resolved.to_dict()  # the full resolved config, defaults included
    train = json_events(done.stdout, "train")
    assert [t["step"] for t in train] == [5, 10, 15, 20]
    msg = termination(tmp_path)
    assert msg == {**msg, "reason": "Succeeded", "exitCode": 0, "step": 20}


def test_env_overrides_bind_the_rank_port_and_keep_the_hash(tmp_path):
    port = free_port()
    cfg = small_config(tmp_path, training={"maxSteps": 100_000}, metrics={"port": 1, "host": "0.0.0.0"})
    proc = subprocess.Popen(
        trainer_cmd(write_config(tmp_path, cfg)),
        env=trainer_env(
            ADAMW_METRICS_HOST="127.0.0.1",
            ADAMW_METRICS_PORT=str(port - 1),  # LOCAL_RANK 1 listens on port + 1
            ADAMW_CHECKPOINT_DIR=str(tmp_path / "elsewhere"),
            LOCAL_RANK="1",
        ),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        status = wait_for_status(port, proc)
        assert status["configHash"] == TrainerConfig.model_validate(cfg).config_hash()
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    effective = json_events(out, "effective")[0]
    assert effective["metricsHost"] == "127.0.0.1" and effective["metricsPort"] == port
    assert effective["checkpointDir"] == str(tmp_path / "elsewhere")


def test_bad_env_override_names_the_variable(tmp_path):
    done = run_trainer(write_config(tmp_path, small_config(tmp_path)), ADAMW_METRICS_PORT="ninety")
    assert done.returncode == 2
    assert "metrics.port" in done.stderr and "ADAMW_METRICS_PORT" in done.stderr


def test_apply_env_overrides_leaves_other_fields_alone():
    cfg = TrainerConfig()
    new, applied = apply_env_overrides(cfg, {"ADAMW_METRICS_PORT": "9400", "UNRELATED": "x"})
    assert new.metrics.port == 9400 and applied == {"ADAMW_METRICS_PORT": "9400"}
    assert new.model_dump(exclude={"metrics"}) == cfg.model_dump(exclude={"metrics"})
    with pytest.raises(ConfigError, match="metrics.port"):
        apply_env_overrides(cfg, {"ADAMW_METRICS_PORT": "70000"})


def test_terminal_gets_a_live_progress_line(tmp_path):
    cfg = small_config(tmp_path, training={"maxSteps": 30, "logIntervalSteps": 10})
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        trainer_cmd(write_config(tmp_path, cfg)), env=trainer_env(), stdout=follower,
        stderr=subprocess.DEVNULL,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=60) == 0
    os.close(leader)
    text = b"".join(chunks).decode()
    assert "\r[" in text and "step 30/30" in text and "tok/s" in text and "ETA" in text
    assert not any(line.startswith("{") for line in text.splitlines())  # no JSON on a TTY
