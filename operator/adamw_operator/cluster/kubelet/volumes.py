"""Volume and env sources read from the API server, as the kubelet's volume manager would.

The node may read only what its pods reference (the Node authorizer's graph, updated a
moment after binding, so a 403 right after scheduling is retried like a 404). Missing
objects keep the pod in ContainerCreating with a message, as a failed mount does.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .api import ApiError

Obj = dict[str, Any]
Fetch = Callable[[str], Awaitable[Obj | None]]  # GET path -> object, None when absent


class SourceMissing(Exception):
    """A ConfigMap/Secret a volume or env var needs is not there (yet)."""


class Unsupported(ValueError):
    """A source this kubelet cannot provide (reported as CreateContainerConfigError)."""


@dataclass(frozen=True)
class TokenSource:
    """A projected serviceAccountToken file: refreshed by the kubelet while the pod runs."""

    volume: str
    path: str
    audience: str | None
    expiration_seconds: int


@dataclass
class ResolvedVolumes:
    config_maps: dict[str, Mapping[str, str]] = field(default_factory=dict)  # configMap volumes
    files: dict[str, dict[str, bytes]] = field(default_factory=dict)  # other volumes, by name
    tokens: list[TokenSource] = field(default_factory=list)
    claims: dict[str, Path] = field(default_factory=dict)  # claimName -> its PV's folder


async def _get(fetch: Fetch, kind: str, namespace: str | None, name: str, optional: bool) -> Obj | None:
    path = f"/api/v1/namespaces/{namespace}/{kind}s/{name}" if namespace else f"/api/v1/{kind}s/{name}"
    try:
        obj = await fetch(path)
    except ApiError as e:
        if e.status != 403:  # 403: the authorizer's graph has not seen the binding yet
            raise
        obj = None
    if obj is None and not optional:
        raise SourceMissing(f'{kind} "{name}" not found')
    return obj


def _data(kind: str, obj: Obj | None) -> dict[str, bytes]:
    if obj is None:
        return {}
    if kind == "secret":
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
    data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
    data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    return data


def _items(kind: str, name: str, data: Mapping[str, bytes], items: list[Obj] | None,
           optional: bool) -> dict[str, bytes]:
    if not items:
        return dict(data)
    files = {}
    for item in items:
        if item["key"] not in data:
            if optional:
                continue
            raise SourceMissing(f'{kind} "{name}" has no key "{item["key"]}"')
        files[item["path"]] = data[item["key"]]
    return files


def downward_value(pod: Obj, field_path: str, pod_ip: str, host_ip: str) -> str:
    """A downward-API fieldRef, for env vars and downwardAPI volume files."""
    meta, spec = pod["metadata"], pod.get("spec", {})
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", "default"),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }
    if field_path in simple:
        return simple[field_path]
    for key in ("labels", "annotations"):
        if field_path == f"metadata.{key}":
            return "\n".join(f'{k}="{v}"' for k, v in sorted((meta.get(key) or {}).items()))
        prefix = f"metadata.{key}['"
        if field_path.startswith(prefix) and field_path.endswith("']"):
            return str((meta.get(key) or {}).get(field_path[len(prefix):-2], ""))
    raise Unsupported(f"fieldRef {field_path!r} is not supported by this virtual kubelet")


def _downward_files(pod: Obj, items: list[Obj], pod_ip: str, host_ip: str) -> dict[str, bytes]:
    files = {}
    for item in items or []:
        if "fieldRef" not in item:
            raise Unsupported(f"downwardAPI item {item.get('path')!r}: only fieldRef is supported "
                              "(resourceFieldRef needs the container runtime's resource accounting)")
        files[item["path"]] = downward_value(pod, item["fieldRef"]["fieldPath"], pod_ip, host_ip).encode()
    return files


async def resolve_volumes(pod: Obj, fetch: Fetch, *, pod_ip: str, host_ip: str) -> ResolvedVolumes:
    """Read every ConfigMap/Secret the pod's volumes name; raise SourceMissing if one is absent."""
    namespace = pod["metadata"]["namespace"]
    out = ResolvedVolumes()
    for volume in pod.get("spec", {}).get("volumes") or []:
        name = volume["name"]
        if "persistentVolumeClaim" in volume:
            claim_name = volume["persistentVolumeClaim"]["claimName"]
            folder = await claim_folder(fetch, namespace, claim_name)
            if folder is not None:
                out.claims[claim_name] = folder
        elif "configMap" in volume:
            src = volume["configMap"]
            obj = await _get(fetch, "configmap", namespace, src["name"], bool(src.get("optional")))
            if obj is not None:
                out.config_maps[src["name"]] = obj.get("data") or {}
        elif "secret" in volume:
            src = volume["secret"]
            obj = await _get(fetch, "secret", namespace, src["secretName"], bool(src.get("optional")))
            out.files[name] = _items("secret", src["secretName"], _data("secret", obj), src.get("items"),
                                     bool(src.get("optional")))
        elif "downwardAPI" in volume:
            out.files[name] = _downward_files(pod, volume["downwardAPI"].get("items"), pod_ip, host_ip)
        elif "projected" in volume:
            files: dict[str, bytes] = {}
            for source in volume["projected"].get("sources") or []:
                if "serviceAccountToken" in source:
                    tok = source["serviceAccountToken"]
                    out.tokens.append(TokenSource(volume=name, path=tok["path"], audience=tok.get("audience"),
                                                  expiration_seconds=int(tok.get("expirationSeconds", 3600))))
                    files[tok["path"]] = b""  # written by the token manager before the start
                elif "configMap" in source or "secret" in source:
                    kind = "configMap" if "configMap" in source else "secret"
                    src = source[kind]
                    optional = bool(src.get("optional"))
                    obj = await _get(fetch, kind.lower(), namespace, src["name"], optional)
                    files.update(_items(kind.lower(), src["name"], _data(kind.lower(), obj), src.get("items"),
                                        optional))
                elif "downwardAPI" in source:
                    files.update(_downward_files(pod, source["downwardAPI"].get("items"), pod_ip, host_ip))
                else:
                    kind = next(iter(source), "?")
                    raise Unsupported(f"projected volume {name!r}: {kind} sources are not supported")
            out.files[name] = files
    return out


async def claim_folder(fetch: Fetch, namespace: str, claim: str) -> Path | None:
    """The folder of the PersistentVolume bound to the claim (`hostPath` or `local`, as the
    cluster's provisioner makes), so pods on every node share the claim's data as they
    would on network storage. None for a volume of another kind (the kubelet then keeps a
    folder of its own, `ROOT/claims/<ns>/<claim>`); a claim not bound yet keeps the pod
    waiting."""
    pvc = await _get(fetch, "persistentvolumeclaim", namespace, claim, False)
    assert pvc is not None
    volume_name = (pvc.get("spec") or {}).get("volumeName")
    if not volume_name or (pvc.get("status") or {}).get("phase") != "Bound":
        raise SourceMissing(f"waiting for PersistentVolumeClaim {claim!r} to be bound")
    pv = await _get(fetch, "persistentvolume", None, volume_name, False)
    assert pv is not None
    spec = pv.get("spec") or {}
    path = (spec.get("hostPath") or {}).get("path") or (spec.get("local") or {}).get("path")
    return Path(path) if path else None


async def resolve_env(pod: Obj, container: Obj, fetch: Fetch, *, pod_ip: str, host_ip: str) -> list[Obj]:
    """The container's env with envFrom and every valueFrom turned into literal values."""
    namespace = pod["metadata"]["namespace"]
    env: list[Obj] = []
    for source in container.get("envFrom") or []:
        kind = "configMap" if "configMapRef" in source else "secret"
        ref = source.get("configMapRef") or source.get("secretRef") or {}
        obj = await _get(fetch, kind.lower(), namespace, ref["name"], bool(ref.get("optional")))
        for key, value in _data(kind.lower(), obj).items():
            env.append({"name": source.get("prefix", "") + key, "value": value.decode(errors="replace")})
    for item in container.get("env") or []:
        if "valueFrom" not in item:
            env.append(dict(item))
            continue
        vf = item["valueFrom"]
        if "fieldRef" in vf:
            value = downward_value(pod, vf["fieldRef"]["fieldPath"], pod_ip, host_ip)
        elif "configMapKeyRef" in vf or "secretKeyRef" in vf:
            kind = "configMap" if "configMapKeyRef" in vf else "secret"
            ref = vf.get("configMapKeyRef") or vf["secretKeyRef"]
            optional = bool(ref.get("optional"))
            obj = await _get(fetch, kind.lower(), namespace, ref["name"], optional)
            data = _data(kind.lower(), obj)
            if ref["key"] not in data:
                if optional:
                    continue
                raise SourceMissing(f'{kind.lower()} "{ref["name"]}" has no key "{ref["key"]}"')
            value = data[ref["key"]].decode(errors="replace")
        else:
            raise Unsupported(f"env {item['name']}: valueFrom {sorted(vf)} is not supported by this "
                              "virtual kubelet (no resource accounting)")
        env.append({"name": item["name"], "value": value})
    return env
