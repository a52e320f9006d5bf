"""Version skew (docs/operator.md): a newer operator, an older pinned trainer image.

The "old image" is the real trainer of this tree. The "newer operator" is this operator with
a trainer config that has one more field, `training.fooBar`, registered as introduced in the
next config schema, so the operator knows a field the trainer does not.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from adamw_operator.api.checks import runtime_problems
from adamw_operator.api.spec import AdamWTrainingJobSpec, parse_spec
from adamw_operator.builders.configmap import render_trainer_config
from adamw_operator.builders.pods import build_worker_pod
from adamw_operator.decisions import decide
from adamw_operator.observe import observe_pod
from adamw_operator.skew import ANNOTATION_CONFIG_SCHEMA
from adamw_operator.status import get_condition
from adamw_trainer.config import (
    CONFIG_SCHEMA_VERSION,
    FIELD_SCHEMA_VERSIONS,
    TrainerConfig,
    TrainingConfig,
    parse_config,
)
from pydantic import Field

from tests.operator.jobs import job_manifest

NEWER = CONFIG_SCHEMA_VERSION + 1
IMAGE = "ghcr.io/example/adamw-trainer:0.1.0"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


class NewerTraining(TrainingConfig):
    foo_bar: int = Field(0, ge=0, description="A knob the next config schema adds.")


class NewerTrainerConfig(TrainerConfig):
    training: NewerTraining = Field(default_factory=NewerTraining)


@pytest.fixture
def newer_operator(monkeypatch):
    """This operator as the next release: it knows training.fooBar, from schema NEWER."""
    monkeypatch.setitem(FIELD_SCHEMA_VERSIONS, "training.fooBar", NEWER)


def newer_spec(tmp_path: Path | None = None, **training) -> AdamWTrainingJobSpec:
    trainer = {
        "model": {"layers": 1, "heads": 2, "width": 32, "contextLength": 16},
        "data": {"source": "synthetic", "evalIntervalSteps": 0},
        "training": {"maxSteps": 3, "batchSize": 2, "logIntervalSteps": 1, "threads": 1, **training},
        "checkpoint": {"dir": str(tmp_path / "ckpt") if tmp_path else "/checkpoints", "intervalSteps": 0},
        "metrics": {"port": 0},
    }
    if tmp_path:
        trainer["terminationMessagePath"] = str(tmp_path / "termination-log")
    spec = parse_spec(job_manifest(image=IMAGE, replicas=1)["spec"])
    return spec.model_copy(update={"trainer": NewerTrainerConfig.model_validate(trainer)})


def run_old_trainer(tmp_path: Path, rendered: str) -> subprocess.CompletedProcess:
    config = tmp_path / "config.yaml"
    config.write_text(rendered)
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "adamw_trainer", "--config", str(config)],
                          env=env, capture_output=True, text=True, timeout=180)


def test_old_trainer_runs_a_job_that_does_not_set_the_newer_field(tmp_path, newer_operator):
    spec = newer_spec(tmp_path)
    rendered = render_trainer_config(spec)
    assert "fooBar" not in rendered  # its default is left to the trainer, which has none
    done = run_old_trainer(tmp_path, rendered)
    assert done.returncode == 0, done.stderr
    end = json.loads((tmp_path / "termination-log").read_text())
    assert end["reason"] == "Succeeded" and end["step"] == 3


def test_job_setting_the_newer_field_on_an_old_image_fails_at_once_naming_field_and_image(
        tmp_path, newer_operator):
    spec = newer_spec(tmp_path, fooBar=4)
    done = run_old_trainer(tmp_path, render_trainer_config(spec))
    assert done.returncode == 2 and done.stdout == ""  # refused before any work
    # What the kubelet reports for the worker: its exit code and the termination message.
    pod = build_worker_pod("demo", "default", "u", spec, rank=0, attempt=0, restart_count=0)
    pod["status"] = {"phase": "Failed", "containerStatuses": [{"name": "trainer", "state": {"terminated": {
        "exitCode": 2, "reason": "Error", "message": (tmp_path / "termination-log").read_text()}}}]}
    plan = decide(spec=spec, status={"phase": "Running", "attempt": 0}, workers=[observe_pod(pod)], now=NOW)
    failed = get_condition(plan.status, "Failed")
    assert plan.status["phase"] == "Failed" and failed["reason"] == "InvalidConfig"
    assert plan.create_ranks == [] and plan.status["restarts"] == 0  # no restart loop
    assert (f"spec.trainer.training.fooBar needs trainer config schema {NEWER}; image {IMAGE} "
            f"supports {CONFIG_SCHEMA_VERSION}: upgrade spec.image or remove the field") in failed["message"]


def test_a_field_unknown_to_the_image_but_not_newer_says_so(tmp_path):
    """A trainer built apart from this operator (no registry entry for the field)."""
    spec = newer_spec(tmp_path, fooBar=4)
    assert run_old_trainer(tmp_path, render_trainer_config(spec)).returncode == 2
    pod = build_worker_pod("demo", "default", "u", spec, rank=0, attempt=0, restart_count=0)
    pod["status"] = {"phase": "Failed", "containerStatuses": [{"name": "trainer", "state": {"terminated": {
        "exitCode": 2, "message": (tmp_path / "termination-log").read_text()}}}]}
    message = observe_pod(pod).termination.message
    assert f"spec.trainer.training.fooBar is not a field image {IMAGE} knows" in message


@pytest.mark.parametrize("annotation, refused", [(str(CONFIG_SCHEMA_VERSION), True), (str(NEWER), False)])
def test_annotated_image_schema_refuses_a_newer_field_before_any_pod(newer_operator, annotation, refused):
    spec = newer_spec(fooBar=4)
    problems = runtime_problems(spec, {ANNOTATION_CONFIG_SCHEMA: annotation})
    expected = (f"spec.trainer.training.fooBar needs trainer config schema {NEWER}; image {IMAGE} "
                f"supports {CONFIG_SCHEMA_VERSION}: upgrade spec.image or remove the field")
    assert (expected in problems) is refused
    # The field left at its default needs nothing newer, whatever the image.
    assert runtime_problems(newer_spec(), {ANNOTATION_CONFIG_SCHEMA: str(CONFIG_SCHEMA_VERSION)}) == []
    # Without the annotation the operator cannot know; the trainer's fail-fast exit covers it.
    assert runtime_problems(spec) == []


@pytest.mark.parametrize("value", ["two", "0", "-1", ""])
def test_a_malformed_schema_annotation_is_invalid_spec(value):
    (problem,) = runtime_problems(newer_spec(), {ANNOTATION_CONFIG_SCHEMA: value})
    assert problem.startswith(f"metadata.annotations[{ANNOTATION_CONFIG_SCHEMA}]")


def test_a_minimal_spec_renders_only_its_own_keys_and_the_owned_ones():
    spec = parse_spec(job_manifest()["spec"])
    assert yaml.safe_load(render_trainer_config(spec)) == {
        # what the job set
        "model": {"layers": 1, "heads": 2, "width": 32, "contextLength": 16},
        "training": {"maxSteps": 40, "batchSize": 4},
        "checkpoint": {"dir": "/checkpoints", "intervalSteps": 10,
                       # owned: the grace period is sized from it
                       "preemptionSaveTimeoutSeconds": 60.0},
        # owned: the container port and the /status poll; where the kubelet reads the message
        "metrics": {"port": 9090},
        "terminationMessagePath": "/dev/termination-log",
    }


def test_api_server_defaults_are_not_rendered_and_the_hash_is_the_trainers():
    """On a cluster the API server fills every CRD default into the stored spec: the render
    and the config hash are those of the spec as written."""
    written = parse_spec(job_manifest()["spec"])
    served = parse_spec(written.model_dump(mode="json", by_alias=True))  # every default explicit
    assert render_trainer_config(served) == render_trainer_config(written)
    assert served.trainer.config_hash() == written.trainer.config_hash()
    # The trainer resolves the rendered config to the very same config, so the hash the pod is
    # annotated with is the one the trainer reports in /status and its checkpoints.
    resolved = parse_config(yaml.safe_load(render_trainer_config(served)))
    assert resolved == written.trainer and resolved.config_hash() == written.trainer.config_hash()


def test_a_value_that_switches_a_section_on_is_rendered_even_when_empty():
    spec = parse_spec(job_manifest(trainer={
        "model": {"source": "huggingface", "huggingface": {"path": "/models/tiny"}},
        "finetune": {"lora": {}},
        "data": {"source": "synthetic"},
    })["spec"])
    rendered = yaml.safe_load(render_trainer_config(spec))
    assert rendered["finetune"] == {"lora": {}}
    assert parse_config(rendered) == spec.trainer


def test_decide_refuses_the_job_before_any_pod_when_its_image_is_too_old(newer_operator):
    """The job's annotations reach `decide`: InvalidSpec, an Event, and nothing created."""
    from datetime import UTC, datetime

    from adamw_operator.decisions import decide
    from adamw_operator.status import get_condition

    plan = decide(spec=newer_spec(fooBar=4), status=None, workers=[], now=datetime.now(UTC),
                  annotations={ANNOTATION_CONFIG_SCHEMA: str(CONFIG_SCHEMA_VERSION)})
    cond = get_condition(plan.status, "InvalidSpec")
    assert cond["status"] == "True" and "training.fooBar needs trainer config schema" in cond["message"]
    assert plan.create_ranks == [] and [e.reason for e in plan.events] == ["InvalidSpec"]
    ok = decide(spec=newer_spec(fooBar=4), status=None, workers=[], now=datetime.now(UTC),
                annotations={ANNOTATION_CONFIG_SCHEMA: str(NEWER)})
    assert ok.create_ranks == [0]
