"""Resource accounting for one job (pure): GPU- and CPU-core-seconds its pods held, and the
budget verdict. Level-triggered like `decide`: each reconcile charges the time since the
last one at the holding seen then (a pod change always triggers a reconcile, so holdings
are piecewise constant between two), then records what is held now.

Held: a worker pod of any attempt that a node accepted (spec.nodeName set) and that has not
finished; a pod in its deletion grace period still holds its node. CPU cores: the pod's
`resources.requests.cpu` (else its limit, else 1 core), so CPU jobs can be budgeted too.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .api.spec import AdamWTrainingJobSpec
from .observe import WorkerObservation
from .status import parse_time, rfc3339

BUDGET_WARNING_SHARE = 0.8
# While the holding is unchanged the charge is only deferred, never lost (the next charge
# covers the whole interval at the same rate), so status is not rewritten every reconcile.
ACCOUNT_EVERY_SECONDS = 60.0


def cpu_cores(quantity: str | int | float | None) -> float | None:
    """A Kubernetes CPU quantity in cores: "2" -> 2.0, "500m" -> 0.5; None if unreadable."""
    if quantity is None:
        return None
    text = str(quantity).strip()
    try:
        return float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        return None


def per_pod(spec: AdamWTrainingJobSpec) -> tuple[float, float]:
    """(GPUs, CPU cores) one worker pod holds."""
    cores = cpu_cores(spec.resources.requests.get("cpu")) or cpu_cores(spec.resources.limits.get("cpu")) or 1.0
    return float(spec.gpus_per_replica), cores


def held(spec: AdamWTrainingJobSpec, workers: list[WorkerObservation]) -> tuple[float, float]:
    pods = sum(1 for w in workers if w.node and not w.finished)
    gpus, cores = per_pod(spec)
    return pods * gpus, pods * cores


def account(usage: dict[str, Any] | None, spec: AdamWTrainingJobSpec,
            workers: list[WorkerObservation], now: datetime) -> dict[str, Any]:
    """The job's `status.usage` after charging the time since it was last accounted."""
    out = dict(usage or {})
    last = parse_time(out.get("accountedTime"))
    gpus, cores = held(spec, workers)
    same = (gpus, cores) == (out.get("heldGPUs"), out.get("heldCPUCores"))
    if last is not None and same and (now - last).total_seconds() < ACCOUNT_EVERY_SECONDS:
        return out
    out["gpuSeconds"], out["cpuCoreSeconds"] = charged(out, now)
    if last is None or now >= last:
        out["accountedTime"] = rfc3339(now)
    out["heldGPUs"], out["heldCPUCores"] = gpus, cores
    return out


def settle(usage: dict[str, Any], now: datetime) -> None:
    """Write the deferred charge now (a job that finishes, or stops for its budget, shows all
    it held)."""
    usage["gpuSeconds"], usage["cpuCoreSeconds"] = charged(usage, now)
    usage["accountedTime"] = rfc3339(now)


def charged(usage: dict[str, Any], now: datetime) -> tuple[float, float]:
    """(GPU-seconds, CPU-core-seconds) held until `now`, the not yet written part included."""
    last = parse_time(usage.get("accountedTime"))
    held_for = max(0.0, (now - last).total_seconds()) if last is not None else 0.0
    return (round(usage.get("gpuSeconds", 0.0) + held_for * usage.get("heldGPUs", 0.0), 3),
            round(usage.get("cpuCoreSeconds", 0.0) + held_for * usage.get("heldCPUCores", 0.0), 3))


def budget_left(spec: AdamWTrainingJobSpec, usage: dict[str, Any],
                now: datetime) -> list[tuple[str, float, float]]:
    """(what, spent hours, limit hours) for each budget the spec sets."""
    gpu_seconds, core_seconds = charged(usage, now)
    out = []
    if spec.budget.max_gpu_hours is not None:
        out.append(("GPU-hours (spec.budget.maxGPUHours)", gpu_seconds / 3600, spec.budget.max_gpu_hours))
    if spec.budget.max_cpu_core_hours is not None:
        out.append(("CPU-core-hours (spec.budget.maxCPUCoreHours)", core_seconds / 3600,
                    spec.budget.max_cpu_core_hours))
    return out


def seconds_until_spent(spec: AdamWTrainingJobSpec, usage: dict[str, Any], now: datetime,
                        share: float = 1.0) -> float | None:
    """At the current holding, when `share` of the first budget is spent (to re-check then)."""
    rates = {"GPU": usage.get("heldGPUs", 0.0), "CPU": usage.get("heldCPUCores", 0.0)}
    soonest = None
    for what, spent, limit in budget_left(spec, usage, now):
        rate = rates["GPU" if what.startswith("GPU") else "CPU"]
        if rate > 0:
            left = max(0.0, (share * limit - spent) * 3600 / rate)
            soonest = left if soonest is None else min(soonest, left)
    return soonest
