"""Structural JSON schemas for the Prometheus Operator objects the chart renders.

The Prometheus Operator's own CRDs are not available offline here, so these stand in for
them: the subset of `monitoring.coreos.com/v1` fields this chart uses, spelled as in the
upstream API (camelCase), with `additionalProperties: false` so a misspelt or misplaced
field fails like an unknown field does under the real CRD with server-side validation.
"""

from __future__ import annotations

_STR = {"type": "string"}
_LABELS = {"type": "object", "additionalProperties": _STR}
_DURATION = {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
_META = {"type": "object", "required": ["name", "namespace"]}
_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": _LABELS,
        "matchExpressions": {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "required": ["key", "operator"],
            "properties": {"key": _STR, "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                           "values": {"type": "array", "items": _STR}}}},
    },
}
_NS_SELECTOR = {"type": "object", "additionalProperties": False,
                "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": _STR}}}
_RELABEL = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "sourceLabels": {"type": "array", "items": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"}},
        "separator": _STR, "targetLabel": _STR, "regex": _STR, "modulus": {"type": "integer"},
        "replacement": _STR,
        "action": {"enum": ["replace", "Replace", "keep", "Keep", "drop", "Drop", "hashmod", "HashMod",
                            "labelmap", "LabelMap", "labeldrop", "LabelDrop", "labelkeep", "LabelKeep",
                            "lowercase", "Lowercase", "uppercase", "Uppercase", "keepequal", "KeepEqual",
                            "dropequal", "DropEqual"]},
    },
}
_ENDPOINT_COMMON = {
    "path": _STR, "interval": _DURATION, "scrapeTimeout": _DURATION, "honorLabels": {"type": "boolean"},
    "scheme": {"enum": ["http", "https"]},
    "relabelings": {"type": "array", "items": _RELABEL},
    "metricRelabelings": {"type": "array", "items": _RELABEL},
}


def _object(spec: dict) -> dict:
    """A namespaced object of one of these kinds, with the given `spec` schema."""
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"metadata": _META, "spec": spec},
    }


def _monitor(endpoints_field: str, port_fields: dict) -> dict:
    """ServiceMonitor/PodMonitor: same spec but for the endpoints list's name and port fields."""
    return _object({
        "type": "object", "additionalProperties": False, "required": ["selector", endpoints_field],
        "properties": {
            "jobLabel": _STR, "selector": _SELECTOR, "namespaceSelector": _NS_SELECTOR,
            endpoints_field: {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False,
                "properties": {"port": _STR, **port_fields, **_ENDPOINT_COMMON}}},
        },
    })


SERVICE_MONITOR = _monitor("endpoints", {"targetPort": {"type": ["string", "integer"]}})
POD_MONITOR = _monitor("podMetricsEndpoints", {"portNumber": {"type": "integer"}})

_RULE = {
    "type": "object", "additionalProperties": False, "required": ["expr"],
    "oneOf": [{"required": ["record"]}, {"required": ["alert"]}],
    "properties": {
        "record": _STR, "alert": _STR, "expr": {"type": ["string", "integer"]}, "for": _DURATION,
        "keep_firing_for": _DURATION, "labels": _LABELS, "annotations": _LABELS,
    },
}
PROMETHEUS_RULE = _object({"type": "object", "additionalProperties": False, "properties": {
    "groups": {"type": "array", "items": {
        "type": "object", "additionalProperties": False, "required": ["name", "rules"],
        "properties": {"name": _STR, "interval": _DURATION, "limit": {"type": "integer"},
                       "partial_response_strategy": _STR,
                       "rules": {"type": "array", "items": _RULE}}}}}})

SCHEMAS = {"ServiceMonitor": SERVICE_MONITOR, "PodMonitor": POD_MONITOR, "PrometheusRule": PROMETHEUS_RULE}
