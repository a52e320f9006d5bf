"""Where the upstream Kubernetes binaries are, building them when they are missing."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

# Kept in step with scripts/install_kubernetes.sh, which builds them.
KUBE_VERSION = "v1.37.2"
NEEDED = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
REPO_ROOT = Path(__file__).resolve().parents[3]
INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install_kubernetes.sh"


def default_bin_dir() -> Path:
    cache = os.environ.get("ADAMW_KUBE_CACHE") or str(Path.home() / ".cache" / "adamw-operator")
    return Path(cache) / "bin"


def find_binaries(bin_dir: Path | None = None, *, build: bool = True) -> dict[str, Path]:
    """Paths of the control-plane binaries; runs scripts/install_kubernetes.sh if any is missing."""
    from .control_plane import ClusterError

    bin_dir = bin_dir or default_bin_dir()
    missing = [n for n in NEEDED if not os.access(bin_dir / n, os.X_OK)]
    if missing and build:
        if not INSTALL_SCRIPT.exists():
            raise ClusterError(f"missing {', '.join(missing)} in {bin_dir}, and no {INSTALL_SCRIPT} "
                               "to build them: run it from a checkout, or set ADAMW_KUBE_CACHE")
        result = subprocess.run(["bash", str(INSTALL_SCRIPT)], cwd=REPO_ROOT)
        if result.returncode != 0:
            raise ClusterError("building the Kubernetes binaries failed (the message above names the "
                               f"step); retry with: bash {INSTALL_SCRIPT.relative_to(REPO_ROOT)}")
        missing = [n for n in NEEDED if not os.access(bin_dir / n, os.X_OK)]
    if missing:
        raise ClusterError(f"missing {', '.join(missing)} in {bin_dir}; build them with: "
                           "bash scripts/install_kubernetes.sh")
    return {n: bin_dir / n for n in NEEDED}
