"""The MLflow side of tracking: find or create the job's run, then one REST call per record.

Runs only on the sender's thread. The MLflow client's own HTTP retries are turned off
(`MLFLOW_HTTP_REQUEST_MAX_RETRIES=0`, a 10 s request timeout, unless the environment sets
them): the sender retries, counts each failure, and never holds a training step.

Which run: the id kept in the checkpoint's train state (a resumed or restarted attempt);
else, in a restarted attempt that never checkpointed it, the job's RUNNING run found by
its `adamw.job` tag; else a new run. A resumed run first reads the highest step it already
holds (`watermark`) and skips points up to it: a step is recorded once, the first time it
was trained. A resume retrains the steps between its checkpoint and the kill; their first
values are already in the run (with the deterministic data order they are the same numbers
again), so nothing is duplicated. Points the killed attempt still had queued are not lost
either: those up to the checkpoint's step travel in its train state and are sent first
(`RunTracker.load_state_dict`), those after it are retrained and sent afresh. The sender is
sequential, so what reached the server is always a prefix and one watermark suffices.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from typing import Any

from ..config import MlflowConfig
from .records import (
    FilesArtifact,
    Finish,
    JsonArtifact,
    Metrics,
    MetricsBatch,
    Params,
    RunIdentity,
    Tags,
)

BATCH_PARAMS = 100  # MLflow's log_batch limits: 100 params, 100 tags, 1000 metrics per call
BATCH_METRICS = 1000
WATERMARK_KEYS = ("loss", "validation_loss")


_IMPORT_LOCK = threading.Lock()


def import_mlflow() -> None:
    """Import the client once; two threads importing mlflow at once trip its import cycles."""
    with _IMPORT_LOCK:
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        # stdout is the trainer's JSON log (kubectl logs): no "View run ..." lines in it.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        import mlflow.tracking  # noqa: F401


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


class MlflowBackend:
    def __init__(
        self,
        cfg: MlflowConfig,
        *,
        run_name: str,
        tags: dict[str, str],
        resume: RunIdentity,
        search_job: str | None,
        on_open: Callable[[RunIdentity], None],
    ):
        self.cfg = cfg
        self.run_name = run_name
        self.tags = tags
        self.resume = resume
        self.search_job = search_job
        self.on_open = on_open
        self.identity = RunIdentity()
        self.reused = False
        self.watermark = -1  # highest step the run already held when this attempt opened it
        self.skipped_points = 0
        self._client: Any = None

    # -- the run ----------------------------------------------------------------------------

    def client(self) -> Any:
        if self._client is None:
            import_mlflow()
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.cfg.tracking_uri)
        return self._client

    def open(self) -> None:
        c = self.client()
        from mlflow.exceptions import MlflowException

        experiment = c.get_experiment_by_name(self.cfg.experiment)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            try:
                experiment_id = c.create_experiment(self.cfg.experiment)
            except MlflowException:  # another job created it first
                experiment_id = c.get_experiment_by_name(self.cfg.experiment).experiment_id
        run = None
        if self.resume.run_id:
            try:
                run = c.get_run(self.resume.run_id)
            except MlflowException as err:
                if err.get_http_status_code() >= 500:
                    raise
                run = None  # deleted on the server: start a new one
        if run is None and self.search_job:
            found = c.search_runs(
                [experiment_id],
                filter_string=f"tags.`adamw.job` = '{self.search_job}' and attributes.status = 'RUNNING'",
                max_results=1,
                order_by=["attributes.start_time DESC"],
            )
            run = found[0] if found else None
        if run is not None:
            self.reused = True
            run_id = run.info.run_id
            experiment_id = run.info.experiment_id
            c.update_run(run_id, status="RUNNING")
            steps = [m.step for key in WATERMARK_KEYS for m in c.get_metric_history(run_id, key)]
            self.watermark = max(steps, default=-1)
            c.set_tag(run_id, "adamw.attempt", self.tags.get("adamw.attempt", ""))
        else:
            run = c.create_run(experiment_id, run_name=self.run_name, tags=self.tags)
            run_id = run.info.run_id
        self.identity = RunIdentity(run_id=run_id, experiment_id=experiment_id,
                                    url=run_url(self.cfg.tracking_uri, experiment_id, run_id))
        self.on_open(self.identity)

    # -- records ----------------------------------------------------------------------------

    def retryable(self, err: Exception) -> bool:
        """Server down, slow or failing: retry. A 4xx (bad value, missing run) or a bug: never."""
        if self._client is None:  # the client would not even import
            return False
        from mlflow.exceptions import MlflowException

        if isinstance(err, MlflowException):
            status = err.get_http_status_code()
            return status >= 500 or status == 429
        return isinstance(err, OSError)  # requests' ConnectionError/Timeout (artifact uploads)

    def send(self, record: Any) -> None:
        if self.identity.run_id is None:
            self.open()
        run_id = self.identity.run_id
        c = self.client()
        from mlflow.entities import Metric, Param, RunTag

        if isinstance(record, (Metrics, MetricsBatch)):
            fresh = []
            for m in record.points if isinstance(record, MetricsBatch) else [record]:
                if m.step <= self.watermark:
                    self.skipped_points += 1  # already in the run from the attempt before
                else:
                    fresh.append(m)
            points = [Metric(k, float(v), m.timestamp_ms, m.step) for m in fresh
                      for k, v in m.values.items() if isinstance(v, (int, float)) and math.isfinite(v)]
            for i in range(0, len(points), BATCH_METRICS):
                c.log_batch(run_id, metrics=points[i : i + BATCH_METRICS])
        elif isinstance(record, Params):
            if self.reused:
                return  # params are immutable in MLflow; the first attempt's config stands (see tags)
            items = [Param(k, v) for k, v in record.values.items()]
            for i in range(0, len(items), BATCH_PARAMS):
                c.log_batch(run_id, params=items[i : i + BATCH_PARAMS])
        elif isinstance(record, Tags):
            tags = [RunTag(k, v) for k, v in record.values.items()]
            for i in range(0, len(tags), BATCH_PARAMS):
                c.log_batch(run_id, tags=tags[i : i + BATCH_PARAMS])
        elif isinstance(record, JsonArtifact):
            c.log_dict(run_id, record.data, record.path)
        elif isinstance(record, FilesArtifact):
            c.log_artifacts(run_id, record.local_dir, record.path)
        elif isinstance(record, Finish):
            c.set_tag(run_id, "adamw.outcome", record.outcome)
            c.set_terminated(run_id, status=record.status)
        else:
            raise TypeError(f"unknown tracking record {record!r}")
