"""Run the real Kopf operator in-process against the emulator (the recipe in TOOLS.md).

    async with kube_api() as api:
        async with run_operator(api, module="adamw_operator.handlers") as op:
            await api.client.create("awj", job)
            ...
        # leaving the block stops the operator (stop flag) and waits for it to finish

Start it inside the test body, not from a yield fixture: Kopf treats tasks created after
it started as its own, and a fixture's teardown then hangs for seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import sys
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import kopf

from tests.kube.emulator import KubeAPI
from tests.kube.store import JOBS, ResourceType


def fast_settings(settings: kopf.OperatorSettings, *, post_events: bool = False) -> kopf.OperatorSettings:
    """Settings that make Kopf react in tens of milliseconds instead of seconds."""
    settings.scanning.disabled = True  # the emulator declares resources; no CRD scanning
    settings.posting.enabled = post_events
    settings.watching.reconnect_backoff = 0.1
    settings.networking.error_backoffs = [0.1, 0.2, 0.5]
    settings.queueing.idle_timeout = 0.5
    settings.queueing.exit_timeout = 2.0
    settings.queueing.error_delays = [0.1, 0.2, 0.5, 1.0]
    return settings


def load_registry(module: str | None = None, setup: Callable[[kopf.OperatorRegistry], Any] | None = None
                  ) -> kopf.OperatorRegistry:
    """A fresh registry filled by importing (or re-importing) `module` and/or calling `setup`.

    Kopf's decorators register into the default registry at import time, so the module is
    (re)loaded while a fresh registry is the default; handlers never pile up across tests.
    """
    registry = kopf.OperatorRegistry()
    previous = kopf.get_default_registry()
    kopf.set_default_registry(registry)
    try:
        if module is not None:
            if module in sys.modules:
                importlib.reload(sys.modules[module])
            else:
                importlib.import_module(module)
        if setup is not None:
            setup(registry)
    finally:
        kopf.set_default_registry(previous)
    return registry


@dataclass
class RunningOperator:
    task: asyncio.Task[None]
    registry: kopf.OperatorRegistry
    settings: kopf.OperatorSettings
    stop_flag: asyncio.Event
    memo: object | None


@contextlib.asynccontextmanager
async def run_operator(
    api: KubeAPI,
    *,
    module: str | None = None,
    setup: Callable[[kopf.OperatorRegistry], Any] | None = None,
    registry: kopf.OperatorRegistry | None = None,
    namespaces: Iterable[str] = ("default",),
    clusterwide: bool = False,
    configure: Callable[[kopf.OperatorSettings], Any] | None = None,
    wait_for_watches: Iterable[ResourceType] = (JOBS,),
    standalone: bool = True,
    peering_name: str | None = None,
    priority: int | None = None,
    memo: object | None = None,
    ready_timeout: float = 10.0,
) -> AsyncIterator[RunningOperator]:
    """Start Kopf with a fresh registry, wait until its watches are open, stop it on exit."""
    if registry is None:
        registry = load_registry(module, setup)

    # Log in to the emulator explicitly: no kubeconfig or in-cluster lookups by Kopf.
    @kopf.on.login(registry=registry)
    def _login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=api.url, insecure=True, token="emulator-token",
                                   default_namespace="default")

    settings = fast_settings(kopf.OperatorSettings())
    if configure is not None:
        configure(settings)
    stop_flag, ready_flag = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(kopf.operator(
        registry=registry, settings=settings, standalone=standalone,
        clusterwide=clusterwide, namespaces=[] if clusterwide else list(namespaces),
        stop_flag=stop_flag, ready_flag=ready_flag, peering_name=peering_name,
        priority=priority, memo=memo,
    ))
    try:
        await _wait_ready(api, task, ready_flag, list(wait_for_watches), ready_timeout)
        yield RunningOperator(task=task, registry=registry, settings=settings, stop_flag=stop_flag, memo=memo)
    finally:
        stop_flag.set()
        try:
            await asyncio.wait_for(task, timeout=10)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _wait_ready(api: KubeAPI, task: asyncio.Task[None], ready_flag: asyncio.Event,
                      resources: list[ResourceType], timeout: float) -> None:
    """Ready means Kopf said so *and* its watch requests reached the server (else duplicates)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if task.done():
            task.result()  # re-raise why the operator died
            raise RuntimeError("the operator exited before it became ready")
        watching = set(api.emulator.open_watches)
        if ready_flag.is_set() and all(rt.key in watching for rt in resources):
            return
        if loop.time() > deadline:
            raise TimeoutError(f"operator not ready in {timeout}s; open watches: {sorted(watching)}, "
                               f"waiting for {[rt.key for rt in resources]}")
        await asyncio.sleep(0.02)
