"""List-then-watch with reconnects, calling back with the arrival of every change."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from adamw_operator.cluster.kubelet.api import ApiClient, ApiError

Obj = dict[str, Any]


async def watch_forever(api: ApiClient, path: str, on_event: Callable[[str, Obj], None], **params: Any) -> None:
    """`on_event(type, object)` for the listed objects (as ADDED), then every watch event."""
    while True:
        try:
            listed = await api.get(path, **params)
            for obj in listed["items"]:
                on_event("ADDED", obj)
            rv = listed["metadata"]["resourceVersion"]
            while True:
                async for event in api.watch(path, resource_version=rv, **params):
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        raise ApiError(obj.get("code", 500), obj, "WATCH", path)
                    rv = obj["metadata"]["resourceVersion"]
                    if event["type"] != "BOOKMARK":
                        on_event(event["type"], obj)
        except asyncio.CancelledError:
            raise
        except Exception:  # dropped or expired watch: list again
            await asyncio.sleep(0.2)
