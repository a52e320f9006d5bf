"""A small asyncio client for the Kubernetes API, authenticated as a kubeconfig's user.

The kubelet needs only a dozen calls (get, create, patch, delete, list, watch), so this is
aiohttp over HTTPS with the kubeconfig's client certificate (or bearer token), not the
`kubernetes` package's thread-pool client.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import yaml

Obj = dict[str, Any]

STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"


class ApiError(Exception):
    """The API server answered with an error Status."""

    def __init__(self, status: int, body: Any, method: str, path: str) -> None:
        self.status = status
        self.body = body if isinstance(body, dict) else {"message": str(body)}
        self.reason = self.body.get("reason", "")
        super().__init__(f"{method} {path}: {status} {self.reason}: {self.body.get('message', '')}")


@dataclass(frozen=True)
class KubeConfig:
    """The server and credentials of a kubeconfig's current context."""

    server: str
    ca_file: str | None
    cert_file: str | None
    key_file: str | None
    token: str | None = None

    @property
    def port(self) -> int:
        parts = urlsplit(self.server)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def host(self) -> str:
        return urlsplit(self.server).hostname or "127.0.0.1"

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file and self.key_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def load_kubeconfig(path: Path, scratch: Path | None = None) -> KubeConfig:
    """Read the current context; inline `*-data` is written to files under `scratch`."""
    doc = yaml.safe_load(Path(path).read_text())
    base = Path(path).resolve().parent
    current = doc.get("current-context")
    context = next((c["context"] for c in doc.get("contexts", []) if c["name"] == current),
                   (doc.get("contexts") or [{"context": {}}])[0]["context"])
    cluster = next(c["cluster"] for c in doc["clusters"] if c["name"] == context.get("cluster", c["name"]))
    users = doc.get("users") or []
    user = next((u["user"] for u in users if u["name"] == context.get("user")), users[0]["user"] if users else {})
    scratch_dir = Path(scratch or tempfile.mkdtemp(prefix="kubelet-kubeconfig-"))

    def file_of(section: Mapping[str, Any], key: str) -> str | None:
        if section.get(f"{key}-data"):
            scratch_dir.mkdir(parents=True, exist_ok=True)
            target = scratch_dir / f"{Path(path).stem}-{key}"
            target.write_bytes(base64.b64decode(section[f"{key}-data"]))
            target.chmod(0o600)
            return str(target)
        if section.get(key):
            return str(base / section[key])
        return None

    return KubeConfig(server=cluster["server"].rstrip("/"), ca_file=file_of(cluster, "certificate-authority"),
                      cert_file=file_of(user, "client-certificate"), key_file=file_of(user, "client-key"),
                      token=user.get("token"))


class ApiClient:
    """JSON requests to one API server; `watch()` streams events."""

    def __init__(self, config: KubeConfig, *, timeout: float = 30.0) -> None:
        self.config = config
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            headers = {"Accept": "application/json", "User-Agent": "adamw-virtual-kubelet/0.1"}
            if self.config.token:
                headers["Authorization"] = f"Bearer {self.config.token}"
            self._session = aiohttp.ClientSession(
                base_url=self.config.server, headers=headers,
                connector=aiohttp.TCPConnector(ssl=self.config.ssl_context(), limit=32))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                      body: Any = None, content_type: str = "application/json") -> Obj:
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if data is not None else None
        async with self.session.request(method, path, params=_params(params), data=data, headers=headers,
                                        timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
            text = await resp.text()
            try:
                payload = json.loads(text) if text else {}
            except json.JSONDecodeError:
                payload = {"message": text}
            if resp.status >= 400:
                raise ApiError(resp.status, payload, method, path)
            return payload

    async def get(self, path: str, **params: Any) -> Obj:
        return await self.request("GET", path, params=params)

    async def get_or_none(self, path: str, **params: Any) -> Obj | None:
        try:
            return await self.get(path, **params)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    async def create(self, path: str, body: Obj) -> Obj:
        return await self.request("POST", path, body=body)

    async def patch(self, path: str, body: Obj, *, kind: str = STRATEGIC) -> Obj:
        return await self.request("PATCH", path, body=body, content_type=kind)

    async def replace(self, path: str, body: Obj) -> Obj:
        return await self.request("PUT", path, body=body)

    async def delete(self, path: str, body: Obj | None = None) -> Obj:
        return await self.request("DELETE", path, body=body)

    async def watch(self, path: str, *, resource_version: str, timeout_seconds: int = 300,
                    **params: Any) -> AsyncIterator[Obj]:
        """Events after `resource_version` until the server ends the stream."""
        query = {**params, "watch": "true", "resourceVersion": resource_version,
                 "allowWatchBookmarks": "true", "timeoutSeconds": str(timeout_seconds)}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=timeout_seconds + 30)
        async with self.session.get(path, params=_params(query), timeout=timeout) as resp:
            if resp.status >= 400:
                raise ApiError(resp.status, await _json_or_text(resp), "WATCH", path)
            while True:
                line = await resp.content.readline()
                if not line:
                    return
                if line.strip():
                    yield json.loads(line)


def _params(params: Mapping[str, Any] | None) -> dict[str, str] | None:
    if not params:
        return None
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in params.items() if v is not None}


async def _json_or_text(resp: aiohttp.ClientResponse) -> Any:
    text = await resp.text()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {"message": text}


async def retrying(what: str, call: Any, *, attempts: int = 5, delay: float = 0.2) -> Any:
    """Retry transient failures (connection errors, 5xx, 429) with a short backoff."""
    for attempt in range(attempts):
        try:
            return await call()
        except (TimeoutError, aiohttp.ClientError, ApiError) as e:
            transient = not isinstance(e, ApiError) or e.status >= 500 or e.status == 429
            if not transient or attempt == attempts - 1:
                raise
            await asyncio.sleep(delay * 2 ** attempt)
    raise AssertionError(what)  # unreachable
