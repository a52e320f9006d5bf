"""Every example in examples/ is accepted by the cluster: AdamWTrainingJobs by the CRD's
schema and CEL rules (as the API server applies them) and by the operator's own spec
model; the other Kubernetes objects by kubernetes-validate."""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path

import pytest
import yaml
from adamw_operator.api.checks import runtime_problems
from adamw_operator.api.spec import AdamWTrainingJobSpec
from adamw_operator.builders.configmap import build_configmap
from adamw_operator.builders.network_policy import build_network_policy
from adamw_operator.builders.pods import build_worker_pod
from adamw_operator.builders.service import build_service
from adamw_trainer.config import load_config

from tests.chart.helm import MONITORING_APIS, by_kind, kubernetes_validate, render
from tests.operator.crd_validation import CRD_PATH, load_crd, validate

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
# Custom resources of other projects the examples use (no schema for them offline).
FOREIGN_KINDS = {"PodGroup"}


def docs(path: Path):
    """The Kubernetes objects in a file (trainer config files have no `kind`)."""
    return [d for d in yaml.safe_load_all(path.read_text()) if d and "kind" in d]


def jobs():
    return [(p.name, d) for p in EXAMPLES for d in docs(p) if d["kind"] == "AdamWTrainingJob"]


@pytest.fixture(scope="module")
def crd():
    assert CRD_PATH.exists(), "crds/ has no AdamWTrainingJob CRD: run `make crd`"
    return load_crd()


def test_the_issue_examples_exist():
    names = {p.name for p in EXAMPLES}
    assert {"quickstart.yaml", "single-gpu.yaml", "multi-node-8gpu.yaml", "volcano-queue.yaml"} <= names
    by_name = {d["metadata"]["name"]: d["spec"] for _, d in jobs()}
    assert by_name["gpt-2x8"]["replicas"] == 2 and by_name["gpt-2x8"]["gpusPerReplica"] == 8
    assert "claimName" in by_name["gpt-2x8"]["checkpointStorage"]
    assert by_name["gpt-single-gpu"]["gpusPerReplica"] == 1
    assert by_name["gpt-volcano"]["pod"]["schedulerName"] == "volcano"


@pytest.mark.parametrize("name,job", jobs(), ids=[f"{n}:{d['metadata']['name']}" for n, d in jobs()])
def test_job_example_passes_crd_schema_and_cel(crd, name, job):
    assert job["apiVersion"] == "training.adamw.io/v1alpha1"
    assert validate(crd, job) == []
    spec = AdamWTrainingJobSpec.model_validate(job["spec"])  # unknown fields are errors here
    assert runtime_problems(spec) == [], "the operator would mark it InvalidSpec"


@pytest.mark.parametrize("path", [p for p in EXAMPLES if not docs(p)], ids=lambda p: p.name)
def test_plain_trainer_configs_load(path):
    """Files that are not Kubernetes objects are `adamw-train --config` files."""
    load_config(path)


def test_the_validator_catches_broken_examples(crd):
    """Negative control: the same check refuses a schema error and a CEL rule violation."""
    _, job = jobs()[0]
    bad = copy.deepcopy(job)
    bad["spec"]["replicas"] = 0
    assert validate(crd, bad)
    bad = copy.deepcopy(job)
    bad["spec"]["restartPolicy"] = {"backoffSeconds": 600, "maxBackoffSeconds": 60}
    assert any("maxBackoffSeconds" in p for p in validate(crd, bad))
    bad = copy.deepcopy(job)
    bad["spec"]["gpusPerReplica"] = 0
    bad["spec"]["trainer"]["device"] = "cuda"
    assert any("gpusPerReplica" in p for p in validate(crd, bad))


def core_objects(path: Path):
    return [d for d in docs(path) if d["kind"] not in FOREIGN_KINDS | {"AdamWTrainingJob"}]


@pytest.mark.parametrize("path", [p for p in EXAMPLES if core_objects(p)], ids=lambda p: p.name)
def test_other_objects_pass_kubernetes_validate(path):
    core = core_objects(path)
    proc = kubernetes_validate(yaml.safe_dump_all(core))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_volcano_gang_matches_the_job():
    (pg,) = [d for d in docs(ROOT / "examples" / "volcano-queue.yaml") if d["kind"] == "PodGroup"]
    (job,) = [d for d in docs(ROOT / "examples" / "volcano-queue.yaml") if d["kind"] == "AdamWTrainingJob"]
    assert pg["spec"]["minMember"] == job["spec"]["replicas"]
    assert job["spec"]["pod"]["annotations"]["scheduling.k8s.io/group-name"] == pg["metadata"]["name"]


@functools.cache  # one helm render for all the examples; tests only read it
def _pod_monitor():
    (pm,) = by_kind(render(apis=MONITORING_APIS), "PodMonitor")
    return pm


@pytest.mark.parametrize("name,job", jobs(), ids=[f"{n}:{d['metadata']['name']}" for n, d in jobs()])
def test_operator_children_are_valid_and_scraped_by_the_pod_monitor(name, job):
    """What the operator creates for each example passes kubernetes-validate, and the chart's
    PodMonitor selects every rank's metrics port (one per GPU) of the trainer container."""
    spec = AdamWTrainingJobSpec.model_validate(job["spec"])
    meta = job["metadata"]["name"], "ml", "0b7c-uid"
    config = build_configmap(*meta, spec)
    pods = [build_worker_pod(*meta, spec, rank=r, attempt=0, restart_count=0, config_map=config["metadata"]["name"])
            for r in range(spec.replicas)]
    children = [*pods, config, build_service(*meta, spec), build_network_policy(*meta, spec, "adamw-system")]
    proc = kubernetes_validate(yaml.safe_dump_all(children))
    assert proc.returncode == 0, proc.stdout + proc.stderr

    endpoint = _pod_monitor()["spec"]["podMetricsEndpoints"][0]
    keep = next(r for r in endpoint["relabelings"] if r.get("action") == "keep")
    pattern = re.compile(keep["regex"])
    pod = pods[0]
    assert "training.adamw.io/job-name" in pod["metadata"]["labels"]
    scraped = [f"{c['name']};{p['name']}" for c in pod["spec"]["containers"] for p in c.get("ports", [])
               if pattern.fullmatch(f"{c['name']};{p['name']}")]
    assert len(scraped) == max(1, spec.gpus_per_replica), "one metrics port per local rank"


# Multi-GPU pods get one metrics port per local rank; the API server refuses duplicate port
# names in a pod (kubernetes-validate does not check that), so they must be metrics, metrics-1, ...
@pytest.mark.parametrize("name,job", [
    pytest.param(n, d, id=f"{n}:{d['metadata']['name']}") for n, d in jobs()])
def test_operator_pods_have_unique_port_names(name, job):
    spec = AdamWTrainingJobSpec.model_validate(job["spec"])
    pod = build_worker_pod(job["metadata"]["name"], "ml", "uid", spec, rank=0, attempt=0, restart_count=0)
    names = [p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])]
    assert len(names) == len(set(names)), f"duplicate container port names: {names}"
