"""Read and validate an AdamWTrainingJob manifest with the operator's own model and checks.

The messages are the operator's: `parse_job` is what the CRD schema is generated from,
and `runtime_problems` is what the operator reports as the `InvalidSpec` condition.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from adamw_trainer.config import ConfigError

from ..api.checks import runtime_problems
from ..api.constants import KIND
from ..api.spec import AdamWTrainingJobSpec, parse_job, with_default_image


def load_manifest(path: Path) -> dict[str, Any]:
    """The AdamWTrainingJob document of a YAML/JSON file (other kinds, e.g. a PVC, are skipped)."""
    try:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except OSError as err:
        raise ConfigError([f"cannot read the file: {err.strerror or err}"], str(path)) from None
    except yaml.YAMLError as err:
        raise ConfigError([f"not valid YAML: {err}"], str(path)) from None
    jobs = [d for d in documents if isinstance(d, dict) and d.get("kind") == KIND]
    if len(jobs) > 1:
        names = ", ".join(str((j.get("metadata") or {}).get("name")) for j in jobs)
        raise ConfigError([f"<root>: the file holds {len(jobs)} {KIND}s ({names}); run one at a time"],
                          str(path))
    if jobs:
        return jobs[0]
    if len(documents) == 1:
        return documents[0]  # let validation name what is wrong with it (kind, apiVersion)
    raise ConfigError([f"<root>: no {KIND} document in the file"], str(path))


def validate_manifest(manifest: Any, source: str) -> tuple[dict[str, Any], AdamWTrainingJobSpec]:
    """(metadata, spec), or ConfigError with one `field: problem; fix` line per problem."""
    metadata, spec = parse_job(manifest, source)
    # Local workers are processes of this machine's .venv: the image is never pulled.
    spec = with_default_image(spec, "local")
    problems = runtime_problems(spec, metadata.get("annotations"))
    if problems:
        raise ConfigError(problems, source)
    return metadata, spec
