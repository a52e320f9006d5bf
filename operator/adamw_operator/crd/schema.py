"""Turn pydantic's JSON Schema into a Kubernetes structural OpenAPI v3 schema.

Structural means: every node has a `type` (or an x-kubernetes-* escape), no `$ref`, no
`anyOf` used for nullability, no `additionalProperties: false` next to `properties`
(the API server prunes unknown fields instead), and `exclusiveMinimum` is a boolean.
"""

from __future__ import annotations

import copy
from typing import Any

# JSON Schema keywords Kubernetes accepts in a structural schema (the rest is dropped).
_KEEP = {
    "type", "description", "default", "enum", "format", "properties", "items", "required",
    "additionalProperties", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    "minLength", "maxLength", "minItems", "maxItems", "pattern", "nullable",
}


class SchemaError(ValueError):
    """The pydantic model uses a construct the generator cannot express structurally."""


def structural(root: dict[str, Any], path: str = "") -> dict[str, Any]:
    """Convert a pydantic `model_json_schema(by_alias=True)` result (with `$defs`)."""
    defs = root.get("$defs", {})
    return _convert(root, defs, path or "<root>")


def _deref(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
        # Sibling keywords of $ref (description, default) override the target's.
        target.update({k: v for k, v in node.items() if k != "$ref"})
        node = target
    return node


def _convert(
    node: dict[str, Any], defs: dict[str, Any], path: str, named: bool = True
) -> dict[str, Any]:
    """`named`: the node is a property, so `kubectl explain` needs its description."""
    node = _deref(node, defs)
    optional = False  # `X | None`: an absent section means "off", so it gets no default
    if "anyOf" in node:
        options = [_deref(o, defs) for o in node["anyOf"]]
        non_null = [o for o in options if o.get("type") != "null"]
        optional = len(non_null) < len(options)
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if rest.get("default", "x") is None:
            rest.pop("default")
        types = {o.get("type") for o in non_null}
        if len(non_null) == 1:
            merged = dict(non_null[0])
            merged.update(rest)
            node = merged
        elif types == {"integer", "string"}:
            node = {**rest, "x-kubernetes-int-or-string": True}
        else:
            raise SchemaError(f"{path}: a union of {sorted(map(str, types))} is not structural")
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-"):
            out[key] = value
        elif key in _KEEP:
            out[key] = value
    if node.get("x-kubernetes-preserve-unknown-fields"):
        out.setdefault("type", "object")
    if "prefixItems" in node:
        item_types = {_deref(i, defs).get("type") for i in node["prefixItems"]}
        if len(item_types) != 1:
            raise SchemaError(f"{path}: a tuple of mixed types is not structural")
        out["items"] = {"type": item_types.pop()}
    if isinstance(node.get("exclusiveMinimum"), (int, float)) and not isinstance(
        node.get("exclusiveMinimum"), bool
    ):
        out["minimum"], out["exclusiveMinimum"] = node["exclusiveMinimum"], True
    if isinstance(node.get("exclusiveMaximum"), (int, float)) and not isinstance(
        node.get("exclusiveMaximum"), bool
    ):
        out["maximum"], out["exclusiveMaximum"] = node["exclusiveMaximum"], True
    if node.get("properties"):
        out["type"] = "object"
        out["properties"] = {
            name: _convert(sub, defs, f"{path}.{name}") for name, sub in node["properties"].items()
        }
        out.pop("additionalProperties", None)
        if named and not optional and "default" not in out and not out.get("required"):
            # An omitted section defaults to {} so its fields' defaults (and its CEL rules)
            # apply on the server exactly as pydantic's default_factory does; an optional
            # section (`X | None`, e.g. finetune.lora) stays absent, as in pydantic.
            # Spelled out in full, not `{}`: the API server checks a default against the
            # section's CEL rules without applying the fields' own defaults first.
            out["default"] = {name: sub["default"] for name, sub in out["properties"].items()
                              if "default" in sub}
    elif out.pop("properties", None) is not None and out.get("x-kubernetes-preserve-unknown-fields"):
        out.pop("additionalProperties", None)
    elif out.get("type") == "object" and not out.get("x-kubernetes-preserve-unknown-fields"):
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            out["additionalProperties"] = _convert(extra, defs, f"{path}.*", named=False)
        else:
            out.pop("additionalProperties", None)
            out["x-kubernetes-preserve-unknown-fields"] = True
    elif "additionalProperties" in out:
        out.pop("additionalProperties")
    if "items" in node and isinstance(node["items"], dict):
        out["items"] = _convert(node["items"], defs, f"{path}[]", named=False)
    if "type" not in out and not (
        out.get("x-kubernetes-int-or-string") or out.get("x-kubernetes-preserve-unknown-fields")
    ):
        raise SchemaError(f"{path}: no type")
    if named and not out.get("description"):
        raise SchemaError(f"{path}: no description; add Field(description=...) to the model")
    return out
