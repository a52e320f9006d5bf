"""Cluster DNS, the way CoreDNS answers it, without EndpointSlices.

CoreDNS answers `<hostname>.<subdomain>.<ns>.svc.cluster.local` from the EndpointSlices
of the Service named `<subdomain>`, which the endpoint-slice controller fills from the
pods the Service selects. The real API server refuses loopback addresses in
EndpointSlices (`ValidateEndpointIP`: "may not be in the loopback range"), and every pod
IP here is a loopback address, so those slices stay empty. This resolver computes what
they would hold: the Service (read from the API) plus the pods its selector matches
(their `podIP` from the API, or this kubelet's own allocation for its pods), ready pods
only unless the Service has `publishNotReadyAddresses`. A headless Service's own name
`<service>.<ns>.svc` resolves to the first such pod. A ClusterIP Service's virtual IP is
kube-proxy's work and is not emulated (the name does not resolve).

The names are substituted in the pod's env values, args and ConfigMap files before the
process starts (there is no resolver inside the "container"); a pod whose env names one
that does not resolve yet waits in ContainerCreating, as a trainer would retry DNS.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

Obj = dict[str, Any]

CLUSTER_NAME = re.compile(
    r"(?<![\w.-])([a-z0-9-]+(?:\.[a-z0-9-]+){1,2})\.svc(?:\.cluster\.local)?(?![\w-]|\.[\w-])")


def names_in(texts: Iterable[str]) -> list[str]:
    """Cluster DNS names (`a.b.ns.svc[.cluster.local]`, `svc.ns.svc...`) mentioned in texts."""
    found: list[str] = []
    for text in texts:
        for m in CLUSTER_NAME.finditer(text):
            if m.group(0) not in found:
                found.append(m.group(0))
    return found


def selector_matches(selector: Mapping[str, str] | None, labels: Mapping[str, str] | None) -> bool:
    if not selector:
        return False  # a Service without a selector has hand-made endpoints, none here
    labels = labels or {}
    return all(labels.get(k) == v for k, v in selector.items())


def _ready(pod: Obj) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in pod.get("status", {}).get("conditions") or [])


PodLister = Callable[[str, Mapping[str, str]], Awaitable[list[Obj]]]  # (namespace, selector) -> pods
ServiceGetter = Callable[[str, str], Awaitable[Obj | None]]  # (namespace, name) -> Service


async def resolve(name: str, *, get_service: ServiceGetter, list_pods: PodLister,
                  own_ips: Mapping[str, str]) -> str | None:
    """The IP `name` resolves to now, or None. `own_ips`: pod uid -> IP for this kubelet's pods."""
    base = name.removesuffix(".cluster.local").removesuffix(".svc")
    parts = base.split(".")
    hostname, service_name, namespace = (parts if len(parts) == 3 else (None, *parts))
    service = await get_service(namespace, service_name)
    if service is None:
        return None
    spec = service.get("spec", {})
    headless = spec.get("clusterIP") == "None"
    if hostname is None and not headless:
        return None  # a ClusterIP: kube-proxy's virtual IP, not emulated
    publish_not_ready = bool(spec.get("publishNotReadyAddresses"))
    candidates = []
    for pod in await list_pods(namespace, spec.get("selector") or {}):
        meta, pod_spec = pod["metadata"], pod.get("spec", {})
        if meta.get("deletionTimestamp") or not selector_matches(spec.get("selector"), meta.get("labels")):
            continue
        if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            continue
        ip = own_ips.get(meta["uid"]) or pod.get("status", {}).get("podIP")
        if not ip or not (publish_not_ready or _ready(pod)):
            continue
        if hostname is not None and not (pod_spec.get("hostname") == hostname
                                         and pod_spec.get("subdomain") == service_name):
            continue
        candidates.append((meta["name"], ip))
    return min(candidates)[1] if candidates else None
