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
    # The trainer config is an immutable ConfigMap created once: nothing to patch or delete.
    ("patch", "configmaps"), ("update", "configmaps"), ("delete", "configmaps"),
    ("patch", "networkpolicies.networking.k8s.io"), ("delete", "networkpolicies.networking.k8s.io"),
])
def test_the_operator_may_not_do_more(operator: Cluster, verb, resource):
    assert not can_i(operator, verb, resource), f"the chart grants {verb} {resource}, which the operator never uses"


def as_operator(cluster: Cluster) -> tuple[str, ...]:
    """kubectl arguments that send real requests with the operator ServiceAccount's token."""
    token = cluster.kubectl("create", "token", "adamw-operator", "-n", "adamw-system",
                            "--duration=10m").stdout.strip()
    return ("--kubeconfig=/dev/null", f"--server={cluster.server}",
            f"--certificate-authority={cluster.plane.pki.ca.cert}", f"--token={token}")


def test_the_operators_own_token_is_refused_secrets_by_the_server(operator: Cluster):
    # A real request with the ServiceAccount's token, not an impersonation check.
    as_sa = as_operator(operator)
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


def test_the_operator_cannot_rewrite_or_delete_kube_system_configmaps(operator: Cluster):
    """A compromised operator cannot rewrite the cluster's own configuration: the server
    refuses its token a patch, an update or a delete of a ConfigMap in kube-system.

    (It can still create ConfigMaps there in a cluster-wide install: see docs/install.md
    for why `watch.namespaces` is the safer install.)"""
    for verb in ("patch", "update", "delete"):
        assert not can_i(operator, verb, "configmaps", namespace="kube-system"), verb
    as_sa = as_operator(operator)
    # Every namespace holds kube-root-ca.crt (the controller-manager publishes it).
    assert operator.get("configmap", "kube-root-ca.crt", "kube-system")["data"]["ca.crt"]
    for attempt in (
        ("patch", "configmap", "kube-root-ca.crt", "-n", "kube-system", "--type=merge",
         "-p", '{"data":{"ca.crt":"attacker"}}'),
        ("label", "configmap", "kube-root-ca.crt", "-n", "kube-system", "owned=yes"),
        ("delete", "configmap", "kube-root-ca.crt", "-n", "kube-system", "--wait=false"),
    ):
        with pytest.raises(KubectlError) as refused:
            operator.kubectl(*attempt, *as_sa)
        assert "Forbidden" in refused.value.stderr and SA in refused.value.stderr, attempt
    kept = operator.get("configmap", "kube-root-ca.crt", "kube-system")
    assert "attacker" not in kept["data"]["ca.crt"] and "owned" not in (kept["metadata"].get("labels") or {})


def _config_volume(pod: dict) -> str:
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "adamw-config"]
    return volume["configMap"]["name"]


def _live(pods: list[dict]) -> list[dict]:
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_changed_trainer_config_is_a_new_immutable_configmap(operator: Cluster):
    """Without `patch` on ConfigMaps: each trainer config the job runs gets its own immutable
    `<job>-config-<hash>`, mounted by that attempt's pods; none is ever modified."""
    from tests.cluster.training import submit, training_job, wait_phase, wait_running, workers

    with operator.namespace("cfg") as ns:
        submit(operator, training_job("cfg", ns, replicas=1, trainer={"training": {"maxSteps": 1000000}}))
        (pod,) = wait_running(operator, ns, "cfg", attempt=0, replicas=1)
        first = _config_volume(pod)
        assert re.fullmatch(r"cfg-config-[0-9a-f]{8}", first), first
        cm = operator.get("configmap", first, ns)
        job = operator.get("awj", "cfg", ns)
        assert cm["immutable"] is True
        assert cm["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
        assert "logIntervalSteps: 5" in cm["data"]["config.yaml"]
        # The server, not only the operator's manners, keeps it unchanged.
        with pytest.raises(KubectlError) as refused:
            operator.kubectl("patch", "configmap", first, "-n", ns, "--type=merge",
                             "-p", '{"data":{"config.yaml":"{}"}}')
        assert "immutable" in refused.value.stderr
        # Spec changes apply from the next attempt: change the config, suspend, resume.
        operator.kubectl("patch", "awj", "cfg", "-n", ns, "--type=merge", "-p",
                         '{"spec":{"suspend":true,"trainer":{"training":{"logIntervalSteps":7}}}}')
        wait_phase(operator, ns, "cfg", "Suspended", timeout=60)
        operator.wait_for("no workers", lambda: workers(operator, ns, "cfg") == [], timeout=60)
        operator.kubectl("patch", "awj", "cfg", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":false}}')
        (resumed,) = operator.wait_for("the resumed worker", lambda: _live(workers(operator, ns, "cfg")), timeout=60)
        second = _config_volume(resumed)
        assert second != first and second.startswith("cfg-config-")
        assert "logIntervalSteps: 7" in operator.get("configmap", second, ns)["data"]["config.yaml"]
        # The old one is left to the garbage collector (with the job): the operator may not delete.
        assert operator.get("configmap", first, ns)["data"] == cm["data"]
        # networkPolicy is off by default: no NetworkPolicy for this job.
        assert operator.get("networkpolicies", namespace=ns)["items"] == []


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_network_policy_is_created_for_the_job_when_enabled(operator: Cluster):
    """`spec.networkPolicy.enabled` creates `<job>-workers` selecting exactly the job's pods.

    The local cluster runs no CNI, so nothing enforces the policy here: this checks the object
    the API server holds (and that the job still trains), not packet filtering."""
    from tests.cluster.training import JOB_LABEL, submit, training_job, wait_finished

    with operator.namespace("np") as ns:
        submit(operator, training_job("np", ns, networkPolicy={"enabled": True,
                                                               "metricsFromNamespaces": ["monitoring"]}))
        policy = operator.wait_for("the NetworkPolicy", lambda: operator.get(
            "networkpolicies", namespace=ns)["items"], timeout=60)
        (policy,) = policy
        job = operator.get("awj", "np", ns)
        assert policy["metadata"]["name"] == "np-workers"
        assert policy["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
        own = {"matchLabels": {JOB_LABEL: "np"}}
        assert policy["spec"]["podSelector"] == own and policy["spec"]["policyTypes"] == ["Ingress"]
        peers, metrics = policy["spec"]["ingress"]
        assert peers == {"from": [{"podSelector": own}]}  # every port, from the job's own pods
        # On the metrics port only: the named namespaces and the operator's own (its /status polls).
        assert metrics["ports"] == [{"protocol": "TCP", "port": 9090}]
        assert metrics["from"] == [{"namespaceSelector": {"matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["monitoring", "adamw-system"]}]}}]
        assert wait_finished(operator, ns, "np")["phase"] == "Succeeded"
        selected = operator.get("pods", namespace=ns, selector=f"{JOB_LABEL}=np")["items"]
        assert sorted(p["metadata"]["name"] for p in selected) == ["np-worker-0", "np-worker-1"]
