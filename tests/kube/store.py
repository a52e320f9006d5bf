"""The emulated API server's object store: what a real kube-apiserver does that KMock does not.

Every rule here stands for a real API-server behaviour the operator relies on:

- create assigns uid, resourceVersion, generation=1 and creationTimestamp; the namespace
  comes from the URL; `generateName` gets a random suffix; a duplicate name is a 409.
- resourceVersion is one cluster-wide counter (etcd's revision); watches resume from it.
- generation bumps only when something outside `metadata` and `status` changes.
- resources with a `status` subresource: main-resource writes keep the stored status,
  `/status` writes change nothing but status (and create drops a custom resource's status).
- merge patch (RFC 7386), JSON patch (RFC 6902, including `test` -> 422 on mismatch) and
  PUT with optimistic concurrency (stale resourceVersion -> 409). Strategic merge patch is
  treated as merge patch: lists are replaced, not merged by key (callers send whole lists).
- delete: objects with finalizers, and pods bound to a node, get `deletionTimestamp` and
  stay until the finalizers are gone / the kubelet confirms with grace period 0.
- owner-reference garbage collection (background propagation): removing an owner deletes
  its dependents, which then follow their own delete rules (pods terminate gracefully).
"""

from __future__ import annotations

import copy
import random
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from adamw_operator.local.pod_status import now_iso

Obj = dict[str, Any]


@dataclass(frozen=True)
class ResourceType:
    """One served resource: what discovery reports and how its URLs look."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    subresources: frozenset[str] = frozenset()
    short_names: frozenset[str] = frozenset()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> str:
        return f"{self.group}/{self.version}/{self.plural}" if self.group else f"{self.version}/{self.plural}"

    def url(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        parts = [base]
        if self.namespaced and namespace:
            parts.append(f"namespaces/{namespace}")
        parts.append(self.plural)
        if name:
            parts.append(name)
        if subresource:
            parts.append(subresource)
        return "/".join(parts)


STATUS = frozenset({"status"})

# Every resource the operator, Kopf and the harness touch.
PODS = ResourceType("", "v1", "pods", "Pod", subresources=STATUS, short_names=frozenset({"po"}))
SERVICES = ResourceType("", "v1", "services", "Service", subresources=STATUS, short_names=frozenset({"svc"}))
CONFIGMAPS = ResourceType("", "v1", "configmaps", "ConfigMap", short_names=frozenset({"cm"}))
SECRETS = ResourceType("", "v1", "secrets", "Secret")
EVENTS = ResourceType("", "v1", "events", "Event", short_names=frozenset({"ev"}))
NEW_EVENTS = ResourceType("events.k8s.io", "v1", "events", "Event")
NAMESPACES = ResourceType(
    "", "v1", "namespaces", "Namespace", namespaced=False, subresources=STATUS, short_names=frozenset({"ns"})
)
PVCS = ResourceType("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", subresources=STATUS)
CRDS = ResourceType(
    "apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition",
    namespaced=False, subresources=STATUS,
)
JOBS = ResourceType(
    "training.adamw.io", "v1alpha1", "adamwtrainingjobs", "AdamWTrainingJob",
    subresources=STATUS, short_names=frozenset({"awj", "adamwjob"}),
)
PEERINGS = ResourceType("kopf.dev", "v1", "kopfpeerings", "KopfPeering")
CLUSTER_PEERINGS = ResourceType("kopf.dev", "v1", "clusterkopfpeerings", "ClusterKopfPeering", namespaced=False)

# Kopf's legacy `zalando.org` peerings are not served by default: the chart installs the
# `kopf.dev` CRDs only, and Kopf pauses while a served peering resource lacks its object.
DEFAULT_RESOURCES: tuple[ResourceType, ...] = (
    PODS, SERVICES, CONFIGMAPS, SECRETS, EVENTS, NEW_EVENTS, NAMESPACES, PVCS, CRDS, JOBS,
    PEERINGS, CLUSTER_PEERINGS,
)


class ApiError(Exception):
    """An error the API server answers with a `Status` object."""

    REASONS = {400: "BadRequest", 404: "NotFound", 409: "Conflict", 410: "Expired",
               422: "Invalid", 500: "InternalError"}

    def __init__(self, code: int, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or self.REASONS.get(code, "Unknown")

    def status(self) -> Obj:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "code": self.code}


@dataclass
class WatchEvent:
    resource_version: int
    type: str  # ADDED, MODIFIED, DELETED
    object: Obj
    old: Obj | None  # the previous state, to turn selector transitions into ADDED/DELETED


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: dicts merge recursively, null deletes, the rest replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json_patch(target: Obj, ops: list[dict[str, Any]]) -> Obj:
    """RFC 6902 JSON patch (add, remove, replace, test); a failed `test` is 422 as in Kubernetes."""
    doc = copy.deepcopy(target)
    for op in ops:
        parts = _pointer(op.get("path", ""))
        if not parts:
            raise ApiError(422, "JSON patch on the document root is not supported")
        parent: Any = doc
        for part in parts[:-1]:
            try:
                parent = parent[int(part)] if isinstance(parent, list) else parent[part]
            except (KeyError, IndexError, ValueError) as e:
                raise ApiError(422, f"JSON patch path {op.get('path')!r} does not exist") from e
        last = parts[-1]
        kind = op.get("op")
        if kind == "test":
            try:
                current = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            except (IndexError, ValueError):
                current = None
            if current != op.get("value"):
                raise ApiError(422, f"the server rejected our request: test failed at {op['path']!r}")
        elif kind in ("add", "replace"):
            if isinstance(parent, list):
                if last == "-":
                    parent.append(op["value"])
                elif kind == "add":
                    parent.insert(int(last), op["value"])
                else:
                    parent[int(last)] = op["value"]
            else:
                if kind == "replace" and last not in parent:
                    raise ApiError(422, f"JSON patch replace of missing path {op['path']!r}")
                parent[last] = op["value"]
        elif kind == "remove":
            try:
                if isinstance(parent, list):
                    del parent[int(last)]
                else:
                    del parent[last]
            except (KeyError, IndexError, ValueError) as e:
                raise ApiError(422, f"JSON patch remove of missing path {op['path']!r}") from e
        else:
            raise ApiError(422, f"unsupported JSON patch op {kind!r}")
    return doc


_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # the API server's, without vowels


def _without_version(obj: Obj) -> Obj:
    return {**obj, "metadata": {k: v for k, v in obj.get("metadata", {}).items() if k != "resourceVersion"}}


def _spec_part(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "kind", "apiVersion")}


@dataclass
class Store:
    """In-memory objects keyed by (resource key, namespace, name), plus the event history."""

    resources: dict[str, ResourceType] = field(default_factory=dict)
    objects: dict[tuple[str, str | None, str], Obj] = field(default_factory=dict)
    history: dict[str, list[WatchEvent]] = field(default_factory=dict)
    revision: int = 1
    listeners: list[Callable[[ResourceType, WatchEvent], None]] = field(default_factory=list)
    compacted: set[str] = field(default_factory=set)
    history_limit: int = 20_000  # events kept per resource for watch resumption

    def add_resource(self, rt: ResourceType) -> None:
        self.resources[rt.key] = rt
        self.history.setdefault(rt.key, [])

    # -- reading -------------------------------------------------------------------------

    def get(self, rt: ResourceType, namespace: str | None, name: str) -> Obj:
        obj = self.objects.get((rt.key, self._ns(rt, namespace), name))
        if obj is None:
            raise ApiError(404, f'{rt.plural}.{rt.group or "core"} "{name}" not found')
        return obj

    def list(self, rt: ResourceType, namespace: str | None,
             predicate: Callable[[Obj], bool] = lambda o: True) -> list[Obj]:
        ns = self._ns(rt, namespace)
        return [
            obj for (key, obj_ns, _), obj in self.objects.items()
            if key == rt.key and (ns is None or obj_ns == ns) and predicate(obj)
        ]

    def events_since(self, rt: ResourceType, resource_version: int) -> list[WatchEvent]:
        """Events after a resourceVersion; 410 Gone if the history no longer reaches back."""
        events = self.history[rt.key]
        if events and events[0].resource_version > resource_version + 1 and self._trimmed(rt):
            raise ApiError(410, f"too old resource version: {resource_version}", reason="Expired")
        return [e for e in events if e.resource_version > resource_version]

    def _trimmed(self, rt: ResourceType) -> bool:
        return rt.key in self.compacted

    def compact(self, keep_last: int = 0) -> None:
        """Forget old events, as etcd compaction does; older watch resumptions then get 410."""
        for key, events in self.history.items():
            if len(events) > keep_last:
                del events[: len(events) - keep_last]
                self.compacted.add(key)

    # -- writing -------------------------------------------------------------------------

    def create(self, rt: ResourceType, namespace: str | None, body: Obj) -> Obj:
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if rt.namespaced:
            if namespace and meta.get("namespace") not in (None, namespace):
                raise ApiError(400, "the namespace of the provided object does not match "
                                    "the namespace sent on the request")
            meta["namespace"] = namespace or meta.get("namespace") or "default"
        else:
            meta.pop("namespace", None)
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise ApiError(422, "metadata.name: Required value: name or generateName is required")
            for _ in range(100):
                candidate = meta["generateName"] + "".join(random.choices(_SUFFIX_ALPHABET, k=5))
                if (rt.key, meta.get("namespace"), candidate) not in self.objects:
                    meta["name"] = candidate
                    break
        _check_owner_references(meta)
        key = (rt.key, meta.get("namespace"), meta["name"])
        if key in self.objects:
            raise ApiError(409, f'{rt.plural}.{rt.group or "core"} "{meta["name"]}" already exists',
                           reason="AlreadyExists")
        for server_field in ("deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(server_field, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_iso()
        meta["generation"] = 1
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        if "status" in rt.subresources and rt.group not in ("", "apiextensions.k8s.io"):
            obj.pop("status", None)  # custom resources: status is set only via /status
        if rt is PODS or rt.key == PODS.key:
            _default_pod(obj)
        self._commit(rt, key, obj, "ADDED", None)
        return obj

    def update(self, rt: ResourceType, namespace: str | None, name: str,
               change: Callable[[Obj], Obj], subresource: str | None = None,
               expected_version: str | None = None) -> Obj:
        """Apply `change` (a patch or a PUT) to one object with the API server's field rules."""
        old = self.get(rt, namespace, name)
        candidate = change(copy.deepcopy(old))
        if not isinstance(candidate, dict):
            raise ApiError(400, "the patched object is not a JSON object")
        new_meta = candidate.get("metadata") or {}
        version = expected_version or new_meta.get("resourceVersion")
        if version and version != old["metadata"]["resourceVersion"]:
            raise ApiError(409, f'Operation cannot be fulfilled on {rt.plural} "{name}": the object '
                                "has been modified; please apply your changes to the latest version "
                                "and try again")
        if subresource == "status":
            new = copy.deepcopy(old)
            if "status" in candidate:
                new["status"] = candidate["status"]
            else:
                new.pop("status", None)
        elif subresource:
            raise ApiError(404, f"subresource {subresource!r} is not served")
        else:
            new = candidate
            if "status" in rt.subresources:  # main-resource writes cannot change status
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
                else:
                    new.pop("status", None)
            meta = new.setdefault("metadata", {})
            for immutable in ("uid", "creationTimestamp", "namespace", "name", "generation",
                              "deletionTimestamp", "deletionGracePeriodSeconds"):
                if immutable in old["metadata"]:
                    meta[immutable] = old["metadata"][immutable]
                else:
                    meta.pop(immutable, None)
            _check_owner_references(meta)
            if _spec_part(new) != _spec_part(old):
                meta["generation"] = old["metadata"].get("generation", 1) + 1
        new["apiVersion"], new["kind"] = rt.api_version, rt.kind
        key = (rt.key, old["metadata"].get("namespace"), name)
        if _without_version(new) == _without_version(old):
            return old  # a no-op write does not bump resourceVersion, as in the API server
        self._commit(rt, key, new, "MODIFIED", old)
        meta = new["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers") and not self._awaits_kubelet(rt, new):
            self._remove(rt, key)
        return new

    def delete(self, rt: ResourceType, namespace: str | None, name: str,
               grace_period: int | None = None) -> Obj:
        obj = self.get(rt, namespace, name)
        key = (rt.key, obj["metadata"].get("namespace"), name)
        meta = obj["metadata"]
        if meta.get("deletionTimestamp"):
            if grace_period == 0 and not meta.get("finalizers"):
                return self._remove(rt, key)  # the kubelet's confirmation, or a force delete
            return obj
        pod_grace = self._pod_grace(rt, obj, grace_period)
        if meta.get("finalizers") or pod_grace is not None:
            new = copy.deepcopy(obj)
            new["metadata"]["deletionTimestamp"] = now_iso()
            if pod_grace is not None:
                new["metadata"]["deletionGracePeriodSeconds"] = pod_grace
            self._commit(rt, key, new, "MODIFIED", obj)
            return new
        return self._remove(rt, key)

    # -- internals -----------------------------------------------------------------------

    @staticmethod
    def _ns(rt: ResourceType, namespace: str | None) -> str | None:
        return namespace if rt.namespaced else None

    @staticmethod
    def _pod_grace(rt: ResourceType, obj: Obj, grace_period: int | None) -> int | None:
        """Pods bound to a node end gracefully: the kubelet stops them, then removes the object."""
        if rt.key != PODS.key or not obj.get("spec", {}).get("nodeName") or grace_period == 0:
            return None
        if obj.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            return None  # nothing left to stop; the real kubelet confirms at once
        if grace_period is None:
            grace_period = obj["spec"].get("terminationGracePeriodSeconds", 30)
        return int(grace_period)

    @staticmethod
    def _awaits_kubelet(rt: ResourceType, obj: Obj) -> bool:
        return rt.key == PODS.key and "deletionGracePeriodSeconds" in obj["metadata"]

    def _commit(self, rt: ResourceType, key: tuple[str, str | None, str], obj: Obj,
                event_type: str, old: Obj | None) -> None:
        self.revision += 1
        obj["metadata"]["resourceVersion"] = str(self.revision)
        self.objects[key] = obj
        self._emit(rt, WatchEvent(self.revision, event_type, obj, old))

    def _remove(self, rt: ResourceType, key: tuple[str, str | None, str]) -> Obj:
        obj = self.objects.pop(key)
        self.revision += 1
        gone = copy.deepcopy(obj)
        gone["metadata"]["resourceVersion"] = str(self.revision)
        self._emit(rt, WatchEvent(self.revision, "DELETED", gone, obj))
        self._collect_dependents(gone["metadata"]["uid"])
        return gone

    def _collect_dependents(self, owner_uid: str) -> None:
        """Background garbage collection: delete every object that names the owner's uid."""
        dependents = [
            (self.resources[k], ns, name) for (k, ns, name), obj in list(self.objects.items())
            if any(ref.get("uid") == owner_uid for ref in obj["metadata"].get("ownerReferences") or [])
        ]
        for rt, ns, name in dependents:
            if (rt.key, ns, name) in self.objects:
                self.delete(rt, ns, name)

    def _emit(self, rt: ResourceType, event: WatchEvent) -> None:
        events = self.history.setdefault(rt.key, [])
        events.append(event)
        if len(events) > 2 * self.history_limit:  # etcd compacts old revisions too
            del events[: len(events) - self.history_limit]
            self.compacted.add(rt.key)
        for listener in list(self.listeners):
            listener(rt, event)

    def all_objects(self, rt: ResourceType) -> Iterable[Obj]:
        return [o for (k, _, _), o in self.objects.items() if k == rt.key]


def _check_owner_references(meta: Obj) -> None:
    for i, ref in enumerate(meta.get("ownerReferences") or []):
        for required in ("apiVersion", "kind", "name", "uid"):
            if not ref.get(required):
                raise ApiError(422, f"metadata.ownerReferences[{i}].{required}: Required value")


def _default_pod(pod: Obj) -> None:
    """Defaults the API server fills in for a pod, and the Pending phase it starts in."""
    spec = pod.setdefault("spec", {})
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    for container in spec.get("containers", []):
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        container.setdefault("imagePullPolicy", "IfNotPresent")
    pod["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
