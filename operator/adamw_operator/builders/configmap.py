"""The trainer config, delivered as an immutable ConfigMap `<job>-config-<hash>` (key `config.yaml`).

Immutable and named by a hash of the job's uid and the rendered config, so the operator only
ever *creates* it: a 409 AlreadyExists means this very job already created this very content.
The operator holds no `patch` (nor `update`, nor `delete`) on ConfigMaps. A spec change gets
a new name on the next attempt; earlier ones go with the job through its owner reference.
The uid in the hash keeps a job recreated under the same name from adopting its
predecessor's ConfigMap while the garbage collector is still deleting it.
"""

from __future__ import annotations

import hashlib
from typing import Any

import yaml

from ..api.constants import ANNOTATION_CONFIG_HASH, CONFIG_KEY
from ..api.spec import AdamWTrainingJobSpec
from ..skew import config_data
from .names import child_metadata, config_name


def render_trainer_config(spec: AdamWTrainingJobSpec) -> str:
    """The trainer config as YAML, exactly what `adamw-train --config` reads: the fields the job
    sets and the ones the operator owns, never defaults, so an older trainer image still reads
    it (docs/operator.md, Version skew). The trainer logs the config it resolved."""
    return yaml.safe_dump(config_data(spec.trainer), sort_keys=False)


def _config_name(job: str, uid: str, rendered: str) -> str:
    digest = hashlib.sha256(f"{uid}\n{rendered}".encode()).hexdigest()
    return config_name(job, digest[:8])


def build_configmap(job: str, namespace: str, uid: str, spec: AdamWTrainingJobSpec) -> dict[str, Any]:
    """The job's immutable trainer-config ConfigMap; mount it by its `metadata.name`."""
    rendered = render_trainer_config(spec)
    meta = child_metadata(job, namespace, uid, _config_name(job, uid, rendered))
    meta["annotations"] = {ANNOTATION_CONFIG_HASH: spec.trainer.config_hash()}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "immutable": True,
        "data": {CONFIG_KEY: rendered},
    }
