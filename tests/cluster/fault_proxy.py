"""A fault-injecting reverse proxy between the operator and the real API server.

The real server produces conflicts, 5xx answers and cut watches only when it feels like
it; this proxy produces them on demand. Everything else passes through unchanged, the
client's own credentials (the ServiceAccount token) included, so the server still
authenticates and authorizes every request as the operator's ServiceAccount.

    with FaultProxy(cluster.server, ca_file) as proxy:        # http://127.0.0.1:PORT
        proxy.fail("PATCH", r"/adamwtrainingjobs/job1/status$", 409, times=2)
        proxy.drop_watches()                                 # cut every open watch stream
        proxy.pause()/resume()                               # answer nothing (API server down)

It runs its own event loop in a thread, so tests drive it from plain (sync) code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import ssl
import threading
from dataclasses import dataclass
from typing import Any

import aiohttp
from adamw_operator.cluster.control_plane import free_port
from aiohttp import web

_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
        "proxy-authorization", "proxy-authenticate", "host", "content-length"}


@dataclass
class Fault:
    method: str
    path: re.Pattern[str]
    status: int
    times: int
    fired: int = 0

    def matches(self, method: str, path: str) -> bool:
        return self.fired < self.times and self.method in ("*", method) and bool(self.path.search(path))


class FaultProxy:
    def __init__(self, upstream: str, ca_file: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.ca_file = ca_file
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str]] = []
        self._watches: set[web.StreamResponse] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._paused = threading.Event()
        self._lock = threading.Lock()

    # ---- control (thread-safe) ----------------------------------------------------------

    def fail(self, method: str, path: str, status: int, times: int = 1) -> Fault:
        """Answer the next `times` requests matching `method` ("*": any) and the path regex."""
        fault = Fault(method.upper(), re.compile(path), status, times)
        with self._lock:
            self.faults.append(fault)
        return fault

    def drop_watches(self) -> int:
        """Cut every open watch mid-stream, as a restarting API server does; returns how many."""
        return asyncio.run_coroutine_threadsafe(self._drop(), self._loop).result(10)

    def pause(self) -> None:
        """Refuse connections' requests with 503 until resume(), as while the server restarts."""
        self._paused.set()
        self.drop_watches()

    def resume(self) -> None:
        self._paused.clear()

    # ---- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _start(self) -> None:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx),
                                              timeout=aiohttp.ClientTimeout(total=None, sock_connect=5))
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _stop(self) -> None:
        await self._drop()
        await self._runner.cleanup()
        await self._session.close()

    async def _drop(self) -> int:
        dropped = 0
        for response in list(self._watches):
            with contextlib.suppress(Exception):
                transport = response._req.transport if response._req else None  # noqa: SLF001
                if transport is not None:
                    transport.close()
                    dropped += 1
        self._watches.clear()
        return dropped

    # ---- the proxy --------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        method, path = request.method, request.path
        self.requests.append((method, request.path_qs))
        if self._paused.is_set():
            return self._status(503, "ServiceUnavailable", "the API server is restarting (fault proxy)")
        with self._lock:
            fault = next((f for f in self.faults if f.matches(method, path)), None)
            if fault is not None:
                fault.fired += 1
        if fault is not None:
            reason = {409: "Conflict", 500: "InternalError", 429: "TooManyRequests"}.get(fault.status, "Unknown")
            return self._status(fault.status, reason, f"injected by the fault proxy ({method} {path})")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        body = await request.read()
        async with self._session.request(method, self.upstream + request.path_qs, headers=headers,
                                         data=body or None, allow_redirects=False) as upstream:
            out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP}
            watching = request.query.get("watch") in ("true", "1")
            if not watching:
                return web.Response(status=upstream.status, headers=out_headers, body=await upstream.read())
            response = web.StreamResponse(status=upstream.status, headers=out_headers)
            await response.prepare(request)
            self._watches.add(response)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            except (ConnectionResetError, aiohttp.ClientError, asyncio.CancelledError, RuntimeError):
                pass
            finally:
                self._watches.discard(response)
            return response

    @staticmethod
    def _status(code: int, reason: str, message: str) -> web.Response:
        body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                "message": message, "reason": reason, "code": code}
        return web.Response(status=code, text=json.dumps(body), content_type="application/json")
