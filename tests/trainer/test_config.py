"""The trainer config: defaults, camelCase files, and errors that name the field and the fix."""

import json

import pytest
import yaml
from adamw_trainer.config import ConfigError, TrainerConfig, load_config, parse_config


def test_defaults_are_valid_and_hash_is_stable():
    a, b = TrainerConfig(), TrainerConfig()
    assert a.config_hash() == b.config_hash()
    assert len(a.config_hash()) == 12


def test_camel_case_yaml_round_trip(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"model": {"contextLength": 64}, "optimizer": {"weightDecay": 0.0}}))
    cfg = load_config(f)
    assert cfg.model.context_length == 64
    assert cfg.optimizer.weight_decay == 0.0
    assert cfg.to_dict()["model"]["contextLength"] == 64
    assert parse_config(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_hash_changes_with_any_field():
    assert TrainerConfig().config_hash() != parse_config({"training": {"seed": 1}}).config_hash()


@pytest.mark.parametrize(
    "data, field, words",
    [
        ({"optimizer": {"lr": -0.1}}, "optimizer.lr", "greater than 0"),
        ({"optimizer": {"betas": [0.9, 1.0]}}, "optimizer.betas", "outside [0, 1)"),
        ({"training": {"batchSize": "big"}}, "training.batchSize", "valid integer"),
        ({"training": {"maxStep": 5}}, "training.maxStep", "unknown field"),
        ({"model": {"width": 100, "heads": 3}}, "model", "divisible by heads"),
        ({"data": {"source": "text"}}, "data", "data.path is required"),
        ({"training": {"precision": "fp8"}}, "training.precision", "fp32"),
        ({"model": {"vocabSize": 100}}, "<root>", "vocabSize to 256"),
        ({"device": "tpu"}, "device", "auto"),
    ],
)
def test_invalid_config_names_field_and_problem(data, field, words):
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    text = str(err.value)
    assert f"{field}:" in text
    assert words in text


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_config_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, adamw_trainer.config, adamw_trainer.exit_codes; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
