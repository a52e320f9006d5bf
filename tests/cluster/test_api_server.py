"""The CRD and the examples on the real kube-apiserver: the server, not a model of it,
judges the schema, the defaults and the CEL rules (including their cost)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from tests.cluster.harness import Cluster, KubectlError
from tests.operator.jobs import job_manifest

pytestmark = pytest.mark.cluster
EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def _job(name: str, namespace: str, **spec) -> dict:
    job = job_manifest(name, **spec)
    job["metadata"]["namespace"] = namespace
    return job


def test_crd_is_established_and_explained_by_the_server(crds: Cluster):
    crd = crds.get("crd", "adamwtrainingjobs.training.adamw.io")
    established = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert established["Established"] == "True" and established["NamesAccepted"] == "True"
    explained = crds.kubectl("explain", "awj.spec.restartPolicy").stdout
    assert "backoffSeconds" in explained and "maxRestarts" in explained
    assert "FIELDS:" in explained
    assert "training.adamw.io" in crds.kubectl("explain", "awj").stdout


def test_server_applies_defaults_and_prints_the_columns(crds: Cluster):
    with crds.namespace("cols") as ns:
        job = _job("cols", ns)
        del job["spec"]["restartPolicy"]
        crds.apply(job)
        stored = crds.get("awj", "cols", ns)
        # defaults come from the server, from the schema the pydantic models generate
        assert stored["spec"]["restartPolicy"]["maxRestarts"] == 3
        assert stored["spec"]["restartPolicy"]["backoffSeconds"] == 10
        assert stored["spec"]["trainer"]["optimizer"]["lr"] > 0
        header = crds.kubectl("get", "awj", "-n", ns).stdout.splitlines()[0].split()
        assert header[:3] == ["NAME", "STATE", "STEP"] and "RESTARTS" in header and "AGE" in header
        wide = crds.kubectl("get", "adamwtrainingjobs", "-n", ns, "-o", "wide").stdout
        assert "cols" in wide


def _documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict) and d.get("kind")]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_example_passes_server_side_validation(crds: Cluster, example: Path):
    docs = _documents(example)
    if not docs:
        pytest.skip(f"{example.name} is a trainer config, not a Kubernetes manifest")
    with crds.namespace("ex") as ns:
        for doc in docs:
            if doc["apiVersion"].startswith("scheduling.volcano.sh/"):
                continue  # Volcano's CRDs are not installed here (no upstream copy offline)
            doc = copy.deepcopy(doc)
            doc["metadata"]["namespace"] = ns
            out = crds.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-",
                               input=yaml.safe_dump(doc)).stdout
            assert "(server dry run)" in out


BAD = [
    # (what is wrong, spec overrides or a function of the spec, words the server must say)
    ("replicas below 1", {"replicas": 0}, ["spec.replicas", "greater than or equal to 1"]),
    ("unknown field", {"replcas": 2}, ['unknown field "spec.replcas"']),
    ("backoff above its cap", {"restartPolicy": {"backoffSeconds": 60, "maxBackoffSeconds": 5}},
     ["spec.restartPolicy", "maxBackoffSeconds must be >= backoffSeconds"]),
    ("heads do not divide width",
     {"trainer": {"model": {"layers": 1, "heads": 3, "width": 32, "contextLength": 16}}},
     ["spec.trainer.model", "width must be divisible by heads"]),
    ("cuda without GPUs", {"trainer": {"device": "cuda"}, "gpusPerReplica": 0},
     ["spec", "'cuda' needs gpusPerReplica > 0"]),
    ("two checkpoint volumes", {"checkpointStorage": {"claimName": "a", "volumeName": "b"}},
     ["spec.checkpointStorage", "claimName or volumeName"]),
    ("negative learning rate", {"trainer": {"optimizer": {"lr": -1.0}}},
     ["spec.trainer.optimizer.lr", "greater than 0"]),
    ("precision not in the enum", {"trainer": {"training": {"precision": "fp8"}}},
     ["spec.trainer.training.precision", "Unsupported value", '"bf16"']),
    ("data source not in the enum", {"trainer": {"data": {"source": "csv"}}},
     ["spec.trainer.data.source", "Unsupported value"]),
    ("byte data with a small vocabulary",
     {"trainer": {"model": {"layers": 1, "heads": 2, "width": 32, "contextLength": 16, "vocabSize": 100},
                  "data": {"source": "stdlib"}}},
     ["spec.trainer", "vocabSize >= 256"]),
    ("betas out of range", {"trainer": {"optimizer": {"betas": [1.5, 0.9]}}},
     ["spec.trainer.optimizer", "betas must each be in [0, 1)"]),
    ("a string where a number goes", {"trainer": {"training": {"maxSteps": "many"}}},
     ["spec.trainer.training.maxSteps", "integer"]),
]


@pytest.mark.parametrize("what,spec,words", BAD, ids=[b[0] for b in BAD])
def test_the_server_refuses_bad_manifests_naming_the_field(crds: Cluster, what, spec, words):
    with crds.namespace("bad") as ns:
        job = _job("bad", ns)
        for key, value in spec.items():
            if isinstance(value, dict) and isinstance(job["spec"].get(key), dict):
                merged = copy.deepcopy(job["spec"][key])
                merged.update(value)
                job["spec"][key] = merged
            else:
                job["spec"][key] = value
        with pytest.raises(KubectlError) as refused:
            crds.kubectl("apply", "--validate=strict", "-f", "-", input=yaml.safe_dump(job))
        message = refused.value.stderr
        for word in words:
            assert word in message, f"{what}: {word!r} not in the server's answer:\n{message}"
        # refused whole: nothing was stored
        assert crds.get("awj", namespace=ns)["items"] == []
