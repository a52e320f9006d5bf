"""A small asyncio Kubernetes API client (aiohttp) for the operator's own reads and writes.

Kopf watches; this client gets, lists, creates, deletes and patches job status. Credentials come from the
in-cluster service account or a kubeconfig, through the `kubernetes` package's loaders.
Conflicts and 404s on delete are not errors to an idempotent controller; 5xx and 429 are
retried a few times with a short backoff before giving up to the caller.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from pathlib import Path
from typing import Any

import aiohttp

from .api.constants import GROUP, PLURAL, VERSION

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class ApiError(Exception):
    def __init__(self, status: int, body: str, what: str):
        self.status = status
        self.body = body
        try:
            self.message = json.loads(body).get("message") or body
        except (ValueError, AttributeError):
            self.message = body
        super().__init__(f"{what}: HTTP {status}: {self.message}"[:2000])


def _connection_from_kubeconfig() -> tuple[str, dict[str, str], ssl.SSLContext | bool]:
    from kubernetes import client, config  # lazy: only the real process needs it

    cfg = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=cfg)
    except config.ConfigException:
        config.load_kube_config(client_configuration=cfg)
    headers = {}
    token = cfg.api_key.get("authorization") or cfg.api_key.get("BearerToken")
    if token:
        prefix = cfg.api_key_prefix.get("authorization", "")
        headers["Authorization"] = f"{prefix} {token}".strip() if not token.startswith("Bearer") else token
    ssl_ctx: ssl.SSLContext | bool = False
    if cfg.host.startswith("https"):
        ssl_ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert) if cfg.ssl_ca_cert else ssl.create_default_context()
        if cfg.cert_file and cfg.key_file:
            ssl_ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
        if not cfg.verify_ssl:
            ssl_ctx.check_hostname = False
            ssl_ctx.verify_mode = ssl.CERT_NONE
    return cfg.host.rstrip("/"), headers, ssl_ctx


SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def own_namespace() -> str | None:
    """The namespace the operator runs in (its ServiceAccount's); None outside a pod."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or None
    except OSError:
        return None


class KubeClient:
    def __init__(self, server: str | None = None, headers: dict[str, str] | None = None,
                 ssl_ctx: ssl.SSLContext | bool = False, retries: int = 4):
        # From the kubeconfig/service account: credentials can be reloaded when they expire
        # (projected service-account tokens rotate hourly; exec plugins mint short tokens).
        self._reloadable = server is None
        if server is None:
            server, headers, ssl_ctx = _connection_from_kubeconfig()
        self.server = server.rstrip("/")
        self.headers = headers or {}
        self.ssl = ssl_ctx
        self.retries = retries
        self._session: aiohttp.ClientSession | None = None
        self.own_namespace = own_namespace()

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self.ssl, limit=64),
                timeout=aiohttp.ClientTimeout(total=30),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(self, method: str, path: str, body: Any = None,
                      content_type: str = "application/json", params: dict[str, str] | None = None) -> Any:
        session = await self.session()
        data = json.dumps(body) if body is not None else None
        content = {"Content-Type": content_type} if body is not None else {}
        delay = 0.05
        reloaded = False
        for attempt in range(self.retries + 1):
            try:
                async with session.request(method, self.server + path, data=data,
                                           headers={**self.headers, **content}, params=params) as resp:
                    text = await resp.text()
                    if resp.status < 300:
                        return json.loads(text) if text else None
                    if resp.status == 401 and self._reloadable and not reloaded:
                        reloaded = True  # the token expired: read it again, retry once
                        _, self.headers, _ = _connection_from_kubeconfig()
                        continue
                    if resp.status not in RETRY_STATUSES or attempt == self.retries:
                        raise ApiError(resp.status, text, f"{method} {path}")
            except (TimeoutError, aiohttp.ClientConnectionError):
                if attempt == self.retries:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
        raise AssertionError("unreachable")

    # Paths -----------------------------------------------------------------------
    @staticmethod
    def job_path(namespace: str, name: str | None = None) -> str:
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
        return f"{path}/{name}" if name else path

    @staticmethod
    def core_path(namespace: str, plural: str, name: str | None = None) -> str:
        path = f"/api/v1/namespaces/{namespace}/{plural}"
        return f"{path}/{name}" if name else path

    # Operations the operator uses (see RBAC.md) ------------------------------------
    async def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.request("GET", self.job_path(namespace, name))
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    async def patch_job_status(self, namespace: str, name: str, status: dict[str, Any],
                               resource_version: str | None = None) -> dict[str, Any]:
        """Merge-patch the status; with `resource_version`, only if nobody wrote since (else 409)."""
        body: dict[str, Any] = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        return await self.request(
            "PATCH", self.job_path(namespace, name) + "/status", body,
            content_type="application/merge-patch+json",
        )

    async def delete_job(self, namespace: str, name: str) -> None:
        await self.delete(self.job_path(namespace, name), propagation="Background")

    async def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        result = await self.request("GET", self.core_path(namespace, "pods"),
                                    params={"labelSelector": label_selector})
        return list((result or {}).get("items") or [])

    async def create(self, namespace: str, plural: str, obj: dict[str, Any]) -> dict[str, Any] | None:
        """Create; an existing object of that name is fine (returns None).

        The operator never patches or updates what it created: ConfigMaps are immutable and
        named by their content (`builders.configmap`), Services and NetworkPolicies are
        created once.
        """
        try:
            return await self.request("POST", self.core_path(namespace, plural), obj)
        except ApiError as err:
            if err.status == 409:
                return None
            raise

    async def create_network_policy(self, namespace: str, obj: dict[str, Any]) -> dict[str, Any] | None:
        """Create a NetworkPolicy; an existing one of that name is left alone (None)."""
        try:
            return await self.request(
                "POST", f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies", obj)
        except ApiError as err:
            if err.status == 409:
                return None
            raise

    async def delete(self, path: str, propagation: str | None = None) -> None:
        body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if propagation:
            body["propagationPolicy"] = propagation
        try:
            await self.request("DELETE", path, body)
        except ApiError as err:
            if err.status != 404:
                raise

    async def delete_pod(self, namespace: str, name: str) -> None:
        await self.delete(self.core_path(namespace, "pods", name))
