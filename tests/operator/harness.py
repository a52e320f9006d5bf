"""Start the real operator (Kopf over HTTP, our Controller) against the emulator."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from adamw_operator.controller import Controller
from adamw_operator.handlers import register
from adamw_operator.kube import KubeClient
from adamw_operator.metrics import OperatorMetrics
from adamw_operator.status import get_condition

from tests.kube.kopf_runner import run_operator
from tests.kube.store import JOBS, PODS


@contextlib.asynccontextmanager
async def running_operator(api: Any, *, poll_interval: float = 0.2, resync_interval: float = 5.0,
                           **kwargs: Any) -> AsyncIterator[Controller]:
    """The operator as `adamw-operator` runs it, with test-speed timers; yields its Controller."""
    controller = Controller(KubeClient(api.url), OperatorMetrics(), poll_interval=poll_interval,
                            resync_interval=resync_interval, tick=0.02,
                            rejected_retry_seconds=0.5)
    async with run_operator(api, setup=lambda registry: register(registry, controller),
                            wait_for_watches=(JOBS, PODS), **kwargs):
        yield controller


def phase_is(*phases: str):
    return lambda job: job is not None and (job.get("status") or {}).get("phase") in phases


def condition(job: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return get_condition(job.get("status") or {}, type_)


async def workers(api: Any, job: str, attempt: int | None = None) -> list[dict[str, Any]]:
    selector = f"training.adamw.io/job-name={job}"
    if attempt is not None:
        selector += f",training.adamw.io/attempt={attempt}"
    return await api.client.list("pods", labels=selector)


async def events_for(api: Any, job: str) -> list[dict[str, Any]]:
    return [e for e in await api.client.list("events") if e["involvedObject"]["name"] == job]
