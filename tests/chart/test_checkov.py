"""The third-party scanner checkov (PyPI, `make tools` installs it into .tools/checkov-venv)
on the worker pods the operator renders, with and without `spec.networkPolicy.enabled`.

checkov's graph check CKV2_K8S_6 ("Minimize the admission of pods which lack an associated
NetworkPolicy") applies to plain `Pod` manifests: it links a Pod to every NetworkPolicy whose
`podSelector.matchLabels` are a subset of the Pod's labels (or whose selector is empty). So
it flags the workers of a job without the policy and passes those of a job with it. One
checkov run (about 6 s) scans both jobs' pods; the jobs have different names, so the
guarded job's policy cannot select the other job's pods.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from adamw_operator.api.spec import parse_spec
from adamw_operator.builders.configmap import build_configmap
from adamw_operator.builders.network_policy import build_network_policy
from adamw_operator.builders.pods import build_worker_pod

from tests.operator.jobs import job_manifest

ROOT = Path(__file__).resolve().parents[2]
NO_NETWORK_POLICY = "CKV2_K8S_6"
# The hardening the pod builder promises, as checkov names it: not privileged, no host
# PID/IPC/network, no privilege escalation, read-only root filesystem, non-root, no added
# or NET_RAW/SYS_ADMIN capabilities (all dropped), security contexts, RuntimeDefault
# seccomp, no service-account token.
HARDENED = {"CKV_K8S_16", "CKV_K8S_17", "CKV_K8S_18", "CKV_K8S_19", "CKV_K8S_20", "CKV_K8S_22",
            "CKV_K8S_23", "CKV_K8S_25", "CKV_K8S_28", "CKV_K8S_29", "CKV_K8S_30", "CKV_K8S_31",
            "CKV_K8S_37", "CKV_K8S_38", "CKV_K8S_39"}
# What checkov still reports on a job with the policy, each a decision, not an oversight.
ACCEPTED = {
    "CKV_K8S_8": "no liveness probe: the operator detects hangs from rank 0's step progress",
    "CKV_K8S_9": "no readiness probe: workers serve no traffic; rank 0 must resolve before any is ready",
    "CKV_K8S_10": "CPU requests come from the user's spec.resources (this job sets none)",
    "CKV_K8S_11": "CPU limits come from the user's spec.resources",
    "CKV_K8S_12": "memory requests come from the user's spec.resources",
    "CKV_K8S_13": "memory limits come from the user's spec.resources",
    "CKV_K8S_15": "imagePullPolicy is the user's spec.imagePullPolicy",
    "CKV_K8S_43": "pinning the image by digest is the user's spec.image",
    "CKV_K8S_40": "the pods run as UID 1000, below checkov's 10000 (the images' own user is 10001)",
}


def checkov_bin() -> str | None:
    local = ROOT / ".tools" / "checkov-venv" / "bin" / "checkov"
    return str(local) if local.exists() else shutil.which("checkov")


def _pods(name: str, network_policy: bool) -> list[dict]:
    spec = parse_spec(job_manifest(name, networkPolicy={
        "enabled": network_policy, "metricsFromNamespaces": ["monitoring"]})["spec"])
    meta = name, "ml", f"uid-{name}"
    config = build_configmap(*meta, spec)["metadata"]["name"]
    docs = [build_worker_pod(*meta, spec, rank=r, attempt=0, restart_count=0, config_map=config)
            for r in range(spec.replicas)]
    if network_policy:
        docs.append(build_network_policy(*meta, spec, operator_namespace="adamw-system"))
    return docs


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, set[str]]]:
    """{"passed"|"failed": {check id: resources}} from one checkov run over both jobs."""
    binary = checkov_bin()
    if binary is None:
        pytest.skip("checkov is not installed: run `make tools` (scripts/install_tools.sh puts it "
                    "in .tools/checkov-venv)")
    folder = tmp_path_factory.mktemp("checkov")
    (folder / "workers.yaml").write_text(yaml.safe_dump_all(_pods("open", False) + _pods("guarded", True)))
    # --skip-download: no call to Prisma Cloud for guideline links (and no network needed).
    proc = subprocess.run([binary, "-d", str(folder), "--framework", "kubernetes", "--skip-download",
                           "-o", "json", "--compact"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]  # 1: some check failed
    report = json.loads(proc.stdout)
    out: dict[str, dict[str, set[str]]] = {"passed": {}, "failed": {}}
    for outcome in out:
        for check in report["results"][f"{outcome}_checks"]:
            out[outcome].setdefault(check["check_id"], set()).add(check["resource"])
    return out


OPEN = {"Pod.ml.open-worker-0", "Pod.ml.open-worker-1"}
GUARDED = {"Pod.ml.guarded-worker-0", "Pod.ml.guarded-worker-1"}


def test_checkov_flags_worker_pods_without_a_network_policy(results):
    assert results["failed"].get(NO_NETWORK_POLICY) == OPEN
    assert results["passed"].get(NO_NETWORK_POLICY) == GUARDED


def test_checkov_finds_the_worker_pods_hardened(results):
    for check in sorted(HARDENED):
        assert results["passed"].get(check, set()) >= OPEN | GUARDED, check
        assert not results["failed"].get(check), (check, results["failed"][check])


def test_checkov_finds_nothing_on_a_guarded_job_but_the_accepted_findings(results):
    found = {check for check, resources in results["failed"].items() if resources & GUARDED}
    assert found <= ACCEPTED.keys(), {c: sorted(results["failed"][c]) for c in found - ACCEPTED.keys()}
