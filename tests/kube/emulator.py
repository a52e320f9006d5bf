"""A Kubernetes API emulator over real HTTP, built on KMock's server and discovery.

KMock (`kmock.KubernetesScaffold`) gives the HTTP server, request parsing and log
(`emulator.requests`), API discovery (`/api`, `/apis/...`) and Status-shaped errors.
Object semantics KMock does not have live in `store.py`; this module maps HTTP verbs
onto that store, streams watches, and injects faults:

    async with kube_api() as api:                 # also writes a kubeconfig, sets KUBECONFIG
        await api.client.create("pods", pod)      # tiny client, see client.py
        api.fail("PATCH", api.url_of(JOBS, "default", "job1", "status"), 409, times=2)
        await api.drop_watches()                  # every open watch is cut mid-stream
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import re
import tempfile
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import kmock
import yaml
from kmock._internal import rendering

from tests.kube.selectors import parse_field_selector, parse_label_selector
from tests.kube.store import (
    CRDS,
    DEFAULT_RESOURCES,
    NAMESPACES,
    PODS,
    ApiError,
    Obj,
    ResourceType,
    Store,
    WatchEvent,
    json_patch,
    merge_patch,
    now_iso,
)
from tests.kube.tables import render_table, wants_table

_PATH = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
    r"(?:/namespaces/(?P<ns>[^/]+)(?=/))?"
    r"/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>[^/]+))?/?$"
)


@dataclass
class Fault:
    """Answer the next `times` requests matching method and path with an error status."""

    method: str
    path: re.Pattern[str]
    status: int
    times: int
    message: str
    fired: int = 0


@dataclass
class _OpenWatch:
    resource: ResourceType
    queue: asyncio.Queue[WatchEvent | None] = field(default_factory=asyncio.Queue)


@attrs.define(kw_only=True)
class KubeEmulator(kmock.KubernetesScaffold):
    """KMock's scaffold plus a stateful object store with real API-server semantics."""

    store: Store = attrs.field(factory=Store)
    faults: list[Fault] = attrs.field(factory=list)
    # KMock logs every request (bodies included) for assertions; long benchmarks cap it.
    keep_requests: int | None = None
    _watches: list[_OpenWatch] = attrs.field(factory=list)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.store.listeners.append(self._fan_out)
        for rt in DEFAULT_RESOURCES:
            self.declare(rt)

    def declare(self, rt: ResourceType) -> None:
        """Serve a resource: discovery lists it (Kopf opens no watch for undeclared ones)."""
        self.store.add_resource(rt)
        self.resources[rt.key] = kmock.ResourceInfo(
            kind=rt.kind,
            singular=rt.kind.lower(),
            namespaced=rt.namespaced,
            verbs={"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"},
            shortnames=set(rt.short_names),
            subresources=set(rt.subresources),
        )

    # -- discovery fix-up ------------------------------------------------------------------

    async def _serve_version(self, request: rendering.Request) -> rendering.Payload:
        result = await super()._serve_version(request)
        if isinstance(result, dict) and result.get("groupVersion") == "/v1":
            result["groupVersion"] = "v1"  # the core group is "v1", not "/v1" (kubectl checks it)
        for entry in result.get("resources", []) if isinstance(result, dict) else []:
            if "/" in entry["name"]:  # subresources carry no short names or categories
                entry["shortNames"], entry["categories"] = [], []
        return result

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # KMock's path parser cannot split `/api/v1/namespaces` (the namespace list itself):
        # build the request here and serve it from the store.
        if raw_request.path.rstrip("/") != "/api/v1/namespaces":
            return await super().__call__(raw_request)
        body = await raw_request.read()
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        request = rendering.Request(
            id=len(self._requests), raw_request=raw_request, url=raw_request.url,
            method=raw_request.method, params=dict(raw_request.query),
            headers=dict(raw_request.headers), data=data, body=body, text=body.decode(errors="replace"),
        )
        self._requests.append(request)
        return await self._handle(request)

    # -- fault injection -------------------------------------------------------------------

    def fail(self, method: str, path: str | re.Pattern[str], status: int = 500, *,
             times: int = 1, message: str | None = None) -> Fault:
        """The next `times` requests with this method ("*" for any) and path answer `status`.

        A plain string path matches exactly; a compiled pattern is searched.
        """
        pattern = path if isinstance(path, re.Pattern) else re.compile(re.escape(path) + r"$")
        fault = Fault(method.upper(), pattern, status, times,
                      message or f"injected fault: {status} for {method} {path}")
        self.faults.append(fault)
        return fault

    async def drop_watches(self, resource: ResourceType | None = None) -> int:
        """Cut open watch connections mid-stream, as a restarting API server or a LB does."""
        dropped = 0
        for watch in list(self._watches):
            if resource is None or watch.resource.key == resource.key:
                watch.queue.put_nowait(None)
                dropped += 1
        await asyncio.sleep(0)
        return dropped

    @property
    def open_watches(self) -> list[str]:
        return [w.resource.key for w in self._watches]

    def _take_fault(self, method: str, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.times > 0 and fault.method in ("*", method) and fault.path.search(path):
                fault.times -= 1
                fault.fired += 1
                return fault
        return None

    # -- HTTP dispatch -----------------------------------------------------------------------

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        if self.keep_requests is not None and len(self._requests) > 2 * self.keep_requests + 1:
            del self._requests[: len(self._requests) - self.keep_requests]
        raw = request._raw_request
        path = request.url.path
        method = raw.method.upper() if raw is not None else str(request.method).upper()
        if fault := self._take_fault(method, path):
            return _status_response(ApiError(fault.status, fault.message))
        match = _PATH.match(path)
        rt = self._resource_for(match) if match else None
        if rt is None or raw is None:
            return await super()._handle(request)  # discovery and anything KMock knows
        namespace = match["ns"] if rt.namespaced else None
        name, sub = match["name"], match["sub"]
        try:
            if method == "GET" and request.params.get("watch") in ("true", "1"):
                return await self._watch(raw, rt, namespace, request.params)
            result = await self._dispatch(method, rt, namespace, name, sub, request)
            created = method == "POST" and name is None
            return aiohttp.web.json_response(result, status=201 if created else 200)
        except ApiError as e:
            return _status_response(e)

    def _resource_for(self, match: re.Match[str]) -> ResourceType | None:
        group = "" if match["core"] else match["group"]
        version = match["core"] or match["version"]
        key = f"{group}/{version}/{match['plural']}" if group else f"{version}/{match['plural']}"
        return self.store.resources.get(key)

    async def _dispatch(self, method: str, rt: ResourceType, namespace: str | None,
                        name: str | None, sub: str | None, request: rendering.Request) -> Obj:
        store, data = self.store, request.data
        table = wants_table(request.headers.get("Accept"))
        if method == "GET" and name is None:
            items = store.list(rt, namespace, _predicate(request.params))
            if table:
                return render_table(store, rt, items, str(store.revision))
            return {"kind": f"{rt.kind}List", "apiVersion": rt.api_version,
                    "metadata": {"resourceVersion": str(store.revision), "continue": ""},
                    "items": items}
        if method == "GET":
            obj = store.get(rt, namespace, name)
            return render_table(store, rt, [obj], str(store.revision)) if table else obj
        if method == "POST" and name is None:
            return store.create(rt, namespace, _body(data))
        if method == "POST" and rt.key == PODS.key and sub == "eviction":
            return self.evict(namespace, name, reason="EvictionByEvictionAPI")
        if method == "PATCH" and name is not None:
            content_type = request.headers.get("Content-Type", "application/merge-patch+json")
            return store.update(rt, namespace, name, _patcher(content_type, data), sub)
        if method == "PUT" and name is not None:
            body = _body(data)
            return store.update(rt, namespace, name, lambda _old: copy.deepcopy(body), sub)
        if method == "DELETE" and name is not None:
            grace = _grace(request.params, data)
            return store.delete(rt, namespace, name, grace)
        if method == "DELETE":
            gone = [store.delete(rt, o["metadata"].get("namespace"), o["metadata"]["name"],
                                 _grace(request.params, data))
                    for o in store.list(rt, namespace, _predicate(request.params))]
            return {"kind": f"{rt.kind}List", "apiVersion": rt.api_version,
                    "metadata": {}, "items": gone}
        raise ApiError(405, f"method {method} is not supported here", reason="MethodNotAllowed")

    # -- pod disruptions, as the API server and scheduler record them ------------------------

    def evict(self, namespace: str | None, name: str, *, reason: str = "PreemptionByScheduler",
              message: str = "") -> Obj:
        """Add the DisruptionTarget condition, then delete the pod gracefully (real eviction)."""
        condition = {"type": "DisruptionTarget", "status": "True", "reason": reason,
                     "message": message or f"{reason}: the pod is being disrupted",
                     "lastTransitionTime": now_iso()}

        def add_condition(pod: Obj) -> Obj:
            status = pod.setdefault("status", {})
            conditions = [c for c in status.get("conditions", []) if c.get("type") != "DisruptionTarget"]
            status["conditions"] = conditions + [condition]
            return pod

        self.store.update(PODS, namespace, name, add_condition, "status")
        return self.store.delete(PODS, namespace, name)

    # -- watches -------------------------------------------------------------------------------

    def _fan_out(self, rt: ResourceType, event: WatchEvent) -> None:
        for watch in self._watches:
            if watch.resource.key == rt.key:
                watch.queue.put_nowait(event)

    async def _watch(self, raw: aiohttp.web.BaseRequest, rt: ResourceType, namespace: str | None,
                     params: dict[str, str]) -> aiohttp.web.StreamResponse:
        """A watch stream: the current state or the history since `resourceVersion`, then live.

        KMock replays everything as ADDED and ignores selectors and resourceVersion; a real
        API server resumes from the given version and answers 410 Gone when it is compacted.
        """
        predicate = _predicate(params)
        watch = _OpenWatch(rt)
        self._watches.append(watch)  # registered before the snapshot: no event falls between
        try:
            since = params.get("resourceVersion")
            backlog: list[tuple[str, Obj]] = []
            if not since or since == "0":
                backlog = [("ADDED", o) for o in self.store.list(rt, namespace, predicate)]
                if params.get("sendInitialEvents") == "true":
                    backlog.append(("BOOKMARK", _bookmark(rt, self.store.revision, initial=True)))
            else:
                try:
                    past = self.store.events_since(rt, int(since))
                except ApiError as e:
                    backlog = [("ERROR", e.status())]
                    past = []
                while not watch.queue.empty():
                    watch.queue.get_nowait()  # already covered by the history
                for event in past:
                    if translated := _translate(event, namespace, predicate):
                        backlog.append(translated)

            response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
            await response.prepare(raw)
            for kind, obj in backlog:
                await response.write(_line(kind, obj))
            if backlog and backlog[-1][0] == "ERROR":
                await response.write_eof()
                return response
            timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None
            deadline = asyncio.get_running_loop().time() + timeout if timeout else None
            while True:
                remaining = None if deadline is None else deadline - asyncio.get_running_loop().time()
                if remaining is not None and remaining <= 0:
                    break
                try:
                    event = await asyncio.wait_for(watch.queue.get(), remaining)
                except TimeoutError:
                    break
                if event is None:  # dropped: cut the TCP connection without a proper end
                    if raw.transport is not None:
                        raw.transport.close()
                    return response
                if translated := _translate(event, namespace, predicate):
                    await response.write(_line(*translated))
            await response.write_eof()
            return response
        finally:
            self._watches.remove(watch)


def _translate(event: WatchEvent, namespace: str | None, predicate: Any) -> tuple[str, Obj] | None:
    """What a watcher with this namespace and selector sees of an event (real API semantics)."""

    def visible(obj: Obj | None) -> bool:
        if obj is None:
            return False
        ns_ok = namespace is None or obj.get("metadata", {}).get("namespace") == namespace
        return ns_ok and predicate(obj)

    new_ok, old_ok = visible(event.object), visible(event.old)
    if event.type == "DELETED":
        return ("DELETED", event.object) if (new_ok or old_ok) else None
    if new_ok and (old_ok or event.type == "ADDED"):
        return event.type, event.object
    if new_ok:
        return "ADDED", event.object  # came into the selector
    if old_ok:
        return "DELETED", event.object  # left the selector
    return None


def _bookmark(rt: ResourceType, revision: int, *, initial: bool) -> Obj:
    annotations = {"k8s.io/initial-events-end": "true"} if initial else {}
    return {"kind": rt.kind, "apiVersion": rt.api_version,
            "metadata": {"resourceVersion": str(revision), "annotations": annotations}}


def _line(kind: str, obj: Obj) -> bytes:
    return json.dumps({"type": kind, "object": obj}).encode() + b"\n"


def _status_response(error: ApiError) -> aiohttp.web.Response:
    return aiohttp.web.json_response(error.status(), status=error.code)


def _body(data: Any) -> Obj:
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return data


def _predicate(params: dict[str, str]) -> Any:
    try:
        labels = parse_label_selector(params.get("labelSelector"))
        fields = parse_field_selector(params.get("fieldSelector"))
    except ValueError as e:
        raise ApiError(400, str(e)) from e
    return lambda obj: labels(obj) and fields(obj)


def _patcher(content_type: str, data: Any) -> Any:
    content_type = content_type.split(";")[0].strip()
    if content_type == "application/json-patch+json":
        if not isinstance(data, list):
            raise ApiError(400, "a JSON patch must be a list of operations")
        return lambda old: json_patch(old, data)
    if content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json",
                        "application/json"):
        return lambda old: merge_patch(old, _body(data))
    raise ApiError(415, f"unsupported patch content type {content_type!r}", reason="UnsupportedMediaType")


def _grace(params: dict[str, str], data: Any) -> int | None:
    if "gracePeriodSeconds" in params:
        return int(params["gracePeriodSeconds"])
    if isinstance(data, dict) and data.get("gracePeriodSeconds") is not None:
        return int(data["gracePeriodSeconds"])
    return None


# -- the pytest-facing entry point ---------------------------------------------------------------


@dataclass
class KubeAPI:
    """A running emulator: its URL, the emulator (store, faults, requests) and a client."""

    emulator: KubeEmulator
    url: str
    kubeconfig: Path
    client: Any  # tests.kube.client.KubeClient

    @property
    def store(self) -> Store:
        return self.emulator.store

    def fail(self, *args: Any, **kwargs: Any) -> Fault:
        return self.emulator.fail(*args, **kwargs)

    async def drop_watches(self, resource: ResourceType | None = None) -> int:
        return await self.emulator.drop_watches(resource)

    @staticmethod
    def url_of(rt: ResourceType, namespace: str | None = None, name: str | None = None,
               subresource: str | None = None) -> str:
        return rt.url(namespace, name, subresource)


def write_kubeconfig(path: Path, server: str) -> Path:
    """A kubeconfig naming the emulator, for kubectl, the kubernetes client and Kopf."""
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
        "clusters": [{"name": "emulator", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
        "users": [{"name": "tester", "user": {"token": "emulator-token"}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester",
                                                       "namespace": "default"}}],
    }
    path.write_text(json.dumps(config, indent=2))  # JSON is valid YAML
    return path


@contextlib.contextmanager
def _kubeconfig_env(path: Path) -> Iterable[None]:
    """Point KUBECONFIG and the kubernetes client's cached default location at `path`."""
    saved = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(path)
    try:
        import kubernetes.config.kube_config as kube_config
    except ImportError:  # pragma: no cover - the operator extra brings it
        kube_config = None
    saved_default = getattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", None)
    if kube_config is not None:
        kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(path)  # read once at import otherwise
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = saved
        if kube_config is not None and saved_default is not None:
            kube_config.KUBE_CONFIG_DEFAULT_LOCATION = saved_default


@contextlib.asynccontextmanager
async def kube_api(*, namespaces: Iterable[str] = ("default",),
                   resources: Iterable[ResourceType] = (),
                   crd_files: Iterable[Path] = (),
                   keep_requests: int | None = None,
                   workdir: Path | None = None) -> AsyncIterator[KubeAPI]:
    """Start the emulator on a free localhost port, with namespaces created and KUBECONFIG set.

    `crd_files`: CustomResourceDefinition YAML files to install (their printer columns are
    what `kubectl get` shows; the resources themselves are declared in store.py).
    `keep_requests`: keep only about that many requests in `emulator.requests` (benchmarks).
    """
    from tests.kube.client import KubeClient

    emulator = KubeEmulator(keep_requests=keep_requests)
    for rt in resources:
        emulator.declare(rt)
    for ns in namespaces:
        emulator.store.create(NAMESPACES, None, {"metadata": {"name": ns}, "status": {"phase": "Active"}})
    for path in crd_files:
        for doc in yaml.safe_load_all(Path(path).read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                emulator.store.create(CRDS, None, doc)
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kube-emulator-")))
        async with emulator, kmock.Server(emulator) as server:
            url = str(server.url).rstrip("/")
            kubeconfig = write_kubeconfig(workdir / "kubeconfig", url)
            stack.enter_context(_kubeconfig_env(kubeconfig))
            async with KubeClient(url, emulator.store.resources) as client:
                yield KubeAPI(emulator=emulator, url=url, kubeconfig=kubeconfig, client=client)
