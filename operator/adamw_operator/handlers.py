"""Thin Kopf handlers: every watch event only says "look at this job again".

Kopf supplies the watches (with reconnects), peering, the liveness endpoint and logging;
what to do is decided in `decisions.decide` and carried out by `controller.Controller`.
Event handlers (not create/update handlers) keep Kopf from writing its own annotations
or finalizers onto the jobs: the operator's only writes to a job are to its /status.
"""

from __future__ import annotations

from typing import Any

import kopf

from .api.constants import GROUP, LABEL_JOB, PLURAL, VERSION
from .controller import Controller


def register(registry: kopf.OperatorRegistry, controller: Controller) -> kopf.OperatorRegistry:
    """Add the operator's handlers to `registry` (a fresh one per operator/test)."""

    @kopf.on.startup(registry=registry)
    async def start(settings: kopf.OperatorSettings, **_: Any) -> None:
        # Server-side filter: watch only worker pods, not every pod in the namespaces.
        settings.watching.label_selectors["pods"] = LABEL_JOB
        controller.start()

    @kopf.on.cleanup(registry=registry)
    async def stop(**_: Any) -> None:
        await controller.stop()

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def job_changed(type: str | None, name: str, namespace: str, body: Any, **_: Any) -> None:
        if type == "DELETED":
            controller.forget(namespace, name)
            return
        await controller.job_event(namespace, name, dict(body))

    @kopf.on.event("", "v1", "pods", labels={LABEL_JOB: kopf.PRESENT}, registry=registry)
    async def worker_changed(type: str | None, labels: dict[str, str], namespace: str, body: Any,
                             **_: Any) -> None:
        await controller.pod_event(namespace, labels[LABEL_JOB], type, dict(body))

    return registry
