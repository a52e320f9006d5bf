"""The decision function: (spec, status, observed workers, now) -> a Plan. Pure; kopf-free.

The operator and the local runner (`adamw-job run`) both call `decide` and carry out the
Plan their own way (pods vs processes). Level-triggered: it looks only at what is, never
at which event arrived, so running it twice on the same world gives the same Plan.

Failure classification (the exit-code contract of `adamw_trainer.exit_codes`):
    exit 2 InvalidConfig      -> fail now, no restart
    exit 3 Diverged           -> restartPolicy.onDivergence: Fail, or Restart (uses budget)
    exit 143, eviction, preemption, node lost, pod vanished
                              -> gang restart on the preemption budget, no backoff
    anything else, a hang     -> gang restart on the restart budget, exponential backoff
    exit 0 before maxSteps    -> a crash (a worker that exits 0 while others fail is not success),
                                 unless its termination reason is TargetReached or EarlyStopped
    exit 0 on every worker    -> Succeeded; the condition's reason is the trainer's
                                 (Succeeded, TargetReached, EarlyStopped), never a string match
Restarts that do not advance the last checkpoint step, several in a row, fail as NoProgress.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from adamw_trainer.exit_codes import EARLY_SUCCESS_REASONS, ExitCode, ExitReason, success_reason

from .accounting import BUDGET_WARNING_SHARE, account, budget_left, seconds_until_spent, settle
from .api.checks import runtime_problems
from .api.enums import DISRUPTIONS, ConditionType, FailureKind, Phase
from .api.spec import AdamWTrainingJobSpec
from .observe import WorkerObservation
from .status import (
    TERMINAL_PHASES,
    condition_true,
    get_condition,
    parse_time,
    rfc3339,
    set_condition,
)

# Re-check soon when children are still going away (a watch event normally comes first).
WAIT_FOR_DELETION_SECONDS = 2.0
# A worker pod the API server refused (quota, admission): asked again at least this often.
REJECTED_RETRY_SECONDS = 30.0
# Node avoidance: a node this job's workers failed on this often (crash, hang) is kept out of
# the next attempts' placement; at most this many nodes, so a small pool is never emptied.
FAILURES_TO_AVOID_NODE = 2
MAX_AVOIDED_NODES = 3
# Failures that may be the node's fault (a bad GPU, an Xid, a flaky NIC); disruptions and the
# trainer's own verdicts (divergence, invalid config) are not.
NODE_SUSPECT_FAILURES = frozenset({FailureKind.CRASHED, FailureKind.HUNG})


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str  # CamelCase
    message: str


@dataclass(frozen=True)
class Restart:
    """A gang restart decided now: why, and the backoff before the next attempt's pods."""

    reason: FailureKind
    delay: float


@dataclass
class Plan:
    """What to do now. The status is the whole new status; write it if it changed."""

    status: dict[str, Any]
    create_ranks: list[int] = field(default_factory=list)
    delete_pods: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    delete_job: bool = False
    restart: Restart | None = None  # a gang restart began now (metrics: restarts, latency)

    def requeue(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)


@dataclass(frozen=True)
class Failure:
    kind: FailureKind
    rank: int | None
    exit_code: int | None
    message: str
    node: str | None = None  # where the failing worker ran


def backoff_seconds(spec: AdamWTrainingJobSpec, restarts: int) -> float:
    """Exponential: base, 2x base, 4x base, ... capped (restarts counts this restart)."""
    policy = spec.restart_policy
    if policy.backoff_seconds <= 0:
        return 0.0
    return min(policy.max_backoff_seconds, policy.backoff_seconds * 2 ** max(0, restarts - 1))


def classify(workers: list[WorkerObservation], max_steps: int) -> Failure | None:
    """The failure that explains this attempt, most decisive first; None when none."""
    # The rank that failed first explains the others: a peer's broken collective is an echo.
    failed = sorted((w for w in workers if w.failed), key=lambda w: (w.peer_loss, w.rank))
    by_code = {w.contract_code: w for w in reversed(failed)}
    for code, kind in ((ExitCode.INVALID_CONFIG, FailureKind.INVALID_CONFIG), (ExitCode.DIVERGED, FailureKind.DIVERGED)):
        if code in by_code and not by_code[code].disrupted:
            w = by_code[code]
            return Failure(kind, w.rank, w.exit_code, _describe(w), w.node)
    # A preempted peer explains the others' rendezvous crashes.
    for w in failed:
        if w.preempted:
            kind = FailureKind.POD_LOST if w.lost_with_node else FailureKind.PREEMPTED
            return Failure(kind, w.rank, w.exit_code, _describe(w), w.node)
    if failed:
        w = failed[0]
        return Failure(FailureKind.CRASHED, w.rank, w.exit_code, _describe(w), w.node)
    for w in sorted(workers, key=lambda w: w.rank):
        early = w.exit_code == 0 and w.termination is not None and w.termination.step < max_steps
        if early and success_reason(w.exit_code, w.termination) not in EARLY_SUCCESS_REASONS:
            return Failure(
                FailureKind.EXITED_EARLY,
                w.rank,
                0,
                f"rank {w.rank} exited 0 at step {w.termination.step} of {max_steps}",
            )
    return None


def _describe(w: WorkerObservation) -> str:
    what = f"rank {w.rank} "
    if w.exit_code is not None:
        what += f"exited {w.exit_code}"
        if w.reason:
            what += f" ({w.reason})"
    else:
        what += f"failed ({w.reason or 'unknown reason'})"
    detail = w.termination.message if w.termination and w.termination.message else w.message
    if detail and not w.termination:
        detail = detail[:300]
    return f"{what}: {detail}" if detail else what


def _cleanup(policy: str, workers: list[WorkerObservation]) -> list[str]:
    if policy == "All":
        return [w.name for w in workers if not w.deleting]
    if policy == "Running":
        return [w.name for w in workers if not w.deleting and not w.finished]
    return []


def _checkpoint_step(status: dict[str, Any], workers: list[WorkerObservation]) -> int:
    """Best knowledge of the newest good checkpoint: status, or the workers' exit messages."""
    steps = [-1]
    for key in ("lastGoodCheckpoint", "lastCheckpoint"):
        ref = status.get(key) or {}
        if isinstance(ref.get("step"), int):
            steps.append(ref["step"])
    for w in workers:
        if w.termination and w.termination.last_good_checkpoint_step is not None:
            steps.append(int(w.termination.last_good_checkpoint_step))
    return max(steps)


def _record_exit_messages(status: dict[str, Any], workers: list[WorkerObservation]) -> None:
    """Fold what finished workers said (step, last good checkpoint, validation losses) into
    the status: the last /status poll may predate the last evaluation."""
    for w in workers:
        t = w.termination
        if not t or w.rank != 0:
            continue
        if t.step and (status.get("step") or 0) < t.step:
            status["step"] = t.step
            # The polled loss belongs to an older step: pair the final step with its own.
            status["loss"] = round(t.loss, 6) if t.loss is not None else None
        if t.validation_loss is not None:
            status["validationLoss"] = round(t.validation_loss, 6)
        if t.best_validation_loss is not None:
            status["bestValidationLoss"] = round(t.best_validation_loss, 6)
        best = status.get("bestCheckpoint") or {}
        if t.best_checkpoint_step is not None and best.get("step") != t.best_checkpoint_step:
            ref: dict[str, Any] = {"step": t.best_checkpoint_step}
            if status.get("bestValidationLoss") is not None:
                ref["validationLoss"] = status["bestValidationLoss"]
            status["bestCheckpoint"] = ref
        good = t.last_good_checkpoint_step
        known = (status.get("lastGoodCheckpoint") or {}).get("step", -1)
        if good is not None and good > known:
            ref = {"step": int(good)}
            if good == t.step and t.loss is not None:  # the final save: its loss is the last one
                ref["loss"] = round(t.loss, 6)
            status["lastGoodCheckpoint"] = ref
            # A good checkpoint is a complete one: lastCheckpoint is never older than it.
            if (status.get("lastCheckpoint") or {}).get("step", -1) < good:
                status["lastCheckpoint"] = dict(ref)


def decide(
    *,
    spec: AdamWTrainingJobSpec | None,
    status: dict[str, Any] | None,
    workers: list[WorkerObservation],
    now: datetime,
    generation: int | None = None,
    vanished: Sequence[WorkerObservation] = (),
    spec_problems: Sequence[str] = (),
    rejected: str | None = None,
    annotations: Mapping[str, str] | None = None,
) -> Plan:
    """The next step for one job.

    Observations besides the pods: `vanished`, the last observation of worker pods that were
    deleted before a fresh list could show how they ended (an evicted pod is often gone by
    then), so a preemption is not mistaken for a lost pod; `spec_problems`, why the spec did
    not parse (`spec` is None then: a spec the schema let through, from an old CRD); and
    `rejected`, the API server's message when it just refused a worker pod of this Plan's
    attempt (nothing is created in answer; the next reconcile tries again); `annotations`,
    the job's (the trainer config schema its image reads, for the version-skew check).
    """
    st = copy.deepcopy(status or {})
    for key in ("attempt", "restarts", "preemptions", "restartsWithoutProgress"):
        st.setdefault(key, 0)
    st["observedGeneration"] = generation
    plan = Plan(status=st)
    if spec is None or spec_problems:
        return _invalid_spec(plan, list(spec_problems) or ["spec: missing"], now, generation)
    st["maxSteps"] = spec.trainer.training.max_steps
    st["usage"] = account(st.get("usage"), spec, workers, now)  # stale pods hold nodes too
    _reopen_if_budget_raised(plan, spec, now, generation)
    attempt = st["attempt"]
    current = [w for w in workers if w.attempt == attempt]
    stale = [w for w in workers if w.attempt != attempt]
    _record_exit_messages(st, current)

    if st.get("phase") in TERMINAL_PHASES:
        plan.delete_pods = [w.name for w in stale if not w.deleting]
        plan.delete_pods += _cleanup(spec.clean_pod_policy, current)
        _ttl(plan, spec, st, now)
        return plan

    problems = runtime_problems(spec, annotations)
    if problems:
        return _invalid_spec(plan, problems, now, generation)
    invalid = get_condition(st, ConditionType.INVALID_SPEC)
    if invalid and invalid.get("reason") != "PodRejected":  # that one clears once pods are accepted
        set_condition(st, ConditionType.INVALID_SPEC, False, "SpecValid", "", now, generation)

    plan.delete_pods += [w.name for w in stale if not w.deleting]

    if spec.suspend:
        plan.delete_pods += [w.name for w in current if not w.deleting]
        if st.get("phase") != Phase.SUSPENDED:
            plan.events.append(Event("Normal", "Suspended", "job suspended; workers deleted"))
            # The workers now exit 143 after saving; a fresh attempt on resume means those
            # exits belong to an old attempt and are never mistaken for a preemption.
            if current:
                st["attempt"] += 1
        st["phase"] = Phase.SUSPENDED
        st["message"] = "suspended; set spec.suspend to false to resume from the last checkpoint"
        set_condition(st, ConditionType.SUSPENDED, True, "Suspended", "spec.suspend is true", now, generation)
        set_condition(st, ConditionType.RUNNING, False, "Suspended", "", now, generation)
        st.pop("restartAfterTime", None)
        return plan
    if condition_true(st, ConditionType.SUSPENDED):
        set_condition(st, ConditionType.SUSPENDED, False, "Resumed", "spec.suspend is false", now, generation)
        plan.events.append(Event("Normal", "Resumed", "job resumed; recreating workers"))
        st["phase"] = Phase.PENDING
        st.pop("startTime", None)  # as for a batch Job: time suspended is not active time

    start = parse_time(st.get("startTime"))  # the deadline clock stops while suspended
    if spec.active_deadline_seconds and start:
        due = start + timedelta(seconds=spec.active_deadline_seconds)
        if now >= due:
            return _fail(
                plan, spec, current + stale, now, generation, "DeadlineExceeded",
                f"the job ran longer than activeDeadlineSeconds ({spec.active_deadline_seconds} s)",
            )
        plan.requeue((due - now).total_seconds())

    spent = _budget(plan, spec, now)
    if spent is not None:
        _fail(plan, spec, current + stale, now, generation, "BudgetExceeded", spent)
        # Whatever cleanPodPolicy says, nothing may keep spending: SIGTERM, they save and exit.
        plan.delete_pods += [w.name for w in current if not w.deleting and not w.finished
                             and w.name not in plan.delete_pods]
        return plan

    if any(w.world_size not in (None, spec.replicas) or w.rank >= spec.replicas for w in current):
        return _resize(plan, spec, current, now, generation)

    failure = classify(current, spec.trainer.training.max_steps)
    present = {w.rank for w in current}
    missing = [r for r in range(spec.replicas) if r not in present]
    if failure is None and missing and present and st.get("runningAttempt") == attempt:
        last = {w.rank: w for w in vanished if w.attempt == attempt}
        ranks = ", ".join(map(str, missing))
        # Preempted only if it was disrupted AND its kubelet reported the container's exit
        # code (the SIGTERM path). A pod of a lost node is disrupted too, and PodGC even
        # marks it Failed before force-deleting it, but no kubelet saw it end: PodLost.
        if all(r in last and last[r].disrupted and last[r].exit_code is not None for r in missing):
            failure = Failure(FailureKind.PREEMPTED, missing[0], last[missing[0]].exit_code,
                              f"worker pod(s) of rank {ranks} were preempted or evicted and deleted")
        else:
            failure = Failure(FailureKind.POD_LOST, missing[0], None,
                              f"worker pod(s) of rank {ranks} disappeared while the job ran")
    if (failure is None and st.get("phase") == Phase.RUNNING and spec.progress_deadline_seconds
            and st.get("progressAttempt") == attempt):  # armed once rank 0's /status answered
        last = parse_time(st.get("lastProgressTime"))
        if last is not None:
            due = last + timedelta(seconds=spec.progress_deadline_seconds)
            if now >= due:
                failure = Failure(
                    FailureKind.HUNG, 0, None,
                    f"no step progress for {spec.progress_deadline_seconds} s "
                    f"(progressDeadlineSeconds), last at step {st.get('step')}",
                    next((w.node for w in current if w.rank == 0), None),
                )
            else:
                plan.requeue((due - now).total_seconds())
    if failure is not None:
        return _on_failure(plan, spec, current, failure, now, generation)

    if len(current) == spec.replicas and current and all(
        w.exit_code == 0 or (w.phase == "Succeeded" and w.exit_code is None) for w in current
    ):
        reason = _success(st, spec, current, now)
        st["phase"] = Phase.SUCCEEDED
        st["completionTime"] = rfc3339(now)
        settle(st["usage"], now)
        st.pop("restartAfterTime", None)
        set_condition(st, ConditionType.SUCCEEDED, True, reason.value, st["message"], now, generation)
        set_condition(st, ConditionType.RUNNING, False, reason.value, "", now, generation)
        plan.events.append(Event("Normal", reason.value, st["message"]))
        plan.delete_pods += _cleanup(spec.clean_pod_policy, current)
        _ttl(plan, spec, st, now)
        return plan

    after = parse_time(st.get("restartAfterTime"))
    if after is not None and now < after:
        st["phase"] = Phase.RESTARTING
        plan.requeue((after - now).total_seconds())
        return plan
    st.pop("restartAfterTime", None)

    occupied = {w.rank for w in stale}  # same deterministic names as the new pods
    creatable = [r for r in missing if r not in occupied]
    if len(creatable) < len(missing):
        plan.requeue(WAIT_FOR_DELETION_SECONDS)  # old attempt's pods still hold the names
    if rejected is not None:
        _pod_rejected(plan, rejected, now, generation)
    elif creatable:
        plan.create_ranks = creatable
        if not st.get("startTime"):
            st["startTime"] = rfc3339(now)
        if spec.active_deadline_seconds:
            plan.requeue(spec.active_deadline_seconds)

    if not missing and condition_true(st, ConditionType.INVALID_SPEC):  # every pod of the attempt got in
        set_condition(st, ConditionType.INVALID_SPEC, False, "PodsCreated", "", now, generation)
    # Workers that already finished cleanly wait for their peers: still a running job.
    # An Unknown pod (its node stopped reporting) is still a member until it is gone.
    running = len(current) == spec.replicas and all(
        w.phase in ("Running", "Unknown") or w.exit_code == 0 for w in current
    )
    if running:
        st["runningAttempt"] = attempt  # from now on a vanished pod is a lost pod
        if st.get("phase") != Phase.RUNNING:
            st["lastProgressTime"] = rfc3339(now)  # the hang clock starts when all run
            if spec.progress_deadline_seconds:
                plan.requeue(spec.progress_deadline_seconds)
        st["phase"] = Phase.RUNNING
        st["message"] = f"{spec.replicas} worker(s) running, attempt {attempt}"
        set_condition(st, ConditionType.RUNNING, True, "WorkersRunning", st["message"], now, generation)
    else:
        if st.get("phase") != Phase.RESTARTING:
            st["phase"] = Phase.PENDING
        waiting = spec.replicas - sum(1 for w in current if w.phase == "Running")
        st["message"] = f"waiting for {waiting} of {spec.replicas} worker(s) to run, attempt {attempt}"
        stuck = next((w for w in sorted(current, key=lambda w: w.rank) if w.waiting), None)
        if stuck is not None:
            st["message"] += f"; rank {stuck.rank}: {stuck.waiting}"
        _clear_avoidance_if_nothing_fits(plan, current)
        refused = get_condition(st, ConditionType.INVALID_SPEC) or {}
        if refused.get("reason") == "PodRejected" and refused.get("status") == "True":
            st["message"] = refused["message"]  # what holds the job up
        set_condition(st, ConditionType.RUNNING, False, "WorkersPending", st["message"], now, generation)
    return plan


def _budget(plan: Plan, spec: AdamWTrainingJobSpec, now: datetime) -> str | None:
    """Why the job must stop for its budget (None: it may go on); the 80% warning, once."""
    usage = plan.status["usage"]
    for what, spent, limit in budget_left(spec, usage, now):
        if spent >= limit:
            ckpt = _checkpoint_step(plan.status, [])
            at = f"checkpoint step {ckpt}" if ckpt >= 0 else "the start (no checkpoint yet)"
            return (f"{spent:.3f} of {limit:g} {what} spent: the workers saved and stopped; raise the "
                    f"budget to resume from {at}")
        if spent >= BUDGET_WARNING_SHARE * limit and not usage.get("budgetWarned"):
            usage["budgetWarned"] = True
            plan.events.append(Event("Warning", "BudgetWarning",
                                     f"{spent:.3f} of {limit:g} {what} spent ({spent / limit:.0%})"))
    for share in (1.0,) if usage.get("budgetWarned") else (BUDGET_WARNING_SHARE, 1.0):
        left = seconds_until_spent(spec, usage, now, share)
        if left is not None:
            plan.requeue(left)
    return None


def _reopen_if_budget_raised(plan: Plan, spec: AdamWTrainingJobSpec, now: datetime,
                             generation: int | None) -> None:
    """A job stopped for its budget runs again, from its checkpoint, once the budget is raised."""
    st = plan.status
    failed = get_condition(st, ConditionType.FAILED) or {}
    if st.get("phase") != Phase.FAILED or failed.get("reason") != "BudgetExceeded":
        return
    if any(spent >= limit for _, spent, limit in budget_left(spec, st["usage"], now)):
        return
    st["phase"] = Phase.PENDING
    st["attempt"] += 1  # the stopped workers' exits (143) belong to the old attempt
    st.pop("completionTime", None)
    st["usage"]["budgetWarned"] = None
    set_condition(st, ConditionType.FAILED, False, "BudgetRaised", "", now, generation)
    plan.events.append(Event("Normal", "BudgetRaised", "budget raised: resuming from the last checkpoint"))


def _suspect_node(plan: Plan, failure: Failure) -> None:
    """Count a failure against its node; avoid the node from its FAILURES_TO_AVOID_NODE-th."""
    st = plan.status
    if failure.kind not in NODE_SUSPECT_FAILURES or not failure.node:
        return
    counts = dict(st.get("nodeFailures") or {})
    counts[failure.node] = counts.get(failure.node, 0) + 1
    st["nodeFailures"] = counts
    avoided = list(st.get("avoidedNodes") or [])
    if counts[failure.node] >= FAILURES_TO_AVOID_NODE and failure.node not in avoided \
            and len(avoided) < MAX_AVOIDED_NODES:
        st["avoidedNodes"] = [*avoided, failure.node]
        plan.events.append(Event("Warning", "AvoidingNode",
                                 f"workers failed {counts[failure.node]} times on node {failure.node}: "
                                 f"the next attempts are scheduled elsewhere (status.avoidedNodes)"))


def _clear_avoidance_if_nothing_fits(plan: Plan, current: list[WorkerObservation]) -> None:
    """Avoidance only while another node fits: a pod the scheduler cannot place for node
    affinity, with nodes avoided, gets them back (its pod is recreated without the rule)."""
    st = plan.status
    if not st.get("avoidedNodes"):
        return
    stuck = [w for w in current if w.phase == "Pending" and not w.deleting and "node affinity" in w.waiting]
    if not stuck:
        return
    plan.events.append(Event("Normal", "NodeAvoidanceCleared",
                             f"no other node fits rank {stuck[0].rank} ({stuck[0].waiting}); "
                             f"nodes {', '.join(st['avoidedNodes'])} are allowed again"))
    st["avoidedNodes"] = []
    st["nodeFailures"] = {}
    plan.delete_pods += [w.name for w in stuck if w.name not in plan.delete_pods]


def _invalid_spec(plan: Plan, problems: list[str], now: datetime, generation: int | None) -> Plan:
    """A spec that cannot run: say so (an Event once per message); create and delete nothing."""
    st = plan.status
    message = "; ".join(problems)
    if not condition_true(st, ConditionType.INVALID_SPEC) or get_condition(st, ConditionType.INVALID_SPEC)["message"] != message:
        plan.events.append(Event("Warning", "InvalidSpec", message))
    set_condition(st, ConditionType.INVALID_SPEC, True, "InvalidSpec", message, now, generation)
    st["phase"] = st.get("phase") or Phase.PENDING
    st["message"] = f"spec cannot run, fix it: {message}"
    return plan


def _pod_rejected(plan: Plan, refusal: str, now: datetime, generation: int | None) -> None:
    """The API server refused a worker pod: a condition and an Event once per message, and a
    retry later (the next reconcile creates again: a quota may be raised, a webhook fixed)."""
    st = plan.status
    message = f"the API server refused a worker pod: {refusal}"
    before = get_condition(st, ConditionType.INVALID_SPEC) or {}
    if before.get("reason") != "PodRejected" or before.get("message") != message:
        plan.events.append(Event("Warning", "PodRejected", message))
    set_condition(st, ConditionType.INVALID_SPEC, True, "PodRejected", message, now, generation)
    plan.requeue(REJECTED_RETRY_SECONDS)


def _success(st: dict[str, Any], spec: AdamWTrainingJobSpec, current: list[WorkerObservation],
             now: datetime) -> ExitReason:
    """How the job succeeded (rank 0's termination reason) and its status fields."""
    rank0 = next((w for w in current if w.rank == 0), current[0])
    reason = success_reason(0, rank0.termination) or ExitReason.SUCCEEDED
    told = rank0.termination.message if rank0.termination and rank0.termination.message else ""
    if reason is ExitReason.SUCCEEDED:
        st["message"] = f"all {spec.replicas} worker(s) finished training"
        if st.get("step") is None or st["step"] < st["maxSteps"]:
            st["step"] = st["maxSteps"]
        return reason
    st["message"] = f"{reason.value}: {told}" if told else f"{reason.value} at step {st.get('step')}"
    if rank0.termination is not None and rank0.termination.step:
        st["step"] = rank0.termination.step
    if reason is ExitReason.TARGET_REACHED:
        st["stepsToTarget"] = st.get("step")
        start = parse_time(st.get("startTime"))
        if start is not None:
            st["timeToTargetSeconds"] = round((now - start).total_seconds(), 3)
    return reason


def _resize(plan: Plan, spec: AdamWTrainingJobSpec, current: list[WorkerObservation],
            now: datetime, generation: int | None) -> Plan:
    """`replicas` changed under a running attempt: a new attempt with the new world size.

    Not a failure, so no budget is used; the trainer decides whether it can resume its
    checkpoint at the new world size (if not, it exits 2 and the job fails, saying why).
    """
    st = plan.status
    old = max((w.world_size or 0 for w in current), default=0) or "?"
    st["attempt"] += 1
    st["phase"] = Phase.RESTARTING
    st.pop("restartAfterTime", None)
    st["message"] = f"replicas changed from {old} to {spec.replicas}: restarting the gang"
    set_condition(st, ConditionType.RUNNING, False, "Resized", st["message"], now, generation)
    plan.events.append(Event("Normal", "ResizedRestart", st["message"]))
    plan.delete_pods += [w.name for w in current if not w.deleting and w.name not in plan.delete_pods]
    plan.requeue(0)
    return plan


def _ttl(plan: Plan, spec: AdamWTrainingJobSpec, st: dict[str, Any], now: datetime) -> None:
    done = parse_time(st.get("completionTime"))
    if spec.ttl_seconds_after_finished is None or done is None:
        return
    due = done + timedelta(seconds=spec.ttl_seconds_after_finished)
    if now >= due:
        plan.delete_job = True
    else:
        plan.requeue((due - now).total_seconds())


def _fail(
    plan: Plan,
    spec: AdamWTrainingJobSpec,
    workers: list[WorkerObservation],
    now: datetime,
    generation: int | None,
    reason: str,
    message: str,
) -> Plan:
    st = plan.status
    st["phase"] = Phase.FAILED
    st["completionTime"] = rfc3339(now)
    if "usage" in st:
        settle(st["usage"], now)
    st["message"] = message
    st.pop("restartAfterTime", None)
    set_condition(st, ConditionType.FAILED, True, reason, message, now, generation)
    set_condition(st, ConditionType.RUNNING, False, reason, "", now, generation)
    plan.events.append(Event("Warning", reason, message))
    plan.delete_pods += [n for n in _cleanup(spec.clean_pod_policy, workers) if n not in plan.delete_pods]
    _ttl(plan, spec, st, now)
    return plan


def _on_failure(
    plan: Plan,
    spec: AdamWTrainingJobSpec,
    current: list[WorkerObservation],
    failure: Failure,
    now: datetime,
    generation: int | None,
) -> Plan:
    st = plan.status
    policy = spec.restart_policy
    st["lastFailure"] = {
        "reason": failure.kind,
        "rank": failure.rank,
        "exitCode": failure.exit_code,
        "message": failure.message[:1000],
        "time": rfc3339(now),
    }
    if failure.kind == FailureKind.INVALID_CONFIG:
        return _fail(plan, spec, current, now, generation, ExitReason.INVALID_CONFIG.value,
                     f"the trainer refused its configuration, not restarting: {failure.message}")
    if failure.kind == FailureKind.DIVERGED and policy.on_divergence == "Fail":
        return _fail(plan, spec, current, now, generation, ExitReason.DIVERGED.value,
                     f"training diverged (restartPolicy.onDivergence is Fail): {failure.message}")
    preemption = failure.kind in DISRUPTIONS
    ckpt = _checkpoint_step(st, current)
    if preemption:
        if st["preemptions"] >= policy.max_preemptions:
            return _fail(plan, spec, current, now, generation, "PreemptionLimitExceeded",
                         f"preempted {st['preemptions']} times (maxPreemptions); last: {failure.message}")
        st["preemptions"] += 1
        delay = 0.0
        count = f"preemption {st['preemptions']}/{policy.max_preemptions}"
    else:
        if st["restarts"] >= policy.max_restarts:
            return _fail(plan, spec, current, now, generation, "RestartLimitExceeded",
                         f"{failure.kind} after {st['restarts']} restart(s) (maxRestarts "
                         f"{policy.max_restarts}): {failure.message}")
        previous = st.get("checkpointStepAtLastRestart")
        stuck = ckpt <= (previous if previous is not None else -1)
        st["restartsWithoutProgress"] = st["restartsWithoutProgress"] + 1 if stuck else 0
        limit = policy.max_restarts_without_progress
        if limit and st["restartsWithoutProgress"] >= limit:
            return _fail(plan, spec, current, now, generation, "NoProgress",
                         f"{st['restartsWithoutProgress']} restarts in a row without a newer "
                         f"checkpoint (still at step {ckpt if ckpt >= 0 else 'none'}); last: "
                         f"{failure.message}")
        st["checkpointStepAtLastRestart"] = ckpt
        _suspect_node(plan, failure)
        st["restarts"] += 1
        delay = backoff_seconds(spec, st["restarts"])
        count = f"restart {st['restarts']}/{policy.max_restarts}"
    st["attempt"] += 1
    st["phase"] = Phase.RESTARTING
    if delay > 0:
        st["restartAfterTime"] = rfc3339(now + timedelta(seconds=delay))
        plan.requeue(delay)
    else:
        st.pop("restartAfterTime", None)
        plan.requeue(0)
    where = f"checkpoint step {ckpt}" if ckpt >= 0 else "the start (no checkpoint yet)"
    st["message"] = (
        f"{failure.kind}: {failure.message}; gang {count} from {where}"
        + (f" in {delay:g} s" if delay else "")
    )
    set_condition(st, ConditionType.RUNNING, False, failure.kind, st["message"], now, generation)
    plan.events.append(Event("Warning", f"{failure.kind}Restart", st["message"]))
    plan.delete_pods += [w.name for w in current if not w.deleting and w.name not in plan.delete_pods]
    plan.restart = Restart(failure.kind, delay)
    return plan
