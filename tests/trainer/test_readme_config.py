"""README's trainer section documents every config field, and its examples are valid."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from adamw_trainer.config import TrainerConfig, load_config, parse_config
from pydantic.alias_generators import to_camel

ROOT = Path(__file__).resolve().parents[2]


def trainer_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Configuring the trainer")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def test_every_config_field_is_documented():
    section = trainer_section()
    missing = []
    for group, gfield in TrainerConfig.model_fields.items():
        sub = getattr(gfield.annotation, "model_fields", None)
        names = [to_camel(group)] + [to_camel(f) for f in (sub or {})]
        missing += [n for n in names if f"`{n}`" not in section]
    assert not missing, f"README's 'Configuring the trainer' lacks {missing}"


def test_yaml_examples_are_valid_configs():
    blocks = re.findall(r"```yaml\n(.*?)```", trainer_section(), re.S)
    assert blocks
    for block in blocks:
        parse_config(yaml.safe_load(block))
    load_config(ROOT / "examples" / "quickstart-trainer.yaml")
