"""The Helm chart, rendered by the real helm and checked with the real validators."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import yaml
from adamw_operator.cli import build_parser

from .helm import (
    ALL_ON,
    CHART,
    KUBE_VERSIONS,
    MONITORING_APIS,
    by_kind,
    helm,
    kubernetes_validate,
    render,
    template_text,
)
from .monitoring_schemas import SCHEMAS

MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
# What the operator does per namespace (operator/adamw_operator/kube.py, handlers.py) and
# what Kopf does for it: watches on jobs and worker pods, events for handler errors.
OPERATOR_CALLS = {
    ("training.adamw.io", "adamwtrainingjobs"): {"get", "list", "watch", "delete"},  # delete: TTL
    ("training.adamw.io", "adamwtrainingjobs/status"): {"patch"},
    ("", "pods"): {"list", "watch", "create", "delete"},
    ("", "services"): {"create"},  # the headless Service; owner references delete it
    # The trainer config: immutable, hash-named, created once; no patch, update or delete.
    ("", "configmaps"): {"create"},
    ("networking.k8s.io", "networkpolicies"): {"create"},  # spec.networkPolicy.enabled
    ("", "events"): {"create"},
}


def _monitoring(docs):
    kinds = {d["kind"] for d in docs} & MONITORING_KINDS
    dashboards = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    return kinds | ({"Dashboard"} if dashboards else set())


def test_lint_strict_default_and_all_features():
    helm("lint", "--strict", str(CHART))
    helm("lint", "--strict", str(CHART), *ALL_ON)


@pytest.mark.parametrize("features", ["default", "all-on"])
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_rendered_manifests_pass_kubernetes_validate(kube_version, features):
    args = ALL_ON if features == "all-on" else []
    apis = MONITORING_APIS if features == "all-on" else []
    text = template_text(*args, kube_version=kube_version, apis=apis)
    proc = kubernetes_validate(text, kube_version)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Custom resources are only warned about by kubernetes-validate: they are checked below.
    kinds = {d["kind"] for d in yaml.safe_load_all(text) if d}
    assert {"Deployment", "ServiceAccount", "Service", "ClusterRole", "CustomResourceDefinition"} <= kinds


def test_custom_resources_match_their_api_structure():
    docs = render(*ALL_ON, apis=MONITORING_APIS)
    seen = set()
    for doc in docs:
        if doc["kind"] in SCHEMAS:
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            jsonschema.validate(doc, SCHEMAS[doc["kind"]])
            seen.add(doc["kind"])
    assert seen == MONITORING_KINDS


def test_monitoring_objects_follow_the_prometheus_operator_api():
    assert _monitoring(render()) == set(), "auto must render nothing where the API is absent"
    assert _monitoring(render(apis=MONITORING_APIS)) == MONITORING_KINDS | {"Dashboard"}
    off = ["--set", "serviceMonitor.enabled=false", "--set", "podMonitor.enabled=false",
           "--set", "prometheusRule.enabled=false", "--set", "grafanaDashboard.enabled=false"]
    assert _monitoring(render(*off, apis=MONITORING_APIS)) == set()
    forced = ["--set", "podMonitor.enabled=true", "--set", "prometheusRule.enabled=true"]
    assert _monitoring(render(*forced)) == {"PodMonitor", "PrometheusRule"}


def _rules(role):
    return {(g, r): set(rule["verbs"]) for rule in role["rules"]
            for g in rule["apiGroups"] for r in rule["resources"]}


def test_rbac_cluster_wide_by_default():
    docs = render()
    assert by_kind(docs, "Role") == [] and by_kind(docs, "RoleBinding") == []
    (cluster_role,) = by_kind(docs, "ClusterRole")
    rules = _rules(cluster_role)
    assert rules == {**OPERATOR_CALLS, ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"}}
    assert ("", "secrets") not in rules and ("", "namespaces") not in rules
    (binding,) = by_kind(docs, "ClusterRoleBinding")
    assert binding["subjects"][0]["name"] == by_kind(docs, "ServiceAccount")[0]["metadata"]["name"]


def test_rbac_namespaced_when_namespaces_are_listed():
    docs = render("--set", "watch.namespaces={team-a,team-b}")
    roles = by_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in by_kind(docs, "RoleBinding")) == ["team-a", "team-b"]
    for role in roles:
        assert _rules(role) == OPERATOR_CALLS
    (cluster_role,) = by_kind(docs, "ClusterRole")
    # Cluster-wide only the discovery Kopf does: CRDs, and namespaces to notice them appear.
    assert _rules(cluster_role) == {("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
                                    ("", "namespaces"): {"list", "watch"}}
    (pod_monitor,) = by_kind(render("--set", "watch.namespaces={team-a,team-b}", apis=MONITORING_APIS), "PodMonitor")
    assert pod_monitor["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}


def _args(docs):
    (deployment,) = by_kind(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return deployment, container, container["args"]


def test_deployment_args_are_accepted_by_the_operator_cli():
    _, _, args = _args(render())
    parsed = build_parser().parse_args(args)
    assert parsed.all_namespaces and parsed.standalone and parsed.peering is None
    _, _, args = _args(render(*ALL_ON))
    parsed = build_parser().parse_args(args)
    assert parsed.namespace == ["team-a", "team-b"] and parsed.peering == "adamw-operator"
    assert not parsed.all_namespaces


def test_deployment_is_locked_down_and_probed():
    deployment, container, args = _args(render())
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert f"--liveness-port={ports['healthz']}" in args and f"--metrics-port={ports['metrics']}" in args
    # One replica without peering: never two operators at once, even during an update.
    assert deployment["spec"]["strategy"] == {"type": "Recreate", "rollingUpdate": None}
    assert by_kind(render(), "PodDisruptionBudget") == []
    docs = render(*ALL_ON)
    deployment, _, _ = _args(docs)
    assert deployment["spec"]["replicas"] == 2 and deployment["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    (pdb,) = by_kind(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["ADAMW_DEFAULT_TRAINER_IMAGE"] == "ghcr.io/adamw-operator/adamw-trainer:0.1.0"


def test_peering_objects_follow_the_watch_scope():
    docs = render("--set", "peering.enabled=true")
    (peering,) = by_kind(docs, "ClusterKopfPeering")
    assert peering["apiVersion"] == "kopf.dev/v1" and peering["metadata"]["name"] == "adamw-operator"
    (cluster_role,) = by_kind(docs, "ClusterRole")
    assert _rules(cluster_role)[("kopf.dev", "clusterkopfpeerings")] == {"list", "watch", "patch"}
    docs = render(*ALL_ON)
    assert sorted(p["metadata"]["namespace"] for p in by_kind(docs, "KopfPeering")) == ["team-a", "team-b"]
    for role in by_kind(docs, "Role"):
        assert _rules(role)[("kopf.dev", "kopfpeerings")] == {"list", "watch", "patch"}
    assert by_kind(render(), "ClusterKopfPeering") == []


def test_bad_values_are_refused_with_the_key_named():
    proc = helm("template", "rel", str(CHART), "--set", "replicaCount=2", check=False)
    assert proc.returncode != 0 and "peering.enabled" in proc.stderr
    proc = helm("template", "rel", str(CHART), "--set", "serviceMonitr.enabled=true", check=False)
    assert proc.returncode != 0 and "serviceMonitr" in proc.stderr
    proc = helm("template", "rel", str(CHART), "--set", "podMonitor.enabled=maybe", check=False)
    assert proc.returncode != 0 and "podMonitor" in proc.stderr


def test_prometheus_rule_embeds_the_tested_rules_file():
    source = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    (rule,) = by_kind(render(apis=MONITORING_APIS), "PrometheusRule")
    assert rule["spec"]["groups"] == source["groups"]
    # Without the operator's ServiceMonitor its alerts would fire forever: they are left out.
    (rule,) = by_kind(render("--set", "serviceMonitor.enabled=false", apis=MONITORING_APIS), "PrometheusRule")
    assert [g["name"] for g in rule["spec"]["groups"]] == ["adamw-training"]


def test_prometheus_rule_values_are_applied():
    (rule,) = by_kind(render(
        "--set", "prometheusRule.alertLabels.team=ml", "--set", "prometheusRule.alertLabels.severity=info",
        "--set", "prometheusRule.disabledAlerts={AdamWOverfitting}",
        "--set", "prometheusRule.runbookBaseUrl=https://wiki.example.com/runbooks",
        apis=MONITORING_APIS), "PrometheusRule")
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
    names = {a["alert"] for a in alerts}
    assert "AdamWOverfitting" not in names and "AdamWNonFiniteStepsHigh" in names
    for alert in alerts:
        assert alert["labels"]["team"] == "ml"
        assert alert["labels"]["severity"] in ("warning", "critical"), "a rule's own severity wins"
        assert alert["annotations"]["runbook_url"] == f"https://wiki.example.com/runbooks#{alert['alert'].lower()}"


def _rendered_alerts(*args):
    (rule,) = by_kind(render(*args, apis=MONITORING_APIS), "PrometheusRule")
    return {r.get("alert") or r["record"]: r for g in rule["spec"]["groups"] for r in g["rules"]}


def test_every_alert_is_tunable_from_values_with_the_rules_file_as_default():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    tunables = values["prometheusRule"]["alerts"]
    source = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    rules = [r for g in source["groups"] for r in g["rules"] if "alert" in r]
    assert {r["alert"] for r in rules} == set(tunables), "one prometheusRule.alerts entry per alert"
    for rule in rules:
        assert tunables[rule["alert"]]["severity"] == rule["labels"]["severity"]
        assert tunables[rule["alert"]]["for"] == rule["for"]
    assert values["slo"]["jobSuccessRatio"] == 0.95


def test_alert_thresholds_windows_severity_and_slo_follow_values():
    default = _rendered_alerts()
    tuned = _rendered_alerts(
        "--set", "prometheusRule.alerts.AdamWNonFiniteStepsSustained.ratio=0.05",
        "--set", "prometheusRule.alerts.AdamWNonFiniteStepsSustained.for=30m",
        "--set", "prometheusRule.alerts.AdamWJobRestartingOften.restarts=6",
        "--set", "prometheusRule.alerts.AdamWJobRestartingOften.severity=critical",
        "--set", "prometheusRule.alerts.AdamWOperatorDown.for=10m",
        "--set", "prometheusRule.alerts.AdamWJobSuccessBudgetFastBurn.burnRate=10",
        "--set-json", "slo.jobSuccessRatio=0.99",
    )
    sustained = tuned["AdamWNonFiniteStepsSustained"]
    assert "namespace_job_name:adamw_nonfinite_ratio:rate5m > 0.05\n" in sustained["expr"]
    assert sustained["for"] == "30m" and sustained["annotations"]["description"].endswith("for 30m.")
    restarting = tuned["AdamWJobRestartingOften"]
    assert restarting["expr"].rstrip().endswith("> 6") and restarting["labels"]["severity"] == "critical"
    assert "more than 6 times" in restarting["annotations"]["summary"]
    down = tuned["AdamWOperatorDown"]
    assert down["for"] == "10m" and "for 10m;" in down["annotations"]["description"]
    assert down["expr"] == default["AdamWOperatorDown"]["expr"]
    assert tuned["AdamWJobSuccessBudgetFastBurn"]["expr"].count("(10 * (1 - adamw:job_success_ratio:objective))") == 2
    assert "burns at 10x" in tuned["AdamWJobSuccessBudgetFastBurn"]["annotations"]["description"]
    assert tuned["adamw:job_success_ratio:objective"]["expr"] == "vector(0.99)"
    untouched = set(default) - {"AdamWNonFiniteStepsSustained", "AdamWJobRestartingOften", "AdamWOperatorDown",
                                "AdamWJobSuccessBudgetFastBurn", "adamw:job_success_ratio:objective"}
    assert all(tuned[name] == default[name] for name in untouched)


def test_alert_values_that_go_nowhere_are_refused():
    proc = helm("template", "rel", str(CHART), "--set", "prometheusRule.alerts.AdamWOverfitting.ratio=0.1", check=False)
    assert proc.returncode != 0 and "AdamWOverfitting" in proc.stderr
    proc = helm("template", "rel", str(CHART), "--set", "prometheusRule.alerts.AdamWTrainingStalled.for=soon",
                check=False)
    assert proc.returncode != 0 and "AdamWTrainingStalled" in proc.stderr
    proc = helm("template", "rel", str(CHART), "--set-json", "slo.jobSuccessRatio=1.5", check=False)
    assert proc.returncode != 0 and "jobSuccessRatio" in proc.stderr


def test_pod_monitor_scrapes_trainers_and_names_the_job():
    (pm,) = by_kind(render(apis=MONITORING_APIS), "PodMonitor")
    assert pm["spec"]["selector"]["matchExpressions"] == [{"key": "training.adamw.io/job-name", "operator": "Exists"}]
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    relabel = pm["spec"]["podMetricsEndpoints"][0]["relabelings"]
    assert {"sourceLabels": ["__meta_kubernetes_pod_label_training_adamw_io_job_name"],
            "targetLabel": "job_name", "action": "replace"} in relabel


def test_dashboard_config_map_carries_the_dashboard():
    docs = render("--set", "grafanaDashboard.namespace=monitoring", apis=MONITORING_APIS)
    (cm,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "monitoring"
    dashboard = json.loads(cm["data"]["adamw-training.json"])
    assert dashboard == json.loads((CHART / "files" / "dashboard.json").read_text())
    assert dashboard["uid"] == "adamw-training"


def test_chart_crds_are_the_generated_ones():
    crds = {p.name for p in (CHART / "crds").glob("*.yaml")}
    assert "adamwtrainingjobs.training.adamw.io.yaml" in crds, "run `make crd`"
    names = {d["metadata"]["name"] for d in by_kind(render(), "CustomResourceDefinition")}
    assert {"adamwtrainingjobs.training.adamw.io", "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"} <= names


def _chart_keys(schema, prefix=()):
    """Key paths the chart defines (objects it closes with additionalProperties: false)."""
    for name, sub in schema.get("properties", {}).items():
        yield (*prefix, name)
        if sub.get("additionalProperties") is False:
            yield from _chart_keys(sub, (*prefix, name))


def test_every_value_is_commented():
    """values.yaml is the chart's manual: each chart key has a comment line right above it."""
    keys = set(_chart_keys(json.loads((CHART / "values.schema.json").read_text())))
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    seen = set()
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z_][A-Za-z0-9_]*):", line)
        if not m:
            continue
        indent = len(m.group(1))
        stack = [(d, k) for d, k in stack if d < indent] + [(indent, m.group(2))]
        path = tuple(k for _, k in stack)
        if path in keys:
            seen.add(path)
            assert i and lines[i - 1].strip().startswith("#"), f"values.yaml:{i + 1} {'.'.join(path)} has no comment"
    assert seen == {k for k in keys if k != ("global",)}, "every schema key appears in values.yaml"
