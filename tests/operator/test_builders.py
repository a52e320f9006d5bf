"""Pods, Service, ConfigMap and NetworkPolicy the operator creates: the pod contract and the security bar."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml
from adamw_operator.api.spec import parse_spec
from adamw_operator.builders.configmap import build_configmap
from adamw_operator.builders.network_policy import build_network_policy
from adamw_operator.builders.pods import build_worker_pod, termination_grace_seconds, worker_command
from adamw_operator.builders.service import build_service
from adamw_trainer.config import parse_config

from tests.operator.jobs import job_manifest


def spec_of(**overrides):
    return parse_spec(job_manifest(**overrides)["spec"])


def env_of(pod):
    return {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}


def test_worker_pod_follows_the_pod_contract():
    pod = build_worker_pod("demo", "team", "uid-1", spec_of(), rank=1, attempt=3, restart_count=2)
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["name"] == "demo-worker-1" and meta["namespace"] == "team"
    labels = meta["labels"]
    assert labels["training.adamw.io/job-name"] == "demo"
    assert labels["training.adamw.io/replica-index"] == "1"
    assert labels["training.adamw.io/attempt"] == "3"
    owner = meta["ownerReferences"][0]
    assert owner["uid"] == "uid-1" and owner["controller"] and owner["kind"] == "AdamWTrainingJob"
    assert spec["hostname"] == "demo-worker-1" and spec["subdomain"] == "demo-workers"
    assert spec["restartPolicy"] == "Never"
    [container] = spec["containers"]
    assert container["name"] == "trainer"
    assert container["command"] == ["adamw-train", "--config", "/etc/adamw/config.yaml"]
    env = env_of(pod)
    assert env["RANK"] == "1" and env["WORLD_SIZE"] == "2" and env["LOCAL_RANK"] == "0"
    assert env["MASTER_ADDR"] == "demo-worker-0.demo-workers.team.svc.cluster.local"
    assert env["MASTER_PORT"] == "29500" and env["ADAMW_RESTART_COUNT"] == "2"
    assert env["ADAMW_CHECKPOINT_DIR"] == "/checkpoints"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounts["/etc/adamw"]]["configMap"]["name"] == "demo-config"  # the local runner's name
    assert volumes[mounts["/checkpoints"]]["persistentVolumeClaim"]["claimName"] == "ckpt"
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert "terminationMessagePath" not in container  # the default /dev/termination-log


def test_worker_pod_is_locked_down():
    pod = build_worker_pod("demo", "ns", "u", spec_of(), rank=0, attempt=0, restart_count=0)
    spec = pod["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = spec["containers"][0]["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}


def test_pod_passes_upstream_pod_schema(tmp_path):
    spec = spec_of(gpusPerReplica=1, trainer={"device": "cuda"},
                   pod={"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                        "env": [{"name": "NCCL_DEBUG", "value": "INFO"}],
                        "volumes": [{"name": "data", "emptyDir": {}}],
                        "volumeMounts": [{"name": "data", "mountPath": "/data"}]})
    docs = [build_worker_pod("demo", "ns", "u", spec, rank=0, attempt=0, restart_count=0),
            build_service("demo", "ns", "u", spec), build_configmap("demo", "ns", "u", spec),
            build_network_policy("demo", "ns", "u", spec, operator_namespace="adamw-system")]
    path = tmp_path / "children.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    result = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "-k", "1.30.0",
                             str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_gpus_set_resources_and_multi_gpu_uses_torchrun():
    spec = spec_of(gpusPerReplica=8, trainer={"device": "cuda"}, resources={"limits": {"memory": "64Gi"}})
    pod = build_worker_pod("demo", "ns", "u", spec, rank=1, attempt=0, restart_count=0)
    container = pod["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"memory": "64Gi", "nvidia.com/gpu": 8}
    assert worker_command(spec)[0] == "torchrun" and "--nproc-per-node=8" in worker_command(spec)
    env = env_of(pod)
    assert env["NODE_RANK"] == "1" and env["NNODES"] == "2" and "RANK" not in env
    metrics_ports = [p for p in container["ports"] if p["name"].startswith("metrics")]
    assert [p["containerPort"] for p in metrics_ports] == list(range(9090, 9098))
    assert [p["name"] for p in metrics_ports] == ["metrics"] + [f"metrics-{i}" for i in range(1, 8)]


def test_user_overrides_reach_the_pod():
    spec = spec_of(pod={"nodeSelector": {"pool": "gpu"}, "priorityClassName": "high",
                        "schedulerName": "volcano", "serviceAccountName": "trainer",
                        "imagePullSecrets": [{"name": "reg"}], "labels": {"team": "a"},
                        "annotations": {"a": "b"}},
                   imagePullPolicy="Always")
    pod = build_worker_pod("demo", "ns", "u", spec, rank=0, attempt=0, restart_count=0)
    s = pod["spec"]
    assert s["nodeSelector"] == {"pool": "gpu"} and s["priorityClassName"] == "high"
    assert s["schedulerName"] == "volcano" and s["serviceAccountName"] == "trainer"
    assert s["automountServiceAccountToken"] is False  # even with a service account
    assert s["imagePullSecrets"] == [{"name": "reg"}]
    assert pod["metadata"]["labels"]["team"] == "a" and pod["metadata"]["annotations"]["a"] == "b"
    assert s["containers"][0]["imagePullPolicy"] == "Always"


def test_relative_checkpoint_dir_resolves_under_the_working_dir():
    spec = spec_of(trainer={"checkpoint": {"dir": "ckpt"}}, checkpointStorage={})
    pod = build_worker_pod("demo", "ns", "u", spec, rank=0, attempt=0, restart_count=0)
    container = pod["spec"]["containers"][0]
    assert container["workingDir"] == "/workspace"
    assert {"name": "adamw-checkpoints", "mountPath": "/workspace/ckpt"} in container["volumeMounts"]
    assert {"name": "adamw-checkpoints", "emptyDir": {}} in pod["spec"]["volumes"]


@pytest.mark.parametrize(("spec_grace", "measured", "expected"), [
    (None, None, 90),     # before any save: the SIGTERM save budget (60 s) + 30 s
    (None, 4.2, 43),      # 3 x measured + 30 s
    (600, 4.2, 600),      # the spec wins
])
def test_grace_period_is_sized_from_the_save_time(spec_grace, measured, expected):
    spec = spec_of(pod={"terminationGracePeriodSeconds": spec_grace} if spec_grace else {})
    assert termination_grace_seconds(spec, measured) == expected
    pod = build_worker_pod("d", "ns", "u", spec, rank=0, attempt=0, restart_count=0,
                           measured_save_seconds=measured)
    assert pod["spec"]["terminationGracePeriodSeconds"] == expected


def test_configmap_holds_the_trainer_config_the_trainer_accepts():
    spec = spec_of()
    cm = build_configmap("demo", "ns", "u", spec)
    assert re.fullmatch(r"demo-config-[0-9a-f]{8}", cm["metadata"]["name"])
    assert cm["immutable"] is True  # the operator creates it once and holds no patch verb
    assert cm["metadata"]["ownerReferences"][0]["uid"] == "u"  # collected with the job
    config = parse_config(yaml.safe_load(cm["data"]["config.yaml"]))
    assert config == spec.trainer and config.training.max_steps == 40


def test_configmap_name_changes_with_the_config_and_the_job_and_only_then():
    """Same name means same content of the same job, so a 409 AlreadyExists is safe to ignore."""
    name = build_configmap("demo", "ns", "u", spec_of())["metadata"]["name"]
    assert build_configmap("demo", "ns", "u", spec_of())["metadata"]["name"] == name
    # A spec change that leaves the trainer config alone keeps the ConfigMap.
    assert build_configmap("demo", "ns", "u", spec_of(replicas=3))["metadata"]["name"] == name
    changed = build_configmap("demo", "ns", "u", spec_of(trainer={"training": {"maxSteps": 41}}))
    assert changed["metadata"]["name"] != name and changed["metadata"]["name"].startswith("demo-config-")
    # The same job recreated (new uid) never adopts its predecessor's ConfigMap.
    assert build_configmap("demo", "ns", "u2", spec_of())["metadata"]["name"] != name


def test_worker_pod_mounts_the_configmap_it_is_given():
    spec = spec_of()
    cm = build_configmap("demo", "ns", "u", spec)
    pod = build_worker_pod("demo", "ns", "u", spec, rank=0, attempt=0, restart_count=0,
                           config_map=cm["metadata"]["name"])
    mounts = {m["mountPath"]: m["name"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes[mounts["/etc/adamw"]]["configMap"] == {"name": cm["metadata"]["name"]}


def _ingress_peers(policy):
    return [(rule.get("from"), rule.get("ports")) for rule in policy["spec"]["ingress"]]


def test_network_policy_admits_the_job_and_the_scrapers_only():
    spec = spec_of(networkPolicy={"enabled": True, "metricsFromNamespaces": ["monitoring"]})
    policy = build_network_policy("demo", "team", "u", spec, operator_namespace="adamw-system")
    assert policy["apiVersion"] == "networking.k8s.io/v1" and policy["kind"] == "NetworkPolicy"
    assert policy["metadata"]["name"] == "demo-workers" and policy["metadata"]["namespace"] == "team"
    assert policy["metadata"]["ownerReferences"][0]["uid"] == "u"
    own = {"matchLabels": {"training.adamw.io/job-name": "demo"}}
    assert policy["spec"]["podSelector"] == own
    # The selector picks exactly the pods the operator creates for this job.
    pod = build_worker_pod("demo", "team", "u", spec, rank=1, attempt=0, restart_count=0)
    assert own["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]  # egress (data, DNS, MLflow) stays open
    scrapers = {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In",
                                      "values": ["monitoring", "adamw-system"]}]}
    assert _ingress_peers(policy) == [
        ([{"podSelector": own}], None),  # every port: rendezvous and the collectives' own ports
        ([{"namespaceSelector": scrapers}], [{"protocol": "TCP", "port": 9090}]),
    ]


def test_network_policy_covers_every_local_ranks_metrics_port():
    spec = spec_of(gpusPerReplica=4, trainer={"device": "cuda"}, networkPolicy={"enabled": True})
    policy = build_network_policy("demo", "team", "u", spec, operator_namespace="adamw-system")
    (_, ports) = _ingress_peers(policy)[1]
    assert ports == [{"protocol": "TCP", "port": 9090, "endPort": 9093}]


@pytest.mark.parametrize("metrics,operator_ns", [({"port": 0}, "adamw-system"), ({}, None)])
def test_network_policy_without_metrics_or_scrapers_admits_only_the_job(metrics, operator_ns):
    spec = spec_of(networkPolicy={"enabled": True}, trainer={"metrics": metrics})
    policy = build_network_policy("demo", "team", "u", spec, operator_namespace=operator_ns)
    assert _ingress_peers(policy) == [([{"podSelector": {"matchLabels": {"training.adamw.io/job-name": "demo"}}}],
                                       None)]


def test_network_policy_is_off_by_default_and_refuses_bad_namespace_names():
    assert spec_of().network_policy.enabled is False
    with pytest.raises(ValueError, match="metricsFromNamespaces"):
        spec_of(networkPolicy={"enabled": True, "metricsFromNamespaces": ["Not_A_Namespace"]})


def test_service_is_headless_for_rank0_dns():
    svc = build_service("demo", "ns", "u", spec_of())
    assert svc["metadata"]["name"] == "demo-workers" and svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"] == {"training.adamw.io/job-name": "demo"}
    assert svc["spec"]["publishNotReadyAddresses"] is True


def test_avoided_nodes_narrow_the_users_placement_rather_than_replace_it():
    from adamw_operator.builders.avoidance import avoiding_nodes

    mine = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["h100"]}]},
        {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["h200"]}]}]}},
        "podAffinity": {"x": 1}}
    out = avoiding_nodes(mine, ["node-b", "node-a"])
    terms = out["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert len(terms) == 2 and all(t["matchExpressions"][0]["key"] == "gpu" for t in terms)
    assert all(t["matchFields"] == [{"key": "metadata.name", "operator": "NotIn", "values": ["node-a", "node-b"]}]
               for t in terms)
    assert out["podAffinity"] == {"x": 1} and "matchFields" not in str(mine)  # the spec is not mutated
    alone = avoiding_nodes(None, ["node-a"])
    assert alone == {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["node-a"]}]}]}}}
    assert avoiding_nodes(None, []) is None
