"""Node avoidance as scheduling constraints: keep a restarted gang off nodes that failed it."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any


def avoiding_nodes(affinity: dict[str, Any] | None, nodes: Sequence[str]) -> dict[str, Any] | None:
    """`affinity` with a required rule that no pod lands on `nodes` (by Node name).

    Required node-selector terms are ORed, and requirements inside a term ANDed, so the rule
    goes into every term the user wrote (or a term of its own): the user's placement still
    holds, minus those nodes. `matchFields` on metadata.name needs no node label.
    """
    if not nodes:
        return affinity
    out = copy.deepcopy(affinity) if affinity else {}
    required = out.setdefault("nodeAffinity", {}).setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
    terms = required.setdefault("nodeSelectorTerms", []) or [{}]
    rule = {"key": "metadata.name", "operator": "NotIn", "values": sorted(nodes)}
    for term in terms:
        term.setdefault("matchFields", []).append(dict(rule))
    required["nodeSelectorTerms"] = terms
    return out
