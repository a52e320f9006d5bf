"""Status conditions per the Kubernetes API conventions, and RFC 3339 time helpers (pure)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .api.enums import TERMINAL_PHASES, ConditionType, Phase

PHASES = tuple(Phase)
CONDITION_TYPES = tuple(ConditionType)
__all__ = ["CONDITION_TYPES", "PHASES", "TERMINAL_PHASES"]


def rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def get_condition(status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in status.get("conditions") or []:
        if cond.get("type") == type_:
            return cond
    return None


def set_condition(
    status: dict[str, Any],
    type_: str,
    value: bool | None,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None,
) -> None:
    """Upsert a condition; `lastTransitionTime` moves only when `status` changes."""
    text = "Unknown" if value is None else ("True" if value else "False")
    conditions = [dict(c) for c in status.get("conditions") or []]
    old = next((c for c in conditions if c.get("type") == type_), None)
    new = {
        "type": type_,
        "status": text,
        "reason": reason,
        "message": message,
        "lastTransitionTime": rfc3339(now),
        "observedGeneration": generation,
    }
    if old is not None:
        if old.get("status") == text:
            new["lastTransitionTime"] = old.get("lastTransitionTime") or new["lastTransitionTime"]
        conditions[conditions.index(old)] = new
    else:
        conditions.append(new)
    conditions.sort(key=lambda c: CONDITION_TYPES.index(c["type"]) if c["type"] in CONDITION_TYPES else 99)
    status["conditions"] = conditions


def condition_true(status: dict[str, Any], type_: str) -> bool:
    cond = get_condition(status, type_)
    return bool(cond and cond.get("status") == "True")
