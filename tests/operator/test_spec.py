"""The spec model: defaults, bounds, and error messages that name the field and the fix."""

from __future__ import annotations

import pytest
from adamw_operator.api.checks import runtime_problems
from adamw_operator.api.spec import parse_job, parse_spec, with_default_image
from adamw_trainer.config import ConfigError

from tests.operator.jobs import job_manifest


def test_minimal_spec_gets_documented_defaults():
    spec = parse_spec({"image": "trainer:1"})
    assert spec.replicas == 1 and spec.gpus_per_replica == 0
    assert spec.restart_policy.max_restarts == 3
    assert spec.restart_policy.on_divergence == "Fail"
    assert spec.progress_deadline_seconds == 600
    assert spec.clean_pod_policy == "Running"
    assert spec.trainer.training.max_steps == 1000  # the trainer's own default


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"replicas": 0}, "spec.replicas: Input should be greater than or equal to 1"),
        ({"image": ""}, "spec.image"),
        ({"restartPolicy": {"maxRestarts": -1}}, "spec.restartPolicy.maxRestarts"),
        ({"restartPolicy": {"backoffSeconds": 60, "maxBackoffSeconds": 10}},
         "maxBackoffSeconds (10.0) must be >= backoffSeconds (60.0)"),
        ({"trainer": {"model": {"width": 30, "heads": 4}}}, "spec.trainer.model: width (30) must be divisible"),
        ({"trainer": {"optimizer": {"lrr": 1}}}, "spec.trainer.optimizer.lrr: unknown field"),
        ({"restartPolicy": {"onDivergence": "Ignore"}}, "spec.restartPolicy.onDivergence"),
        ({"replicaz": 2}, "spec.replicaz: unknown field"),
    ],
)
def test_bad_spec_names_the_field(patch, expected):
    manifest = job_manifest(**patch)
    with pytest.raises(ConfigError) as err:
        parse_job(manifest)
    assert expected in str(err.value)


def test_manifest_kind_and_name_are_checked():
    manifest = job_manifest()
    manifest["kind"] = "PyTorchJob"
    del manifest["metadata"]["name"]
    with pytest.raises(ConfigError) as err:
        parse_job(manifest)
    text = str(err.value)
    assert "kind: must be AdamWTrainingJob" in text and "metadata.name: required" in text


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"checkpointStorage": {"volumeName": "ckpt"}},
         "spec.checkpointStorage.volumeName: 'ckpt' is not a volume in spec.pod.volumes"),
        ({"checkpointStorage": {"claimName": "a", "volumeName": "b"}}, "not both"),
        ({"pod": {"env": [{"name": "RANK", "value": "3"}]}}, "spec.pod.env[0].name: RANK is set by the operator"),
        ({"pod": {"volumeMounts": [{"name": "data", "mountPath": "/data"}]}},
         "spec.pod.volumeMounts[0].name: 'data' is not a volume"),
        ({"pod": {"volumes": [{"name": "adamw-config", "emptyDir": {}}]}}, "is used by the operator"),
        ({"pod": {"volumes": [{"name": "x", "emptyDir": {}}],
                  "volumeMounts": [{"name": "x", "mountPath": "/etc/adamw"}]}},
         "is where the operator mounts the trainer config"),
        ({"gpusPerReplica": 1, "trainer": {"device": "cpu"}}, "spec.trainer.device: is 'cpu'"),
    ],
)
def test_runtime_problems_explain_the_fix(patch, expected):
    _, spec = parse_job(job_manifest(**patch))
    problems = runtime_problems(spec)
    assert any(expected in p for p in problems), problems


def test_runnable_spec_has_no_problems():
    _, spec = parse_job(job_manifest(
        checkpointStorage={"volumeName": "shared", "subPath": "demo"},
        pod={"volumes": [{"name": "shared", "nfs": {"server": "nfs", "path": "/x"}}],
             "env": [{"name": "NCCL_DEBUG", "value": "INFO"}]},
    ))
    assert runtime_problems(spec) == []


def test_a_job_without_image_uses_the_operators_default_or_is_invalid():
    manifest = job_manifest()
    del manifest["spec"]["image"]
    _, spec = parse_job(manifest)
    assert any(p.startswith("spec.image: not set") and "--default-trainer-image" in p
               for p in runtime_problems(spec))
    filled = with_default_image(spec, "registry.example/adamw-trainer:1.0")
    assert filled.image == "registry.example/adamw-trainer:1.0" and runtime_problems(filled) == []
    # A job's own image always wins over the default.
    _, own = parse_job(job_manifest(image="mine:2"))
    assert with_default_image(own, "registry.example/adamw-trainer:1.0").image == "mine:2"
