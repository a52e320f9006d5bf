"""Kubeconfig files for the local control plane's users (admin, components, kubelets)."""

from __future__ import annotations

from pathlib import Path

import yaml

from .pki import CertPair

CONTEXT = "adamw-local"


def write_kubeconfig(path: Path, *, server: str, ca: Path, user: str, cert: CertPair,
                     namespace: str = "default") -> Path:
    """Write a kubeconfig that authenticates `user` with a client certificate."""
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CONTEXT, "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": {"client-certificate": str(cert.cert),
                                          "client-key": str(cert.key)}}],
        "contexts": [{"name": CONTEXT, "context": {"cluster": CONTEXT, "user": user,
                                                   "namespace": namespace}}],
        "current-context": CONTEXT,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    tmp.chmod(0o600)
    tmp.replace(path)
    return path
