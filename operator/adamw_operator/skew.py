"""Version skew between the operator and a job's trainer image (pure; docs/operator.md).

The operator and the trainer image are released apart, and a job may pin an older image.
Three rules keep a newer operator from breaking it:

- The operator renders only the fields a job sets, plus the few it builds the pod around
  (`OWNED_FIELDS`), never the defaults: the trainer applies its own. "Set" means "differs
  from its default": on a cluster the API server fills every CRD default into the stored
  spec, so presence cannot tell a user's value from a default.
- Each field added after schema 1 records the config schema that introduced it
  (`adamw_trainer.config.FIELD_SCHEMA_VERSIONS`). When a job's annotation
  `training.adamw.io/trainer-config-schema` says which schema its image reads (the image's
  label `io.adamw.trainer.config-schema`), a set field that is newer is an InvalidSpec
  problem before any pod exists (`schema_problems`).
- Without the annotation the trainer fails fast: exit 2 with the unknown fields and its
  schema in the termination message, which `failure_message` turns into a sentence naming
  the field, the image and the schema it needs.

This module imports only the trainer's config contract and the API's names (no builders,
no kopf), so `api.checks` can use it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from adamw_trainer.config import FIELD_SCHEMA_VERSIONS, TrainerConfig, introduced_in

from .api.constants import GROUP

ANNOTATION_CONFIG_SCHEMA = f"{GROUP}/trainer-config-schema"

# Values the operator builds each pod around, so they are rendered even at their default:
# the checkpoint volume is mounted at checkpoint.dir, the grace period is sized from the save
# timeout, the container port and the /status poll use metrics.port, and the kubelet (and the
# local runner) read the termination message at terminationMessagePath. All are schema 1.
OWNED_FIELDS: tuple[tuple[str, ...], ...] = (
    ("checkpoint", "dir"),
    ("checkpoint", "preemptionSaveTimeoutSeconds"),
    ("metrics", "port"),
    ("terminationMessagePath",),
)


def config_data(cfg: TrainerConfig) -> dict[str, Any]:
    """What the operator renders for the trainer: the fields set (not at their default) and
    the owned ones, camelCase, JSON-able. The trainer fills in the rest with its defaults."""
    data = cfg.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    full = cfg.to_dict()
    for path in OWNED_FIELDS:
        value: Any = full
        for key in path:
            value = value[key]
        node = data
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return data


def set_fields(data: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Leaf paths of rendered config data (`training.maxSteps`, `optimizer.groups[0].name`);
    an empty section that switches something on (`finetune.lora: {}`) is a leaf itself."""
    paths: list[str] = []
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value and not _free_form(path):
            paths += set_fields(value, path)
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            for i, item in enumerate(value):
                paths += set_fields(item, f"{path}[{i}]") or [f"{path}[{i}]"]
        else:
            paths.append(path)
    return paths


# Maps whose keys are the user's own (model.huggingface.config, model.python.options): their
# keys are data, not config fields, so they never count as fields of a newer schema.
_FREE_FORM = re.compile(r"^model\.(huggingface\.config|python\.options)$")


def _free_form(path: str) -> bool:
    return bool(_FREE_FORM.match(path))


def newer_fields(cfg: TrainerConfig, image_schema: int, registry: Mapping[str, int] | None = None
                 ) -> list[tuple[str, int]]:
    """(path, schema that introduced it) for each set field an image at `image_schema` cannot read."""
    registry = FIELD_SCHEMA_VERSIONS if registry is None else registry
    found = [(path, introduced_in(path, dict(registry))) for path in set_fields(config_data(cfg))]
    return [(path, needs) for path, needs in found if needs > image_schema]


def _needs(path: str, needs: int, image: str, image_schema: int) -> str:
    return (f"spec.trainer.{path} needs trainer config schema {needs}; image {image} supports "
            f"{image_schema}: upgrade spec.image or remove the field")


def image_schema(annotations: Mapping[str, str] | None) -> tuple[int | None, str | None]:
    """(schema the job's image reads, per its annotation, or None; a problem with the value)."""
    raw = (annotations or {}).get(ANNOTATION_CONFIG_SCHEMA)
    if raw is None:
        return None, None
    text = str(raw).strip()
    if not text.isdigit() or int(text) < 1:
        return None, (f"metadata.annotations[{ANNOTATION_CONFIG_SCHEMA}]: '{raw}' is not a config "
                      "schema version; use the image's io.adamw.trainer.config-schema label (an "
                      "integer from 1), or remove the annotation")
    return int(text), None


def schema_problems(cfg: TrainerConfig, image: str | None, annotations: Mapping[str, str] | None,
                    registry: Mapping[str, int] | None = None) -> list[str]:
    """InvalidSpec lines for fields the job sets that its image (annotated schema) cannot read."""
    schema, problem = image_schema(annotations)
    if problem:
        return [problem]
    if schema is None:
        return []  # unknown: the trainer's own fail-fast exit covers it
    return [_needs(path, needs, image or "(unset)", schema)
            for path, needs in newer_fields(cfg, schema, registry)]


def failure_message(unknown_fields: Sequence[str], image: str | None, image_schema: int | None,
                    registry: Mapping[str, int] | None = None) -> str:
    """The sentence for a trainer that exited InvalidConfig on fields it does not know."""
    registry = FIELD_SCHEMA_VERSIONS if registry is None else registry
    image = image or "(unset)"
    reads = image_schema if image_schema is not None else 1  # trainers before schemas read 1
    lines = []
    for path in unknown_fields:
        needs = introduced_in(path, dict(registry))
        if needs > reads:
            lines.append(_needs(path, needs, image, reads))
        else:  # not newer by this operator's registry: a trainer built apart from it
            lines.append(f"spec.trainer.{path} is not a field image {image} knows (it reads trainer "
                         f"config schema {reads}): use the trainer image this operator was released "
                         "with, or remove the field")
    return "; ".join(lines)
