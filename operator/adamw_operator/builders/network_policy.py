"""The NetworkPolicy `<job>-workers` (with `spec.networkPolicy.enabled`): ingress only from
the job's own pods and, on the metrics port, from named namespaces.

Ingress only: the workers still reach their data, checkpoint store, MLflow and DNS. The
operator's own namespace is allowed on the metrics port too, because the operator reads
rank 0's `/status` there for progress and hang detection. Peers are matched by labels, as
NetworkPolicy can only do: any pod in the job's namespace that carries the job's label is
treated as one of its workers.
"""

from __future__ import annotations

from typing import Any

from ..api.spec import AdamWTrainingJobSpec
from .names import child_metadata, network_policy_name, worker_selector

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set on every namespace since 1.22


def metrics_ports(spec: AdamWTrainingJobSpec) -> list[dict[str, Any]]:
    """The workers' metrics ports: `port` up to `port + local ranks - 1` (none when disabled)."""
    port = spec.trainer.metrics.port
    if not port:
        return []
    rule: dict[str, Any] = {"protocol": "TCP", "port": port}
    if spec.gpus_per_replica > 1:
        rule["endPort"] = port + spec.gpus_per_replica - 1
    return [rule]


def build_network_policy(job: str, namespace: str, uid: str, spec: AdamWTrainingJobSpec,
                         operator_namespace: str | None = None) -> dict[str, Any]:
    """The job's NetworkPolicy; `operator_namespace` is where the operator polls `/status` from."""
    selector = {"matchLabels": worker_selector(job)}
    ingress: list[dict[str, Any]] = [{"from": [{"podSelector": selector}]}]  # every port
    scrapers = list(dict.fromkeys([*spec.network_policy.metrics_from_namespaces,
                                   *([operator_namespace] if operator_namespace else [])]))
    ports = metrics_ports(spec)
    if scrapers and ports:
        ingress.append({
            "from": [{"namespaceSelector": {"matchExpressions": [
                {"key": NAMESPACE_NAME_LABEL, "operator": "In", "values": scrapers}]}}],
            "ports": ports,
        })
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": child_metadata(job, namespace, uid, network_policy_name(job)),
        "spec": {"podSelector": selector, "policyTypes": ["Ingress"], "ingress": ingress},
    }
