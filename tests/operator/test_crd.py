"""The generated CRD: up to date, structural, documented, and it accepts/refuses what the
pydantic model does (schema via jsonschema, cross-field rules via CEL)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import yaml
from adamw_operator.api.spec import AdamWTrainingJobSpec, parse_job
from adamw_operator.crd import generate
from adamw_trainer.config import ConfigError

from tests.operator.crd_validation import REPO, apply_defaults, load_crd, openapi_schema, validate
from tests.operator.jobs import job_manifest


def test_committed_crds_match_the_generator():
    files = generate.render()
    for folder in generate.output_dirs(REPO):
        for name, text in files.items():
            path = folder / name
            assert path.exists(), f"{path} missing: run `make crd`"
            assert path.read_text() == text, f"{path} is stale: run `make crd`"


def _walk(node: dict[str, Any], path: str):
    yield path, node
    for name, sub in (node.get("properties") or {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}.*")


def test_schema_is_structural_and_every_field_is_described():
    schema = openapi_schema(load_crd())
    for path, node in _walk(schema, "<root>"):
        for banned in ("$ref", "anyOf", "oneOf", "allOf", "prefixItems", "nullable", "title"):
            assert banned not in node, f"{path}: {banned} is not allowed in a structural schema"
        assert "type" in node or node.get("x-kubernetes-int-or-string") \
            or node.get("x-kubernetes-preserve-unknown-fields"), f"{path}: no type"
        if node.get("properties"):
            assert "additionalProperties" not in node, path
        # metadata must be a bare `type: object`: the API server refuses anything else there.
        if not path.endswith(("[]", ".*")) and path != "<root>.metadata":
            assert node.get("description"), f"{path}: no description (kubectl explain)"
        if "exclusiveMinimum" in node:
            assert isinstance(node["exclusiveMinimum"], bool), path


def test_crd_shape():
    crd = load_crd()
    spec = crd["spec"]
    assert spec["group"] == "training.adamw.io" and spec["scope"] == "Namespaced"
    assert spec["names"]["plural"] == "adamwtrainingjobs"
    assert set(spec["names"]["shortNames"]) == {"awj", "adamwjob"}
    version = spec["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["State", "Step", "Loss", "Val-Loss", "NaN-Rate", "Restarts", "Last-Checkpoint", "Age"]
    status = openapi_schema(crd)["properties"]["status"]
    for column in version["additionalPrinterColumns"]:
        path = column["jsonPath"].lstrip(".").split(".")
        if path[0] != "status":
            continue
        node = status
        for part in path[1:]:
            node = node["properties"][part]  # the column points at a real status field
        assert node["type"] == column["type"], column


def test_schema_defaults_equal_the_model_defaults():
    schema = openapi_schema(load_crd())["properties"]["spec"]
    defaulted = apply_defaults(schema, {"image": "x", "trainer": {"model": {}, "training": {}},
                                        "restartPolicy": {}})
    model = AdamWTrainingJobSpec.model_validate({"image": "x"})
    assert defaulted["replicas"] == model.replicas
    assert defaulted["progressDeadlineSeconds"] == model.progress_deadline_seconds
    assert defaulted["restartPolicy"] == model.restart_policy.model_dump(by_alias=True, mode="json")
    # Optional sections (model.huggingface, model.python) are absent on the server, None here.
    assert defaulted["trainer"]["model"] == model.trainer.model.model_dump(
        by_alias=True, mode="json", exclude_none=True
    )


def test_valid_job_is_accepted():
    assert validate(load_crd(), job_manifest()) == []


def test_a_full_featured_job_is_accepted():
    manifest = job_manifest(
        gpusPerReplica=8, replicas=2,
        trainer={"device": "cuda", "training": {"precision": "bf16"}},
        resources={"requests": {"cpu": 8, "memory": "64Gi"}, "limits": {"memory": "64Gi"}},
        pod={"nodeSelector": {"gpu": "h100"},
             "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
             "affinity": {"nodeAffinity": {}}, "priorityClassName": "training",
             "schedulerName": "volcano", "imagePullSecrets": [{"name": "regcred"}],
             "env": [{"name": "NCCL_DEBUG", "value": "WARN"}],
             "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
             "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": True}],
             "terminationGracePeriodSeconds": 120},
        suspend=False, activeDeadlineSeconds=86400, ttlSecondsAfterFinished=3600,
        cleanPodPolicy="All",
    )
    assert validate(load_crd(), manifest) == []
    parse_job(manifest)  # and the operator's model agrees


# Each case is refused by the cluster (schema or CEL) AND by the pydantic model.
REFUSED = [
    ({"replicas": 0}, "replicas"),
    ({"gpusPerReplica": -1}, "gpusPerReplica"),
    ({"cleanPodPolicy": "Some"}, "cleanPodPolicy"),
    ({"restartPolicy": {"backoffSeconds": 60, "maxBackoffSeconds": 10}}, "maxBackoffSeconds must be >="),
    ({"trainer": {"model": {"width": 30, "heads": 4}}}, "width must be divisible by heads"),
    ({"trainer": {"data": {"source": "text"}}}, "data.path is required"),
    ({"trainer": {"model": {"vocabSize": 100}}}, "vocabSize >= 256"),
    ({"trainer": {"optimizer": {"betas": [0.9, 1.0]}}}, "betas must each be in [0, 1)"),
    ({"trainer": {"optimizer": {"lr": 0}}}, "lr"),
    ({"gpusPerReplica": 0, "trainer": {"device": "cuda"}}, "trainer.device must match gpusPerReplica"),
    ({"checkpointStorage": {"claimName": "a", "volumeName": "b"}}, "not both"),
    ({"trainer": {"data": {"source": "jsonl", "tokenizer": {"path": "/t"}}}}, "data.path is required"),
    ({"trainer": {"data": {"source": "jsonl", "path": "/d"}}}, "data.tokenizer.path is required"),
    ({"trainer": {"data": {"source": "jsonl", "path": "/d", "tokenizer": {"path": "/t"},
                           "promptField": "q"}}}, "promptField and data.completionField go together"),
    ({"trainer": {"data": {"source": "jsonl", "path": "/d", "tokenizer": {"path": "/t"},
                           "completionField": "a"}}}, "promptField and data.completionField go together"),
    ({"trainer": {"optimizer": {"groups": [{"name": "a", "match": "x"}, {"name": "a", "match": "y"}]}}},
     "names must be unique"),
    ({"trainer": {"optimizer": {"groups": [{"name": "lora", "match": "x"}]}}}, "names must be unique"),
    ({"trainer": {"data": {"source": "hfDisk"}}}, "data.path is required"),
    ({"trainer": {"data": {"source": "parquet", "path": "/d"},
                  "model": {"source": "huggingface", "huggingface": {"config": {"model_type": "llama"}}}}},
     "data.tokenizer.path is required"),
    ({"trainer": {"model": {"source": "huggingface"}}}, "model.huggingface is required"),
    ({"trainer": {"model": {"source": "python"}}}, "model.python is required"),
    ({"trainer": {"model": {"source": "huggingface", "huggingface": {}}}}, "needs path"),
    ({"trainer": {"model": {"source": "huggingface", "huggingface": {
        "path": "/m", "config": {"model_type": "llama"}}}}}, "either path or config"),
    ({"trainer": {"finetune": {"lora": {"rank": 8}}}}, "finetune.lora needs model.source"),
    ({"trainer": {"training": {"targetValidationLoss": 0}}}, "targetValidationLoss"),
    ({"trainer": {"training": {"earlyStopping": {"patience": -1}}}}, "patience"),
    ({"trainer": {"training": {"earlyStopping": {"patience": 3, "minDelta": -0.1}}}}, "minDelta"),
    ({"trainer": {"training": {"targetValidationLoss": 1.5}, "data": {"evalIntervalSteps": 0}}},
     "need data.evalIntervalSteps > 0"),
    ({"trainer": {"model": {"source": "gpt"}, "finetune": {"lora": {}}}}, "finetune.lora needs model.source"),
    ({"trainer": {"model": {"source": "huggingface", "huggingface": {"path": "/m", "dtype": "bfloat16"}}}},
     "dtype other than float32 needs finetune.lora"),
]


def test_model_sources_and_lora_are_accepted():
    manifest = job_manifest(trainer={
        "model": {"source": "huggingface", "contextLength": 512,
                  "huggingface": {"path": "/models/llama", "dtype": "bfloat16"}},
        "finetune": {"lora": {"rank": 16, "alpha": 32, "targetModules": ["q_proj", "v_proj"]}},
    })
    assert validate(load_crd(), manifest) == []
    parse_job(manifest)
    manifest = job_manifest(trainer={
        "model": {"source": "huggingface", "huggingface": {"config": {"model_type": "llama", "hidden_size": 64}}},
        "finetune": {"initFrom": "/checkpoints/base/step-1000"},
    })
    assert validate(load_crd(), manifest) == []
    parse_job(manifest)
    manifest = job_manifest(trainer={
        "model": {"source": "python", "python": {"entrypoint": "my_models.tiny:build", "options": {"k": [1]}}},
        "finetune": {"lora": {"targetModules": ["proj"]}},
    })
    assert validate(load_crd(), manifest) == []
    parse_job(manifest)


def test_instruction_data_and_group_rules_are_accepted():
    manifest = job_manifest(trainer={
        "data": {"source": "parquet", "path": "/data/sft", "tokenizer": {"path": "/models/tok"},
                 "promptField": "question", "completionField": "answer"},
        "optimizer": {"groups": [{"name": "embeddings", "match": "wte", "weightDecay": 0.0, "lrScale": 0.5}],
                      "noDecay": ["bias", "norm"], "layerwiseLrDecay": 0.9,
                      "loraGroup": {"weightDecay": 0.01}},
    })
    assert validate(load_crd(), manifest) == []
    parse_job(manifest)
    # The tokenizer defaults to the Hugging Face model's directory.
    manifest = job_manifest(trainer={
        "data": {"source": "jsonl", "path": "/data/sft"},
        "model": {"source": "huggingface", "huggingface": {"path": "/models/llama"}},
    })
    assert validate(load_crd(), manifest) == []
    _, spec = parse_job(manifest)
    assert spec.trainer.data.tokenizer.path == "/models/llama"


@pytest.mark.parametrize(("patch", "expected"), REFUSED)
def test_cluster_and_model_refuse_the_same_specs(patch, expected):
    manifest = job_manifest(**patch)
    problems = validate(load_crd(), manifest)
    assert any(expected in p for p in problems), problems
    if "claimName" in str(patch) or "cuda" in str(patch):
        from adamw_operator.api.checks import runtime_problems

        _, spec = parse_job(manifest)
        assert runtime_problems(spec)  # the operator reports it as InvalidSpec
    else:
        with pytest.raises(ConfigError):
            parse_job(manifest)


def test_peering_crds_are_kopfs():
    docs = list(yaml.safe_load_all((REPO / "crds" / "kopf-peerings.yaml").read_text()))
    assert {d["spec"]["names"]["kind"] for d in docs} == {"KopfPeering", "ClusterKopfPeering"}
    assert all(d["spec"]["group"] == "kopf.dev" for d in docs)


def test_cli_check_mode(capsys):
    assert generate.main(["--check"]) == 0


@pytest.mark.parametrize("version", ["1.28.0", "1.30.0", "1.33.0"])
def test_crds_pass_the_upstream_apiextensions_schema(version):
    files = [str(p) for p in sorted((REPO / "crds").glob("*.yaml"))]
    result = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "-k", version, *files],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_crd_offers_exactly_the_phases_and_conditions_the_operator_writes():
    """One vocabulary: the status schema users validate against and `decide`'s enums agree."""
    from adamw_operator.api.enums import ConditionType, Phase

    status = openapi_schema(load_crd())["properties"]["status"]["properties"]
    assert status["phase"]["enum"] == [p.value for p in Phase]
    described = status["conditions"]["description"]
    assert all(c.value in described for c in ConditionType), described
