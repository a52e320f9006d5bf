"""Prometheus metrics and the JSON `/status` endpoint, served on one port.

Metric names are a contract with the dashboard, the alerts and the operator: do not
rename them. Every series carries only a `rank` label; the scrape adds pod and namespace.
`/status` is what the operator polls for progress and hang detection (it needs no
Kubernetes API access in the pod): a snapshot of a dict guarded by a lock, so serving it
never waits on the training loop.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

from .config import CONFIG_SCHEMA_VERSION

# `_created` series double every counter and histogram and nothing here reads them.
prometheus_client.disable_created_metrics()

STEP_DURATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)


class TrainerMetrics:
    """The trainer's Prometheus series for one rank, in their own registry."""

    def __init__(self, rank: int, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        labels = ["rank"]
        self.rank = str(rank)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, labels, registry=r).labels(rank=self.rank)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, labels, registry=r).labels(rank=self.rank)

        self.train_loss = gauge("adamw_train_loss", "Mean training loss over the last log interval.")
        self.step = gauge("adamw_step", "Global optimizer step reached.")
        self.steps = counter("adamw_steps", "Optimizer steps taken (including skipped ones).")
        self.nonfinite_steps = counter(
            "adamw_nonfinite_steps", "Steps skipped because a gradient was NaN or Inf."
        )
        self.tokens = counter("adamw_tokens", "Training tokens processed by this rank.")
        self.samples = counter("adamw_samples", "Training sequences processed by this rank.")
        self.step_duration = Histogram(
            "adamw_step_duration_seconds",
            "Wall time of one optimizer step (host clock; on CUDA, see docs).",
            labels,
            buckets=STEP_DURATION_BUCKETS,
            registry=r,
        ).labels(rank=self.rank)
        self.learning_rate = gauge("adamw_learning_rate", "Learning rate of the last step.")
        self.grad_norm = gauge("adamw_grad_norm", "Global gradient L2 norm before clipping.")
        self.last_step_timestamp = gauge(
            "adamw_last_step_timestamp_seconds", "Unix time the last optimizer step finished."
        )
        self.validation_loss = gauge(
            "adamw_validation_loss", "Mean loss on the held-out validation split."
        )
        self.best_validation_loss = gauge(
            "adamw_best_validation_loss", "Lowest validation loss of the run so far (kept across restarts)."
        )
        self.time_to_target_seconds = gauge(
            "adamw_time_to_target_seconds",
            "Wall time from the run's first start (restarts included) to the evaluation that reached "
            "training.targetValidationLoss; NaN until it is reached.",
        )
        self.memory_peak = gauge(
            "adamw_memory_peak_bytes",
            "Peak device memory allocated (CUDA) or peak resident memory of the process (CPU).",
        )
        # No loss has been measured yet: NaN says so, where 0 would look like a perfect model.
        self.train_loss.set(float("nan"))
        self.validation_loss.set(float("nan"))
        self.best_validation_loss.set(float("nan"))
        self.time_to_target_seconds.set(float("nan"))
        self.info = Info("adamw_trainer", "Trainer build and run description.", labels, registry=r)
        # One series per AdamW parameter group: as many as the config's rules (and depths
        # under layer-wise lr decay) resolve to, fixed at start, so the label stays bounded.
        self._group_lr = Gauge(
            "adamw_param_group_learning_rate",
            "Learning rate of the last step in one AdamW parameter group (scheduled lr x lrScale).",
            ["rank", "group"], registry=r,
        )
        self._group_params = Gauge(
            "adamw_param_group_parameters",
            "Trainable parameters (elements) in one AdamW parameter group.",
            ["rank", "group"], registry=r,
        )

    def set_param_groups(self, groups: list[dict]) -> None:
        """Export each torch param group's size; its learning rate reads 0 until the first step."""
        for g in groups:
            self._group_params.labels(rank=self.rank, group=g["name"]).set(sum(p.numel() for p in g["params"]))
            self._group_lr.labels(rank=self.rank, group=g["name"]).set(0.0)

    def set_group_learning_rates(self, groups: list[dict]) -> None:
        """The learning rate each group stepped with (host values; no device read)."""
        for g in groups:
            self._group_lr.labels(rank=self.rank, group=g["name"]).set(g["lr"])

    def set_info(self, **fields: Any) -> None:
        self.info.labels(rank=self.rank).info({k: str(v) for k, v in fields.items()})

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class Status:
    """Thread-safe snapshot behind GET /status (camelCase keys, JSON-able values)."""

    def __init__(self, **initial: Any):
        self._lock = threading.Lock()
        # configSchema: the trainer config schema this image reads (docs/operator.md, Version skew).
        self._data: dict[str, Any] = {"configSchema": CONFIG_SCHEMA_VERSION, **initial}

    def update(self, **fields: Any) -> None:
        with self._lock:
            self._data.update(fields)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._data)


def _json_safe(value: Any) -> Any:
    # JSON has no NaN/Infinity; a diverged loss is reported as null.
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    return value


class MetricsServer:
    """HTTP server for `/metrics` (Prometheus text) and `/status` (JSON) on a daemon thread."""

    def __init__(self, host: str, port: int, metrics: TrainerMetrics, status: Status):
        metrics_ref, status_ref = metrics, status

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, prometheus_client.CONTENT_TYPE_LATEST, metrics_ref.exposition())
                elif path == "/status":
                    body = {k: _json_safe(v) for k, v in status_ref.snapshot().items()}
                    body["serverTime"] = time.time()
                    self._send(200, "application/json", json.dumps(body).encode())
                elif path in ("/healthz", "/"):
                    self._send(200, "text/plain", b"ok\n")
                else:
                    self._send(404, "text/plain", b"not found; try /metrics or /status\n")

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:  # scrapes would flood the training log
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="metrics", daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
