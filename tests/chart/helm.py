"""Runs the real helm binary on the chart and parses what it renders; checks manifests
with the real kubernetes-validate."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "adamw-operator"
KUBE_VERSIONS = ["1.28.0", "1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0"]
MONITORING_APIS = [
    "monitoring.coreos.com/v1",
    "monitoring.coreos.com/v1/ServiceMonitor",
    "monitoring.coreos.com/v1/PodMonitor",
    "monitoring.coreos.com/v1/PrometheusRule",
]
# Every feature on: namespaced RBAC, peering with 2 replicas, all monitoring objects.
ALL_ON = [
    "--set", "replicaCount=2",
    "--set", "peering.enabled=true",
    "--set", "watch.namespaces={team-a,team-b}",
    "--set", "serviceMonitor.enabled=true",
    "--set", "podMonitor.enabled=true",
    "--set", "prometheusRule.enabled=true",
    "--set", "grafanaDashboard.enabled=true",
    "--set", "prometheusRule.alertLabels.team=ml-platform",
    "--set", "serviceMonitor.labels.release=kube-prometheus-stack",
    "--set", "imagePullSecrets[0].name=regcred",
    "--set", "priorityClassName=system-cluster-critical",
]


def helm_bin() -> str:
    local = ROOT / ".tools" / "helm" / "helm"
    found = str(local) if local.exists() else shutil.which("helm")
    if not found:
        raise RuntimeError("helm not found: run `make tools` (scripts/install_tools.sh)")
    return found


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([helm_bin(), *args], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def template_text(*args: str, kube_version: str = "1.30.0", apis: list[str] | None = None,
                  namespace: str = "adamw-system") -> str:
    api_args = [a for api in (apis or []) for a in ("--api-versions", api)]
    return helm("template", "rel", str(CHART), "--namespace", namespace, "--include-crds",
                "--kube-version", kube_version, *api_args, *args).stdout


def render(*args: str, **kw: Any) -> list[dict[str, Any]]:
    """Rendered objects (empty documents dropped)."""
    return [d for d in yaml.safe_load_all(template_text(*args, **kw)) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def kubernetes_validate(manifests: str, kube_version: str = "1.30.0") -> subprocess.CompletedProcess[str]:
    """`kubernetes-validate --strict` on a YAML stream, against that Kubernetes version's schemas."""
    return subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "-k", kube_version, "-"],
                          input=manifests, capture_output=True, text=True, timeout=120)
