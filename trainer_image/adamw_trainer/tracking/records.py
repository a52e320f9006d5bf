"""What the tracker sends, one record per server call (torch-free, mlflow-free)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Metrics:
    """Metric points of one step (MLflow keys a point by step; see RunTracker on resumes)."""

    step: int
    values: dict[str, float]
    timestamp_ms: int
    kind: str = "metrics"


@dataclass(frozen=True)
class MetricsBatch:
    """Consecutive queued Metrics sent in one call (the sender coalesces them)."""

    points: list[Metrics]
    kind: str = "metrics"


@dataclass(frozen=True)
class Params:
    values: dict[str, str]
    kind: str = "params"


@dataclass(frozen=True)
class Tags:
    values: dict[str, str]
    kind: str = "tags"


@dataclass(frozen=True)
class JsonArtifact:
    """A small JSON document stored in the run (a checkpoint reference, a rollback event)."""

    path: str  # inside the run's artifacts, e.g. checkpoints/step-400.json
    data: dict[str, Any]
    kind: str = "artifact"


@dataclass(frozen=True)
class FilesArtifact:
    """A local directory uploaded into the run (checkpoint bytes, only with logCheckpoints)."""

    local_dir: str
    path: str
    kind: str = "artifact"


@dataclass(frozen=True)
class Finish:
    """The run's final state: FINISHED or FAILED (an attempt that will be retried sends none)."""

    status: str
    outcome: str
    kind: str = "finish"


@dataclass
class RunIdentity:
    """Which run this job records into, as the checkpoints and the job status keep it."""

    run_id: str | None = None
    experiment_id: str | None = None
    url: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
