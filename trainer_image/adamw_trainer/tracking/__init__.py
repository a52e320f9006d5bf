"""Experiment tracking (`trainer.tracking.mlflow`): one MLflow run per job, rank 0 only.

    tracking:
      mlflow: {trackingUri: http://mlflow.mlflow.svc:5000, experiment: gpt-small}

The tracker listens to the trainer's own log events (`RunLog.listeners`) and turns them into
records: `start` -> the resolved config as params and the job's tags; `train`/`eval` ->
metrics by step; `checkpoint` -> a reference (path, step, sha256 of each file, known-good;
the bytes only with `logCheckpoints`); `rollback` -> a tag and an event document; the
final outcome when the process ends. Records go through a bounded queue to one sender
thread (`sender.py`): nothing here blocks or fails a training step. The run id travels in
the checkpoint's train state and in `/status` (`tracking`), so later attempts append to
the same run (`mlflow_client.py` says how steps retrained after a resume are handled).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from ..config import MlflowConfig, TrainerConfig
from ..exit_codes import SUCCESS_REASONS, ExitReason
from .records import FilesArtifact, Finish, JsonArtifact, Metrics, Params, RunIdentity, Tags
from .sender import Sender, TrackingMetrics

log = logging.getLogger(__name__)

PARAM_VALUE_LIMIT = 6000  # MLflow's limit on a param value

# The train log's field -> the MLflow metric key.
TRAIN_METRICS = {
    "loss": "loss",
    "lr": "learning_rate",
    "gradNorm": "grad_norm",
    "tokensPerSecond": "tokens_per_second",
    "nonfiniteSteps": "nonfinite_steps",
}
# Outcomes after which no attempt follows (the run is closed); others leave it RUNNING.
FINAL_FAILURES = {ExitReason.INVALID_CONFIG.value, ExitReason.DIVERGED.value}
# A preempted trainer is inside its SIGTERM grace period: the termination message (which
# makes exit 143 a preemption) must be written before the SIGKILL, so tracking waits less.
PREEMPTED_CLOSE_SECONDS = 1.0

StatusSink = Callable[..., None]
EventSink = Callable[..., None]


class Tracker(Protocol):
    def on_event(self, event: str, fields: dict[str, Any]) -> None: ...
    def begin(self, step: int) -> None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def close(self, outcome: str | None, hurry: bool = False) -> None: ...


class NullTracker:
    """No tracking configured, or not rank 0."""

    def on_event(self, event: str, fields: dict[str, Any]) -> None:
        pass

    def begin(self, step: int) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def close(self, outcome: str | None, hurry: bool = False) -> None:
        pass


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested config -> `model.layers: "4"` params (lists as JSON)."""
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    else:
        text = json.dumps(data) if isinstance(data, (list, tuple)) else str(data)
        out[prefix] = text[:PARAM_VALUE_LIMIT]
    return out


def job_identity(environ: dict[str, str] | None = None) -> dict[str, str]:
    """What the operator tells a worker about its job (empty outside a job)."""
    env = os.environ if environ is None else environ
    keys = {"ADAMW_JOB_NAME": "job", "ADAMW_JOB_NAMESPACE": "namespace", "ADAMW_ATTEMPT": "attempt",
            "ADAMW_IMAGE": "image", "ADAMW_RESTART_COUNT": "restarts"}
    return {name: env[var] for var, name in keys.items() if env.get(var)}


class RunTracker:
    """Rank 0's tracker: log events in, records out to the sender."""

    def __init__(self, cfg: MlflowConfig, *, config_hash: str, registry: CollectorRegistry, rank: int,
                 status: StatusSink, event: EventSink | None = None, backend: Any = None,
                 environ: dict[str, str] | None = None):
        self.cfg = cfg
        self.config_hash = config_hash
        self.status = status
        self.event = event or (lambda *_a, **_k: None)
        self.identity = job_identity(environ)
        self.resume = RunIdentity()
        job = self.identity.get("job")
        self.job = f"{self.identity.get('namespace', 'default')}/{job}" if job else None
        self.metrics = TrackingMetrics(registry, rank)
        self._backend = backend
        self._sender: Sender | None = None
        self._pending: list[Any] = []  # records before begin(): the queue is made there
        # Importing the MLflow client takes seconds: start now, while the model is built, so
        # the run is open (and its id in the checkpoints) as early as possible.
        threading.Thread(target=_import_mlflow, name="tracking-import", daemon=True).start()

    # -- lifecycle ---------------------------------------------------------------------------

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The run this job recorded into before, and the metric points the checkpoint's
        attempt had not delivered yet (they are sent first: steps up to the checkpoint are
        not retrained, so this is their only copy)."""
        if state.get("run_id"):
            self.resume = RunIdentity(run_id=state["run_id"], experiment_id=state.get("experiment_id"))
        unsent = [Metrics(int(p["step"]), dict(p["values"]), int(p["timestamp_ms"])) for p in state.get("unsent", [])]
        self._pending[:0] = unsent

    def state_dict(self) -> dict[str, Any]:
        """For the checkpoint (rank 0, at capture): the run, and the points still queued."""
        ident = self.backend.identity if self._backend is not None else RunIdentity()
        run_id = ident.run_id or self.resume.run_id
        queued = self._sender.pending() if self._sender is not None else list(self._pending)
        unsent = [{"step": r.step, "values": r.values, "timestamp_ms": r.timestamp_ms}
                  for r in queued if isinstance(r, Metrics)]
        state: dict[str, Any] = {"unsent": unsent}
        if run_id:
            state.update(run_id=run_id, experiment_id=ident.experiment_id or self.resume.experiment_id)
        return state

    @property
    def backend(self) -> Any:
        if self._backend is None:
            from .mlflow_client import MlflowBackend

            restarted = int(self.identity.get("attempt", "0") or 0) > 0 or int(self.identity.get("restarts", "0") or 0) > 0
            self._backend = MlflowBackend(
                self.cfg, run_name=self.cfg.run_name or self.job or f"adamw-{self.config_hash}",
                tags=self._tags(), resume=self.resume, search_job=self.job if restarted else None,
                on_open=self._opened,
            )
        return self._backend

    def begin(self, step: int) -> None:
        """After resume: the run to append to is known; start sending."""
        self._sender = Sender(self.backend, queue_size=self.cfg.queue_size, metrics=self.metrics)
        for record in self._pending:
            self._sender.put(record)
        self._pending.clear()
        self._sender.start()

    def close(self, outcome: str | None, hurry: bool = False) -> None:
        """Record the outcome; a final one closes the run. Waits at most `closeTimeoutSeconds`
        (`hurry`: at most PREEMPTED_CLOSE_SECONDS, inside a SIGTERM grace period)."""
        if outcome:
            if outcome in SUCCESS_REASONS:
                self._put(Finish("FINISHED", outcome))
            elif outcome in FINAL_FAILURES:
                self._put(Finish("FAILED", outcome))
            else:  # preempted or crashed: the operator starts another attempt on this run
                self._put(Tags({"adamw.lastExit": outcome}))
        if self._sender is None:  # never began (failed before resume): nothing was sent
            for record in self._pending:
                self.metrics.dropped(record)
            return
        timeout = self.cfg.close_timeout_seconds
        if hurry:
            timeout = min(timeout, PREEMPTED_CLOSE_SECONDS)
        complete = self._sender.close(timeout)
        backend = self.backend
        self.event("tracking-closed", runId=backend.identity.run_id, complete=complete, sent=self._sender.sent,
                   errors=self.metrics.error_count, dropped=self.metrics.dropped_total(),
                   skippedResumedPoints=getattr(backend, "skipped_points", 0))

    def _opened(self, ident: RunIdentity) -> None:
        self.status(tracking={"runId": ident.run_id, "experimentId": ident.experiment_id, "url": ident.url})

    def _put(self, record: Any) -> None:
        if self._sender is None:
            if len(self._pending) < self.cfg.queue_size:
                self._pending.append(record)
            else:
                self.metrics.dropped(record)
        else:
            self._sender.put(record)

    def _tags(self) -> dict[str, str]:
        tags = {"adamw.configHash": self.config_hash}
        for key in ("job", "namespace", "attempt", "image"):
            if self.identity.get(key):
                tags[f"adamw.{key}"] = self.identity[key]
        if self.job:
            tags["adamw.job"] = self.job
        return tags

    # -- log events -> records ---------------------------------------------------------------

    def on_event(self, event: str, fields: dict[str, Any]) -> None:
        now_ms = int(time.time() * 1000)
        if event == "start":
            self._put(Params(flatten(fields.get("config") or {})))
            self._put(Tags({"adamw.configHash": str(fields.get("configHash", self.config_hash)),
                            "adamw.attempt": self.identity.get("attempt", "0")}))
        elif event == "train":
            values = {key: fields[name] for name, key in TRAIN_METRICS.items() if name in fields}
            self._put(Metrics(int(fields["step"]), values, now_ms))
        elif event == "eval":
            self._put(Metrics(int(fields["step"]), {"validation_loss": fields["validationLoss"]}, now_ms))
        elif event in ("target-reached", "early-stopped"):
            values = {"best_validation_loss": fields.get("bestValidationLoss")}
            if event == "target-reached":
                values["steps_to_target"] = fields.get("step")
                values["time_to_target_seconds"] = fields.get("secondsSinceStart")
            self._put(Metrics(int(fields["step"]), {k: v for k, v in values.items() if v is not None}, now_ms))
        elif event == "checkpoint":
            self._checkpoint(fields)
        elif event == "rollback":
            n = fields.get("rollbacks")
            self._put(Tags({"adamw.rollbacks": str(n),
                            f"adamw.rollback.{n}": f"step {fields.get('fromStep')} -> {fields.get('toStep')}"}))
            self._put(JsonArtifact(f"events/rollback-{n}.json", {"event": "rollback", **fields}))

    def _checkpoint(self, fields: dict[str, Any]) -> None:
        path = Path(str(fields.get("path", "")))
        step = fields.get("step")
        try:
            files = json.loads((path / "manifest.json").read_text()).get("files", {})
        except (OSError, ValueError):
            files = {}
        ref = {
            "path": str(path), "step": step, "knownGood": fields.get("knownGood"), "loss": fields.get("loss"),
            "files": {name: entry.get("sha256") for name, entry in files.items() if isinstance(entry, dict)},
        }
        self._put(JsonArtifact(f"checkpoints/step-{step}.json", ref))
        self._put(Tags({"adamw.lastCheckpoint": str(path)}))
        if self.cfg.log_checkpoints:
            self._put(FilesArtifact(str(path), f"checkpoints/step-{step}"))


def _import_mlflow() -> None:
    from .mlflow_client import import_mlflow

    try:
        import_mlflow()
    except ImportError:  # reported by the sender when it first needs the client
        pass


def make_tracker(cfg: TrainerConfig, *, rank: int, config_hash: str, registry: CollectorRegistry,
                 status: StatusSink, event: EventSink) -> Tracker:
    mlflow = cfg.tracking.mlflow
    if mlflow is None or rank != 0:
        return NullTracker()
    return RunTracker(mlflow, config_hash=config_hash, registry=registry, rank=rank, status=status, event=event)
