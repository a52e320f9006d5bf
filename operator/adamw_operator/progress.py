"""Training progress from rank 0's `/status` (the pods need no API access): pure folding of
the trainer's report into the job status, and the HTTP read itself."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import aiohttp

from .decisions import Event
from .status import rfc3339


def _time(value: Any) -> str | None:
    if isinstance(value, (int, float)) and math.isfinite(value):
        return rfc3339(datetime.fromtimestamp(value, UTC))
    if isinstance(value, str) and value:
        return value
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _checkpoint(ref: Any) -> dict[str, Any] | None:
    if not isinstance(ref, dict) or not isinstance(ref.get("step"), int):
        return None
    out: dict[str, Any] = {"step": ref["step"]}
    loss = _number(ref.get("loss"))
    if loss is not None:
        out["loss"] = round(loss, 6)
    when = _time(ref.get("time"))
    if when:
        out["time"] = when
    val = _number(ref.get("validationLoss"))
    if val is not None:
        out["validationLoss"] = round(val, 6)
    return out


def _tracking(ref: Any) -> dict[str, Any] | None:
    if not isinstance(ref, dict) or not isinstance(ref.get("runId"), str):
        return None
    return {k: ref[k] for k in ("runId", "experimentId", "url") if isinstance(ref.get(k), str)}


def fold_progress(
    status: dict[str, Any], report: dict[str, Any], now: datetime
) -> tuple[dict[str, Any], list[Event]]:
    """The status fields to patch from a trainer report, and events (rollbacks) to post."""
    patch: dict[str, Any] = {}
    events: list[Event] = []
    # Hang detection arms only once rank 0 answered in this attempt: an operator that
    # cannot reach the pods (a NetworkPolicy) must never restart healthy training.
    first_read = status.get("progressAttempt") != status.get("attempt", 0)
    patch["progressAttempt"] = status.get("attempt", 0)
    step = report.get("step")
    if isinstance(step, int) and not isinstance(step, bool):
        # Any change of step is progress: after a resume or an in-process rollback the step
        # goes back and climbs again, and a hang is exactly a step that does not change.
        if first_read or step != status.get("step"):
            patch["lastProgressTime"] = rfc3339(now)
        patch["step"] = step
    for key, name in (("loss", "loss"), ("nonfiniteRate", "nonfiniteRate"), ("tokensPerSecond", "tokensPerSecond"),
                      ("validationLoss", "validationLoss"), ("bestValidationLoss", "bestValidationLoss")):
        value = _number(report.get(key))
        if value is not None:
            patch[name] = round(value, 6)
        elif key in ("loss", "validationLoss") and key in report:
            patch[name] = None  # a NaN loss: show nothing rather than a stale number
    for key in ("lastCheckpoint", "lastGoodCheckpoint", "bestCheckpoint"):
        ref = _checkpoint(report.get(key))
        if ref is not None:
            patch[key] = ref
    tracking = _tracking(report.get("tracking"))
    if tracking is not None:
        patch["tracking"] = tracking
    save = _number(report.get("checkpointSaveSeconds"))  # the trainer's longest measured save
    if save is not None:
        patch["checkpointSaveSeconds"] = round(save, 3)
    rollbacks = report.get("rollbacks")
    if isinstance(rollbacks, int) and not isinstance(rollbacks, bool):
        before = status.get("rollbacks") or 0
        if rollbacks > before:
            good = (patch.get("lastGoodCheckpoint") or status.get("lastGoodCheckpoint") or {}).get("step")
            events.append(
                Event("Warning", "Rollback",
                      f"trainer rolled back to its last known-good checkpoint after non-finite "
                      f"steps (rollbacks: {rollbacks}; last good checkpoint now at step {good})")
            )
        patch["rollbacks"] = rollbacks
    return {k: v for k, v in patch.items() if status.get(k) != v}, events


async def read_status(session: aiohttp.ClientSession, pod_ip: str, port: int,
                      timeout: float = 2.0) -> dict[str, Any] | None:
    """GET http://<pod ip>:<port>/status; None when it cannot be read (not yet up, network)."""
    host = f"[{pod_ip}]" if ":" in pod_ip else pod_ip
    try:
        async with session.get(f"http://{host}:{port}/status",
                               timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            if resp.status != 200:
                return None
            data = await resp.json(content_type=None)
            return data if isinstance(data, dict) else None
    except (TimeoutError, aiohttp.ClientError, ValueError):
        return None
