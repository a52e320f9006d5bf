"""A tiny async client for tests: create/get/list/patch/replace/delete/wait_for over HTTP.

Resources are named by plural ("pods"), short name ("awj") or key
("training.adamw.io/v1alpha1/adamwtrainingjobs"). Errors raise `ApiError` with the
server's code and message, so tests can assert on them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp

from tests.kube.store import ApiError, Obj, ResourceType


class KubeClient:
    def __init__(self, url: str, resources: Mapping[str, ResourceType]) -> None:
        self.url = url.rstrip("/")
        self._resources = resources
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> KubeClient:
        # force_close: keep-alive connections confuse the mock server's shutdown (TOOLS.md)
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    def resource(self, name: str | ResourceType) -> ResourceType:
        if isinstance(name, ResourceType):
            return name
        if name in self._resources:
            return self._resources[name]
        matches = [rt for rt in self._resources.values() if name == rt.plural or name in rt.short_names]
        core = [rt for rt in matches if rt.group == ""]  # "events" means the core v1 events
        if len(matches) == 1 or core:
            return (core or matches)[0]
        raise KeyError(f"unknown or ambiguous resource {name!r}")

    async def _call(self, method: str, path: str, *, json: Any = None,
                    params: Mapping[str, str] | None = None, headers: Mapping[str, str] | None = None) -> Any:
        assert self._session is not None, "use `async with KubeClient(...)`"
        async with self._session.request(method, self.url + path, json=json, params=params,
                                         headers=headers) as response:
            data = await response.json(content_type=None)
            if response.status >= 400:
                raise ApiError(response.status, (data or {}).get("message", ""), (data or {}).get("reason"))
            return data

    async def create(self, resource: str | ResourceType, body: Obj, namespace: str | None = "default") -> Obj:
        rt = self.resource(resource)
        return await self._call("POST", rt.url(namespace), json=body)

    async def get(self, resource: str | ResourceType, name: str, namespace: str | None = "default") -> Obj:
        rt = self.resource(resource)
        return await self._call("GET", rt.url(namespace, name))

    async def get_or_none(self, resource: str | ResourceType, name: str,
                          namespace: str | None = "default") -> Obj | None:
        try:
            return await self.get(resource, name, namespace)
        except ApiError as e:
            if e.code == 404:
                return None
            raise

    async def list(self, resource: str | ResourceType, namespace: str | None = "default", *,
                   labels: str | None = None, fields: str | None = None) -> list[Obj]:
        rt = self.resource(resource)
        params = {k: v for k, v in {"labelSelector": labels, "fieldSelector": fields}.items() if v}
        return (await self._call("GET", rt.url(namespace), params=params))["items"]

    async def patch(self, resource: str | ResourceType, name: str, patch: Obj | list[Any],
                    namespace: str | None = "default", *, subresource: str | None = None) -> Obj:
        rt = self.resource(resource)
        content_type = "application/json-patch+json" if isinstance(patch, list) else "application/merge-patch+json"
        return await self._call("PATCH", rt.url(namespace, name, subresource), json=patch,
                                headers={"Content-Type": content_type})

    async def replace(self, resource: str | ResourceType, name: str, body: Obj,
                      namespace: str | None = "default", *, subresource: str | None = None) -> Obj:
        rt = self.resource(resource)
        return await self._call("PUT", rt.url(namespace, name, subresource), json=body)

    async def delete(self, resource: str | ResourceType, name: str, namespace: str | None = "default", *,
                     grace_period: int | None = None) -> Obj:
        rt = self.resource(resource)
        params = {"gracePeriodSeconds": str(grace_period)} if grace_period is not None else None
        return await self._call("DELETE", rt.url(namespace, name), params=params)

    async def wait_for(self, resource: str | ResourceType, name: str,
                       predicate: Callable[[Obj | None], bool | Awaitable[bool]],
                       namespace: str | None = "default", *, timeout: float = 10.0,
                       interval: float = 0.05) -> Obj | None:
        """Poll one object until `predicate(obj_or_None)` holds; TimeoutError says the last state."""
        last: Obj | None = None

        async def check() -> bool:
            nonlocal last
            last = await self.get_or_none(resource, name, namespace)
            result = predicate(last)
            return bool(await result) if asyncio.iscoroutine(result) else bool(result)

        return await _poll(check, timeout, interval, lambda: f"{resource}/{name}: last seen {last!r}", lambda: last)

    async def wait_for_list(self, resource: str | ResourceType,
                            predicate: Callable[[list[Obj]], bool], namespace: str | None = "default", *,
                            labels: str | None = None, timeout: float = 10.0,
                            interval: float = 0.05) -> list[Obj]:
        """Poll a list until `predicate(items)` holds."""
        last: list[Obj] = []

        async def check() -> bool:
            nonlocal last
            last = await self.list(resource, namespace, labels=labels)
            return bool(predicate(last))

        return await _poll(check, timeout, interval,
                           lambda: f"{resource} ({labels or 'all'}): last seen {[_brief(o) for o in last]}",
                           lambda: last)


async def _poll(check: Callable[[], Awaitable[bool]], timeout: float, interval: float,
                describe: Callable[[], str], result: Callable[[], Any]) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if await check():
            return result()
        if loop.time() >= deadline:
            raise TimeoutError(f"condition not met within {timeout}s; {describe()}")
        await asyncio.sleep(interval)


def _brief(obj: Obj) -> str:
    phase = obj.get("status", {}).get("phase", "")
    return f"{obj['metadata']['name']}({phase})" if phase else obj["metadata"]["name"]
