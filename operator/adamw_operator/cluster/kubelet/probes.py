"""Readiness and liveness probes: httpGet (and tcpSocket) against the pod's own IP.

Timing follows the kubelet: the first probe after `initialDelaySeconds`, then every
`periodSeconds`; `failureThreshold` failures in a row flip the result to failure,
`successThreshold` successes back. `exec` and `grpc` probes are not run: a readiness
probe of those kinds counts as success once the container runs (say so in the docstring
of the package), a liveness probe of those kinds never fails.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

Obj = dict[str, Any]


def _port(port: Any, container: Mapping[str, Any]) -> int | None:
    if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    return None


def supported(probe: Mapping[str, Any] | None) -> bool:
    return bool(probe) and ("httpGet" in probe or "tcpSocket" in probe)  # type: ignore[operator]


async def probe_once(probe: Mapping[str, Any], container: Mapping[str, Any], pod_ip: str) -> bool:
    timeout = float(probe.get("timeoutSeconds", 1))
    if "httpGet" in probe:
        get = probe["httpGet"]
        port = _port(get.get("port"), container)
        if port is None:
            return False
        scheme = (get.get("scheme") or "HTTP").lower()
        host = get.get("host") or pod_ip
        path = get.get("path") or "/"
        headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
        headers.setdefault("User-Agent", "kube-probe/1.37")
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False, force_close=True)) as s, \
                    s.get(f"{scheme}://{host}:{port}{path}", headers=headers, allow_redirects=False,
                          timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                return 200 <= resp.status < 400
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False
    if "tcpSocket" in probe:
        port = _port(probe["tcpSocket"].get("port"), container)
        if port is None:
            return False
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(probe["tcpSocket"].get("host") or pod_ip, port), timeout)
        except (TimeoutError, OSError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True
    return True


async def run_probe(probe: Mapping[str, Any], container: Mapping[str, Any], pod_ip: str,
                    on_change: Callable[[bool], None], *, initial: bool, max_period: float | None = None) -> None:
    """Probe forever, calling `on_change(result)` whenever the thresholded result flips."""
    period = float(probe.get("periodSeconds", 10))
    if max_period is not None:
        period = min(period, max_period)
    success_threshold = int(probe.get("successThreshold", 1))
    failure_threshold = int(probe.get("failureThreshold", 3))
    result, successes, failures = initial, 0, 0
    await asyncio.sleep(float(probe.get("initialDelaySeconds", 0)))
    while True:
        ok = await probe_once(probe, container, pod_ip)
        successes, failures = (successes + 1, 0) if ok else (0, failures + 1)
        if not result and successes >= success_threshold:
            result = True
            on_change(True)
        elif result and failures >= failure_threshold:
            result = False
            on_change(False)
        await asyncio.sleep(period)
