"""Experiment tracking in a real MLflow tracking server: one run per job across restarts,
no step recorded twice after a resume, and a server that goes away never stalls training.

The server is `mlflow server` (sqlite backend, one worker, a free port), started once for
this module; a test that stops it leaves it to be restarted by the next test that needs it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from adamw_trainer.checkpoint.store import CheckpointStore
from adamw_trainer.tracking.records import Metrics, Tags
from adamw_trainer.tracking.sender import Sender, TrackingMetrics
from prometheus_client import CollectorRegistry

from tests.trainer.test_convergence import FAST
from tests.trainer.test_distributed_resume import finish
from tests.trainer.trainer_process import (
    free_port,
    http_get,
    json_events,
    launch_world,
    run_trainer,
    small_config,
    trainer_cmd,
    trainer_env,
    wait_for_status,
    wait_until,
    write_config,
)

pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402


class MlflowServer:
    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> None:
        mlflow = Path(sys.executable).parent / "mlflow"
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.proc = subprocess.Popen(
            [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            cwd=self.root, env=env, stdout=open(self.root / "server.log", "ab"), stderr=subprocess.STDOUT,
            start_new_session=True,  # its uvicorn child goes with it
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.root / "server.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=1).read()
                return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"mlflow server not up within {timeout}s")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture(scope="module")
def _server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    started = time.monotonic()
    server.start()
    print(f"mlflow server up in {time.monotonic() - started:.1f}s")
    yield server
    server.stop()


@pytest.fixture
def mlflow_server(_server):
    if not _server.running:  # a test stopped it
        _server.start()
    return _server


def tracked_config(tmp_path: Path, server: MlflowServer, experiment: str, close: float = 20, **groups) -> dict:
    tracking = {"mlflow": {"trackingUri": server.uri, "experiment": experiment, "closeTimeoutSeconds": close}}
    return small_config(tmp_path, **{**FAST, "tracking": tracking, **groups})


def runs_of(server: MlflowServer, experiment: str) -> list:
    client = MlflowClient(server.uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


def steps(server: MlflowServer, run_id: str, key: str = "loss") -> list[int]:
    return sorted(m.step for m in MlflowClient(server.uri).get_metric_history(run_id, key))


def train_state(ckpt_dir: Path) -> dict:
    info = CheckpointStore(ckpt_dir).newest_valid()
    return torch.load(info.path / "train_state.pt", weights_only=True)


# ----- the sender, without a server ---------------------------------------------------------


class FakeBackend:
    def __init__(self, fail_first: int = 0):
        self.gate = threading.Event()
        self.gate.set()
        self.fail_first = fail_first
        self.sent: list = []

    def send(self, record) -> None:
        self.gate.wait()
        if self.fail_first > 0:
            self.fail_first -= 1
            raise ConnectionRefusedError("server down")
        if isinstance(record, Tags):
            raise ValueError("refused for good")
        self.sent += [p.step for p in getattr(record, "points", [record])]

    def retryable(self, err: Exception) -> bool:
        return isinstance(err, OSError)


def point(step: int) -> Metrics:
    return Metrics(step, {"loss": 1.0}, 0)


def test_a_stuck_server_never_blocks_put_full_queue_drops_are_counted():
    backend = FakeBackend()
    backend.gate.clear()  # the server hangs
    metrics = TrackingMetrics(CollectorRegistry(), rank=0)
    sender = Sender(backend, queue_size=10, metrics=metrics)
    sender.start()
    started = time.perf_counter()
    accepted = sum(sender.put(point(s)) for s in range(100))
    assert time.perf_counter() - started < 0.5  # 100 puts against a hung server
    assert accepted in (10, 11) and metrics.dropped_total() == 100 - accepted
    backend.gate.set()
    assert sender.close(timeout=5)
    assert len(backend.sent) == accepted


def test_failures_are_counted_and_retried_a_refused_record_is_dropped():
    backend = FakeBackend(fail_first=3)
    metrics = TrackingMetrics(CollectorRegistry(), rank=0)
    sender = Sender(backend, queue_size=10, metrics=metrics)
    for record in (point(1), point(2), Tags({"k": "v"}), point(3)):
        sender.put(record)
    sender.start()
    assert sender.close(timeout=10)
    assert backend.sent == [1, 2, 3]  # retried until the server came back; the refused one dropped
    assert metrics.error_count == 4 and metrics.dropped_total() == 1


# ----- a real MLflow server -----------------------------------------------------------------


def test_two_ranks_record_one_run_with_params_metrics_checkpoints_and_outcome(tmp_path, mlflow_server):
    cfg = tracked_config(tmp_path, mlflow_server, "two-ranks",
                         training={"maxSteps": 300, "targetValidationLoss": 2.2},
                         checkpoint={"intervalSteps": 20})
    configs = [write_config(tmp_path, {**cfg, "terminationMessagePath": str(tmp_path / f"term-{r}")},
                            name=f"rank{r}.yaml") for r in range(2)]
    job = {"ADAMW_JOB_NAME": "quick", "ADAMW_JOB_NAMESPACE": "team-a", "ADAMW_ATTEMPT": "0"}
    results = finish(launch_world(configs, env={0: job, 1: job}))
    assert [code for code, _, _ in results] == [0, 0], results[0][2][-3000:]
    (run,) = runs_of(mlflow_server, "two-ranks")  # rank 1 records nothing
    assert run.info.status == "FINISHED" and run.info.run_name == "team-a/quick"
    tags, params = run.data.tags, run.data.params
    assert tags["adamw.outcome"] == "TargetReached" and tags["adamw.job"] == "team-a/quick"
    assert tags["adamw.configHash"] and tags["adamw.attempt"] == "0"
    assert params["model.layers"] == "1" and params["training.targetValidationLoss"] == "2.2"
    stopped = json.loads((tmp_path / "term-0").read_text())["step"]
    assert steps(mlflow_server, run.info.run_id) == list(range(5, stopped + 1, 5))
    assert steps(mlflow_server, run.info.run_id, "validation_loss") == list(range(10, stopped + 1, 10))
    assert run.data.metrics["steps_to_target"] == stopped
    refs = {f.path for f in MlflowClient(mlflow_server.uri).list_artifacts(run.info.run_id, "checkpoints")}
    assert f"checkpoints/step-{stopped}.json" in refs
    ref = MlflowClient(mlflow_server.uri).download_artifacts(run.info.run_id, f"checkpoints/step-{stopped}.json",
                                                            str(tmp_path))
    files = json.loads(Path(ref).read_text())["files"]
    assert set(files) >= {"model.pt", "optimizer.pt", "train_state.pt"} and all(len(h) == 64 for h in files.values())
    closed = json_events(results[0][1], "tracking-closed")[0]
    assert closed["complete"] and closed["errors"] == 0 and closed["dropped"] == 0


MAX_STEPS = 500


def test_a_killed_and_resumed_job_appends_to_its_run_without_duplicate_or_missing_steps(tmp_path, mlflow_server):
    port = free_port()
    cfg = tracked_config(tmp_path, mlflow_server, "kill-resume", training={"maxSteps": MAX_STEPS},
                         data={"evalIntervalSteps": 0}, metrics={"port": port, "host": "127.0.0.1"},
                         checkpoint={"intervalSteps": 20})
    config = write_config(tmp_path, cfg)
    proc = subprocess.Popen(trainer_cmd(config), env=trainer_env(ADAMW_JOB_NAME="kr"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        status = wait_until(port, proc, lambda s: (s.get("tracking") or {}).get("runId"), what="a run id")
        run_id = status["tracking"]["runId"]
        deadline = time.monotonic() + 60
        while max(steps(mlflow_server, run_id), default=0) < 50 and time.monotonic() < deadline:
            time.sleep(0.05)
        # ...and a checkpoint saved after the run was open, so it carries the run id.
        at = wait_for_status(port, proc)["step"]
        wait_until(port, proc, lambda s: (s.get("lastCheckpoint") or {}).get("step", 0) >= at + 20,
                   what="a checkpoint after the run opened")
        proc.kill()
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    before = steps(mlflow_server, run_id)
    assert before == list(range(5, before[-1] + 1, 5)) and before[-1] >= 50

    # The run id travels in the checkpoints (a restarted attempt without it finds the run by
    # its adamw.job tag instead).
    carried = train_state(tmp_path / "checkpoints")["tracking"]
    assert carried["run_id"] == run_id
    done = run_trainer(config, ADAMW_JOB_NAME="kr", ADAMW_RESTART_COUNT="1", ADAMW_ATTEMPT="1")
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = json_events(done.stdout, "resumed")[0]["step"]
    (run,) = runs_of(mlflow_server, "kill-resume")
    assert run.info.run_id == run_id and run.info.status == "FINISHED" and run.data.tags["adamw.attempt"] == "1"
    assert resumed < MAX_STEPS
    assert steps(mlflow_server, run_id) == list(range(5, MAX_STEPS + 1, 5))  # each step exactly once
    # What the killed attempt had already recorded is skipped when it comes again: retrained
    # steps after the checkpoint, and points the checkpoint carried as still queued.
    again = {p["step"] for p in carried["unsent"]}
    closed = json_events(done.stdout, "tracking-closed")[0]
    assert closed["skippedResumedPoints"] == len([s for s in before if s > resumed or s in again])


def test_a_server_that_goes_away_mid_run_never_stalls_or_fails_training(tmp_path, mlflow_server):
    port = free_port()
    cfg = tracked_config(tmp_path, mlflow_server, "server-down", close=2, training={"maxSteps": 300},
                         data={"evalIntervalSteps": 0}, metrics={"port": port, "host": "127.0.0.1"})
    proc = subprocess.Popen(trainer_cmd(write_config(tmp_path, cfg)), env=trainer_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(port, proc, lambda s: (s.get("tracking") or {}).get("runId") and s["step"] >= 20,
                   what="a run and 20 steps")
        mlflow_server.stop()
        stopped_at = time.monotonic()
        errors = 0.0
        while errors == 0 and proc.poll() is None:
            text = http_get(f"http://127.0.0.1:{port}/metrics").decode()
            errors = sum(float(line.split()[-1]) for line in text.splitlines()
                         if line.startswith("adamw_tracking_errors_total"))
            time.sleep(0.1)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert errors > 0, "the failed calls are counted while training runs"
    assert json_events(out, "done")[0]["step"] == 300
    closed = json_events(out, "tracking-closed")[0]
    assert not closed["complete"] and closed["errors"] > 0
    # Training went on: after the server stopped it still took well under the run's time
    # plus the 2 s closeTimeoutSeconds (no per-step waits on the dead server).
    assert time.monotonic() - stopped_at < 60


def test_log_events_become_records_rollbacks_as_a_tag_and_an_event(tmp_path):
    from adamw_trainer.config import MlflowConfig
    from adamw_trainer.tracking import RunTracker
    from adamw_trainer.tracking.records import JsonArtifact, Params

    tracker = RunTracker(MlflowConfig(tracking_uri="http://unused"), config_hash="abc", registry=CollectorRegistry(),
                         rank=0, status=lambda **_: None, environ={"ADAMW_JOB_NAME": "j", "ADAMW_ATTEMPT": "2"})
    tracker.on_event("start", {"configHash": "abc", "config": {"model": {"layers": 2}, "optimizer": {"betas": [0.9, 0.95]}}})
    tracker.on_event("train", {"step": 10, "loss": 2.5, "lr": 1e-3, "gradNorm": 0.7, "maxSteps": 100})
    tracker.on_event("rollback", {"fromStep": 60, "toStep": 40, "rollbacks": 1, "lrScale": 0.5})
    params, tags, metrics, rollback_tags, event = tracker._pending
    assert params == Params({"model.layers": "2", "optimizer.betas": "[0.9, 0.95]"})
    assert tags.values == {"adamw.configHash": "abc", "adamw.attempt": "2"}
    assert metrics.step == 10 and metrics.values == {"loss": 2.5, "learning_rate": 1e-3, "grad_norm": 0.7}
    assert rollback_tags.values == {"adamw.rollbacks": "1", "adamw.rollback.1": "step 60 -> 40"}
    assert isinstance(event, JsonArtifact) and event.path == "events/rollback-1.json"
    assert tracker._tags()["adamw.job"] == "default/j"


def test_a_preempted_trainer_does_not_spend_its_grace_period_on_a_dead_server(tmp_path):
    port, nobody = free_port(), free_port()
    tracking = {"mlflow": {"trackingUri": f"http://127.0.0.1:{nobody}", "closeTimeoutSeconds": 60}}
    cfg = small_config(tmp_path, training={"maxSteps": 100000}, tracking=tracking,
                       metrics={"port": port, "host": "127.0.0.1"})
    proc = subprocess.Popen(trainer_cmd(write_config(tmp_path, cfg)), env=trainer_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(port, proc, lambda s: s["step"] >= 20, what="20 steps")
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-3000:]
    assert time.monotonic() - sent < 10  # not closeTimeoutSeconds: SIGKILL comes at the grace period's end
    closed = json_events(out, "tracking-closed")[0]
    assert not closed["complete"] and closed["errors"] > 0


def test_log_checkpoints_uploads_the_checkpoint_bytes_into_the_run(tmp_path, mlflow_server):
    import hashlib

    cfg = tracked_config(tmp_path, mlflow_server, "log-bytes", training={"maxSteps": 40},
                         data={"evalIntervalSteps": 0}, checkpoint={"intervalSteps": 20})
    cfg["tracking"]["mlflow"]["logCheckpoints"] = True
    done = run_trainer(write_config(tmp_path, cfg))
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = runs_of(mlflow_server, "log-bytes")
    client = MlflowClient(mlflow_server.uri)
    uploaded = {f.path for f in client.list_artifacts(run.info.run_id, "checkpoints/step-20")}
    assert "checkpoints/step-20/model.pt" in uploaded, uploaded
    local = CheckpointStore(Path(cfg["checkpoint"]["dir"])).verify(20).path / "model.pt"
    (tmp_path / "dl").mkdir()
    fetched = Path(client.download_artifacts(run.info.run_id, "checkpoints/step-20/model.pt", str(tmp_path / "dl")))
    assert hashlib.sha256(fetched.read_bytes()).hexdigest() == hashlib.sha256(local.read_bytes()).hexdigest()
