"""The kubelet's HTTPS endpoint, reduced to what `kubectl logs` needs.

kube-apiserver proxies `pods/log` to `https://<node InternalIP>:<daemonEndpoints port>
/containerLogs/<ns>/<pod>/<container>`. This server answers that from the container's
log file (`tailLines`, `limitBytes`, `follow`); exec, attach, port-forward and metrics
are not served. Its serving certificate is self-signed (the API server does not verify
kubelets' certificates unless given `--kubelet-certificate-authority`); clients must
present a certificate signed by the cluster CA (the API server's kubelet-client
certificate), but requests are not authorized further (a real kubelet asks the API
server with a SubjectAccessReview).
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .kubelet import Kubelet


def serving_certificate(directory: Path, node: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (made once per kubelet root)."""
    cert, key = directory / "kubelet.crt", directory / "kubelet.key"
    if not (cert.exists() and key.exists()):
        directory.mkdir(parents=True, exist_ok=True)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                        "-out", str(cert), "-days", "365", "-subj", f"/CN={node}",
                        "-addext", f"subjectAltName=IP:127.0.0.1,DNS:{node}"],
                       check=True, capture_output=True)
    return cert, key


async def start(kubelet: Kubelet) -> tuple[web.AppRunner, int]:
    cert, key = serving_certificate(kubelet.root / "pki", kubelet.node)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(key))
    if kubelet.api.config.ca_file:
        ctx.load_verify_locations(kubelet.api.config.ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED

    async def logs(request: web.Request) -> web.StreamResponse:
        ns, name = request.match_info["namespace"], request.match_info["pod"]
        worker = next((w for w in kubelet.workers.values()
                       if w.namespace == ns and w.name == name and not w.removed), None)
        if worker is None:
            raise web.HTTPNotFound(text=f"pod {ns}/{name} is not on node {kubelet.node}")
        path = Path(worker.summary()["log"])
        data = path.read_bytes() if path.exists() else b""
        if (tail := request.query.get("tailLines")) is not None:
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-int(tail):]) if int(tail) > 0 else b""
        if (limit := request.query.get("limitBytes")) is not None:
            data = data[:int(limit)]
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        await response.write(data)
        if request.query.get("follow") in ("true", "1"):
            offset = path.stat().st_size if path.exists() else 0
            while worker.process is not None and worker.process.running and not worker.removed:
                await asyncio.sleep(0.2)
                if path.exists() and path.stat().st_size > offset:
                    with path.open("rb") as f:
                        f.seek(offset)
                        chunk = f.read()
                    offset += len(chunk)
                    await response.write(chunk)
        await response.write_eof()
        return response

    app = web.Application()
    app.add_routes([web.get("/containerLogs/{namespace}/{pod}/{container}", logs),
                    web.get("/healthz", lambda _: web.Response(text="ok"))])
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    return runner, int(runner.addresses[0][1])
