"""The job status's closed vocabularies, in one place: phases, condition types and the kinds
of failure the operator tells apart. StrEnums, so they serialise as the plain strings the
API carries, while a misspelt member is an AttributeError (and a mypy error), not a silent
new phase. Imports neither kopf nor torch."""

from __future__ import annotations

from enum import StrEnum


class Phase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED})


class ConditionType(StrEnum):
    """In the order `kubectl describe` lists them."""

    RUNNING = "Running"
    SUSPENDED = "Suspended"
    INVALID_SPEC = "InvalidSpec"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class FailureKind(StrEnum):
    """Why an attempt ended badly (status.lastFailure.reason, the restart Event's prefix)."""

    CRASHED = "Crashed"
    INVALID_CONFIG = "InvalidConfig"
    DIVERGED = "Diverged"
    PREEMPTED = "Preempted"
    POD_LOST = "PodLost"
    HUNG = "Hung"
    EXITED_EARLY = "ExitedEarly"


DISRUPTIONS = frozenset({FailureKind.PREEMPTED, FailureKind.POD_LOST})
"""Failures that are not the job's fault: the preemption budget, no backoff."""
