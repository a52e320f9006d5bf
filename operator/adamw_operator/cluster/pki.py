"""Certificates and keys for a local control plane, made with the `openssl` command.

What kubeadm's `certs` phase makes, reduced to one machine: a cluster CA, the API
server's serving certificate (for 127.0.0.1, localhost and the in-cluster names), client
certificates that the API server maps to users and groups (CN = user, O = group), and
the service-account signing key pair. Nothing here is secret beyond this machine; the
folder is `.cluster/pki` and `make cluster-down` removes it.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

DAYS = 365


class PKIError(RuntimeError):
    """openssl failed: the message names the step and openssl's own words."""


def _openssl(step: str, *args: str, cwd: Path) -> None:
    try:
        subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise PKIError(f"{step}: the 'openssl' command is missing (apt-get install openssl)") from e
    except subprocess.CalledProcessError as e:
        raise PKIError(f"{step}: openssl {' '.join(args[:2])} failed: {e.stderr.strip()}") from e


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


class PKI:
    """A CA under `root` that issues serving and client certificates (idempotent)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = CertPair(root / "ca.crt", root / "ca.key")
        self.sa_key = root / "sa.key"
        self.sa_pub = root / "sa.pub"

    def ensure_ca(self) -> CertPair:
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.ca.cert.exists():
            _openssl("make the cluster CA", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                     "-keyout", self.ca.key.name, "-out", self.ca.cert.name, "-days", str(DAYS * 10),
                     "-subj", "/CN=adamw-local-ca", "-addext", "basicConstraints=critical,CA:TRUE",
                     "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
                     cwd=self.root)
        if not self.sa_key.exists():
            _openssl("make the service-account signing key", "genrsa", "-out", self.sa_key.name,
                     "2048", cwd=self.root)
            _openssl("derive the service-account public key", "rsa", "-in", self.sa_key.name,
                     "-pubout", "-out", self.sa_pub.name, cwd=self.root)
        return self.ca

    def issue(self, name: str, *, common_name: str, organizations: tuple[str, ...] = (),
              dns: tuple[str, ...] = (), ips: tuple[str, ...] = (), server: bool = False) -> CertPair:
        """A certificate signed by the CA; reused when it already exists."""
        self.ensure_ca()
        pair = CertPair(self.root / f"{name}.crt", self.root / f"{name}.key")
        if pair.cert.exists() and pair.key.exists():
            return pair
        subject = "".join(f"/O={o}" for o in organizations) + f"/CN={common_name}"
        ext = self.root / f"{name}.ext"
        lines = ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
                 f"extendedKeyUsage={'serverAuth,clientAuth' if server else 'clientAuth'}"]
        sans = [f"DNS:{d}" for d in dns] + [f"IP:{i}" for i in ips]
        if sans:
            lines.append("subjectAltName=" + ",".join(sans))
        ext.write_text("\n".join(lines) + "\n")
        _openssl(f"make the key of {name}", "req", "-newkey", "rsa:2048", "-nodes",
                 "-keyout", pair.key.name, "-out", f"{name}.csr", "-subj", subject, cwd=self.root)
        _openssl(f"sign the certificate of {name}", "x509", "-req", "-in", f"{name}.csr",
                 "-CA", self.ca.cert.name, "-CAkey", self.ca.key.name, "-CAcreateserial",
                 "-out", pair.cert.name, "-days", str(DAYS), "-extfile", ext.name, cwd=self.root)
        (self.root / f"{name}.csr").unlink(missing_ok=True)
        ext.unlink(missing_ok=True)
        return pair

    def client(self, name: str, user: str, *groups: str) -> CertPair:
        """A client certificate the API server reads as `user` in `groups`."""
        return self.issue(name, common_name=user, organizations=groups)
