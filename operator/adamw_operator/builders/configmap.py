"""The trainer config, delivered as the ConfigMap `<job>-config` (key `config.yaml`)."""

from __future__ import annotations

from typing import Any

import yaml

from ..api.constants import ANNOTATION_CONFIG_HASH, CONFIG_KEY
from ..api.spec import AdamWTrainingJobSpec
from .names import child_metadata, config_name


def render_trainer_config(spec: AdamWTrainingJobSpec) -> str:
    """The resolved trainer config as YAML, exactly what `adamw-train --config` reads."""
    return yaml.safe_dump(spec.trainer.to_dict(), sort_keys=False)


def build_configmap(job: str, namespace: str, uid: str, spec: AdamWTrainingJobSpec) -> dict[str, Any]:
    meta = child_metadata(job, namespace, uid, config_name(job))
    meta["annotations"] = {ANNOTATION_CONFIG_HASH: spec.trainer.config_hash()}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "data": {CONFIG_KEY: render_trainer_config(spec)},
    }
