"""The trainer's side of version skew: the config schema it reads, where it says so, and how
it refuses fields it does not know (docs/operator.md, "Version skew")."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from adamw_trainer.config import (
    CONFIG_SCHEMA_VERSION,
    FIELD_SCHEMA_VERSIONS,
    TrainerConfig,
    introduced_in,
)
from adamw_trainer.exit_codes import TerminationMessage
from pydantic import BaseModel
from trainer_process import (
    free_port,
    run_trainer,
    small_config,
    trainer_cmd,
    trainer_env,
    wait_for_status,
    write_config,
)

DOCKERFILE = Path(__file__).resolve().parents[2] / "trainer_image" / "Dockerfile"


def test_image_label_is_the_schema_the_trainer_reads():
    labels = re.findall(r'io\.adamw\.trainer\.config-schema="([^"]*)"', DOCKERFILE.read_text())
    assert labels == [str(CONFIG_SCHEMA_VERSION)]


def _model_at(path: str) -> type[BaseModel] | None:
    """The model holding the last part of `path`, or None when a part is not a field."""
    model: type[BaseModel] = TrainerConfig
    *parents, leaf = path.split(".")
    for part in parents:
        field = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
        if field is None:
            return None
        inner = [t for t in (getattr(field.annotation, "__args__", None) or (field.annotation,))
                 if isinstance(t, type) and issubclass(t, BaseModel)]
        if not inner:
            return None
        model = inner[0]
    return model if any((f.alias or n) == leaf for n, f in model.model_fields.items()) else None


@pytest.mark.parametrize("path, version", sorted(FIELD_SCHEMA_VERSIONS.items()) or [pytest.param(
    "", 0, marks=pytest.mark.skip(reason="no field added after schema 1 yet"))])
def test_every_registered_field_exists_and_belongs_to_a_schema_this_trainer_reads(path, version):
    assert _model_at(path) is not None, f"{path} is not a field of TrainerConfig"
    assert 2 <= version <= CONFIG_SCHEMA_VERSION


def test_the_registry_check_tells_fields_from_non_fields():
    assert _model_at("training.maxSteps") is TrainerConfig.model_fields["training"].annotation
    assert _model_at("model.huggingface.path") is not None  # through an optional section
    assert _model_at("training.fooBar") is None and _model_at("nope.maxSteps") is None


def test_a_field_is_as_new_as_itself_or_its_section():
    registry = {"profiling": 3, "training.fooBar": 2, "optimizer.groups.fooBar": 4}
    assert introduced_in("training.maxSteps", registry) == 1
    assert introduced_in("training.fooBar", registry) == 2
    assert introduced_in("profiling.enabled.deep", registry) == 3
    assert introduced_in("optimizer.groups[3].fooBar", registry) == 4
    assert introduced_in("training.maxSteps") == 1


def test_unknown_fields_exit_2_naming_them_and_the_schema(tmp_path):
    cfg = small_config(tmp_path, training={"fooBar": 1}, profiling={"enabled": True})
    done = run_trainer(write_config(tmp_path, cfg), timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert f"this trainer reads config schema {CONFIG_SCHEMA_VERSION}" in done.stderr
    msg = json.loads((tmp_path / "termination-log").read_text())
    assert msg["reason"] == "InvalidConfig" and msg["exitCode"] == 2
    assert sorted(msg["unknownFields"]) == ["profiling", "training.fooBar"]
    assert msg["configSchema"] == CONFIG_SCHEMA_VERSION


def test_other_config_errors_name_no_unknown_field(tmp_path):
    done = run_trainer(write_config(tmp_path, small_config(tmp_path, optimizer={"lr": -1})), timeout=60)
    msg = json.loads((tmp_path / "termination-log").read_text())
    assert done.returncode == 2 and msg["unknownFields"] == [] and msg["configSchema"] == CONFIG_SCHEMA_VERSION


def test_termination_messages_with_and_without_the_skew_fields_read_back():
    old = TerminationMessage.from_json('{"reason":"InvalidConfig","exitCode":2,"message":"bad"}')
    assert old.unknown_fields == [] and old.config_schema is None  # a trainer from before schemas
    many = [f"training.field{i}" for i in range(50)]
    new = TerminationMessage("InvalidConfig", 2, message="x" * 9000, unknown_fields=many, config_schema=3)
    text = new.to_json()
    back = TerminationMessage.from_json(text)
    assert len(text) <= 4096 and back.config_schema == 3 and back.unknown_fields == many[:20]


def test_status_reports_the_config_schema(tmp_path):
    port = free_port()
    cfg = small_config(tmp_path, training={"maxSteps": 100_000}, metrics={"port": port, "host": "127.0.0.1"})
    proc = subprocess.Popen(trainer_cmd(write_config(tmp_path, cfg)), env=trainer_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for_status(port, proc)["configSchema"] == CONFIG_SCHEMA_VERSION
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
