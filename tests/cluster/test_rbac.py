"""The chart's RBAC, enforced by the real API server (authorization mode Node,RBAC).

The operator runs as the chart's ServiceAccount in every cluster test, so a verb the chart
forgot fails those tests; these check the grant itself: everything RBAC.md says the
operator calls is allowed, and nothing else a careless chart might grant is.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.cluster.harness import Cluster, KubectlError

pytestmark = pytest.mark.cluster
RBAC_MD = Path(__file__).resolve().parents[2] / "operator" / "adamw_operator" / "RBAC.md"
SA = "system:serviceaccount:adamw-system:adamw-operator"


def needed() -> list[tuple[str, str, str]]:
    """(verb, resource[.group][/subresource], why) for every unconditional row of RBAC.md."""
    rows = []
    for line in RBAC_MD.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[1].startswith("`"):
            continue
        group, resource, verbs, why = cells
        if why.startswith("only with"):
            continue  # peering and namespace-list rows: not in the default (cluster-wide) install
        group = "" if group.startswith('`""`') else group.strip("`")  # `""` (core)
        base, _, sub = resource.strip("`").partition("/")
        name = (f"{base}.{group}" if group else base) + (f"/{sub}" if sub else "")
        rows.extend((verb, name, why) for verb in re.findall(r"`(\w+)`", verbs))
    return rows


def can_i(cluster: Cluster, verb: str, resource: str, namespace: str = "default") -> bool:
    resource, _, sub = resource.partition("/")
    args = ["auth", "can-i", verb, resource, "-n", namespace, f"--as={SA}"]
    if sub:
        args.append(f"--subresource={sub}")
    return cluster.kubectl(*args, check=False).stdout.strip() == "yes"


def test_rbac_md_is_read():
    rows = {(v, r) for v, r, _ in needed()}
    assert {("create", "pods"), ("watch", "pods"), ("patch", "adamwtrainingjobs.training.adamw.io/status"),
            ("create", "events")} <= rows


@pytest.mark.parametrize("verb,resource,why", needed(), ids=[f"{v}-{r}" for v, r, _ in needed()])
def test_every_call_the_operator_makes_is_granted(operator: Cluster, verb, resource, why):
    assert can_i(operator, verb, resource), f"the chart does not grant {verb} {resource} ({why})"


@pytest.mark.parametrize("verb,resource", [
    ("get", "secrets"), ("list", "secrets"), ("create", "deployments.apps"), ("delete", "nodes"),
    ("update", "adamwtrainingjobs.training.adamw.io"), ("create", "pods/exec"),
    ("patch", "pods"), ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
    ("create", "serviceaccounts/token"),
])
def test_the_operator_may_not_do_more(operator: Cluster, verb, resource):
    assert not can_i(operator, verb, resource), f"the chart grants {verb} {resource}, which the operator never uses"


def test_the_operators_own_token_is_refused_secrets_by_the_server(operator: Cluster):
    token = operator.kubectl("create", "token", "adamw-operator", "-n", "adamw-system",
                             "--duration=10m").stdout.strip()
    # A real request with the ServiceAccount's token, not an impersonation check.
    as_sa = ("--kubeconfig=/dev/null", f"--server={operator.server}",
             f"--certificate-authority={operator.plane.pki.ca.cert}", f"--token={token}")
    allowed = operator.kubectl("get", "pods", "-A", *as_sa)
    assert allowed.returncode == 0
    with pytest.raises(KubectlError) as refused:
        operator.kubectl("get", "secrets", "-n", "adamw-system", *as_sa)
    assert "Forbidden" in refused.value.stderr and SA in refused.value.stderr


def test_trainer_pods_get_no_token(operator: Cluster):
    """Trainer pods run with automountServiceAccountToken: false: no projected token volume."""
    from tests.operator.jobs import job_manifest

    with operator.namespace("notoken") as ns:
        job = job_manifest("notoken", replicas=1)
        job["metadata"]["namespace"] = ns
        job["spec"]["suspend"] = False
        operator.apply(job)
        pods = operator.wait_for("the worker pod", lambda: operator.get(
            "pods", namespace=ns, selector="training.adamw.io/job-name=notoken")["items"], timeout=60)
        spec = pods[0]["spec"]
        assert spec.get("automountServiceAccountToken") is False
        mounts = [m["mountPath"] for c in spec["containers"] for m in c.get("volumeMounts", [])]
        assert "/var/run/secrets/kubernetes.io/serviceaccount" not in mounts
        security = spec["containers"][0]["securityContext"]
        assert security["readOnlyRootFilesystem"] is True and security["runAsNonRoot"] is True
