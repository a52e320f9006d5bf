"""Validate a custom resource against the CRD offline, as the API server would.

The API server applies schema defaults, checks the OpenAPI schema, then evaluates the
`x-kubernetes-validations` CEL rules. Here: defaults by walking the schema, the schema with
`jsonschema` (Draft 4: the boolean `exclusiveMinimum` of OpenAPI 3.0), CEL with cel-python.
Usable by any test: `problems = validate(crd, manifest)`; empty means the cluster accepts it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "crds" / "adamwtrainingjobs.training.adamw.io.yaml"


def load_crd(path: Path = CRD_PATH) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def openapi_schema(crd: dict[str, Any]) -> dict[str, Any]:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def apply_defaults(schema: dict[str, Any], obj: Any) -> Any:
    """Fill `default`s into absent fields, recursively (structural defaulting)."""
    if isinstance(obj, dict) and "properties" in schema:
        for name, sub in schema["properties"].items():
            if name not in obj and "default" in sub:
                obj[name] = copy.deepcopy(sub["default"])
            if name in obj:
                obj[name] = apply_defaults(sub, obj[name])
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(schema["items"], item) for item in obj]
    return obj


def _cel_problems(schema: dict[str, Any], obj: Any, path: str, env: celpy.Environment) -> list[str]:
    problems = []
    for rule in schema.get("x-kubernetes-validations", []):
        program = env.program(env.compile(rule["rule"]))
        result = program.evaluate({"self": celpy.json_to_cel(obj)})
        if isinstance(result, celpy.CELEvalError) or not bool(result):
            problems.append(f"{path}: {rule['message']}")
    if isinstance(obj, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if name in obj:
                problems += _cel_problems(sub, obj[name], f"{path}.{name}", env)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(obj):
            problems += _cel_problems(schema["items"], item, f"{path}[{i}]", env)
    return problems


def validate(crd: dict[str, Any], manifest: dict[str, Any]) -> list[str]:
    """Problems the API server would report for `manifest` (empty: accepted)."""
    schema = openapi_schema(crd)
    obj = apply_defaults(schema, copy.deepcopy(manifest))
    validator = jsonschema.Draft4Validator(schema)
    problems = [
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(obj)
    ]
    if problems:
        return problems  # the API server stops before CEL when the schema fails
    return _cel_problems(schema, obj, "<root>", celpy.Environment())
