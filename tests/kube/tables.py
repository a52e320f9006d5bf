"""Server-side printing (`kubectl get` columns), as the API server renders `as=Table` lists.

kubectl asks for `Accept: application/json;as=Table;v=v1;g=meta.k8s.io`. For a custom
resource the API server builds the columns from the CRD's `additionalPrinterColumns`
(JSONPath into each object, `date` columns shown as an age); other resources get Name and
Age here (the real server knows richer columns for built-in kinds).
"""

from __future__ import annotations

import datetime
from typing import Any

from tests.kube.store import CRDS, Obj, ResourceType, Store

_NAME_COLUMN = {"name": "Name", "type": "string", "format": "name", "priority": 0,
                "description": "Name must be unique within a namespace."}
_AGE_COLUMN = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def wants_table(accept: str | None) -> bool:
    return bool(accept) and "as=Table" in accept


def printer_columns(store: Store, rt: ResourceType) -> list[dict[str, Any]]:
    """The CRD's additionalPrinterColumns for this resource, or Age for anything else."""
    for crd in store.all_objects(CRDS):
        spec = crd.get("spec", {})
        if spec.get("group") == rt.group and spec.get("names", {}).get("plural") == rt.plural:
            for version in spec.get("versions", []):
                if version.get("name") == rt.version:
                    return version.get("additionalPrinterColumns") or [_AGE_COLUMN]
    return [_AGE_COLUMN]


def _jsonpath(obj: Obj, path: str) -> Any:
    """The simple `.a.b.c` JSONPaths printer columns use."""
    value: Any = obj
    for part in path.strip().lstrip(".").split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def human_age(timestamp: str | None, now: datetime.datetime | None = None) -> str | None:
    """`5s`, `3m`, `2h`, `4d`: kubectl's short duration of how long ago."""
    if not timestamp:
        return None
    when = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = max(0, int(((now or datetime.datetime.now(datetime.UTC)) - when).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 2 * 3600:
        return f"{seconds // 60}m"
    if seconds < 2 * 86400:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def render_table(store: Store, rt: ResourceType, items: list[Obj], resource_version: str) -> Obj:
    columns = printer_columns(store, rt)
    rows = []
    for obj in items:
        cells: list[Any] = [obj["metadata"]["name"]]
        for column in columns:
            value = _jsonpath(obj, column["jsonPath"])
            cells.append(human_age(value) if column.get("type") == "date" else value)
        rows.append({"cells": cells, "object": {
            "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}})
    definitions = [_NAME_COLUMN] + [
        {"name": c["name"], "type": c.get("type", "string"), "format": c.get("format", ""),
         "description": c.get("description", ""), "priority": c.get("priority", 0)}
        for c in columns
    ]
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": resource_version},
            "columnDefinitions": definitions, "rows": rows}
