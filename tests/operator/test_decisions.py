"""The decision function, case by case: what a user would see happen to their job."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from adamw_operator.api.spec import parse_spec
from adamw_operator.decisions import backoff_seconds, decide
from adamw_operator.observe import WorkerObservation
from adamw_operator.status import get_condition, rfc3339
from adamw_trainer.exit_codes import TerminationMessage

from tests.operator.jobs import job_manifest

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def spec_of(**overrides):
    return parse_spec(job_manifest(**overrides)["spec"])


def worker(rank, attempt=0, phase="Running", exit_code=None, *, disrupted=False, deleting=False,
           step=None, good=None, message="", world_size=2):
    termination = None
    if step is not None or good is not None:
        termination = TerminationMessage(reason="x", exit_code=exit_code or 0, step=step or 0,
                                         last_good_checkpoint_step=good, message=message)
    if exit_code is not None and phase == "Running":
        phase = "Succeeded" if exit_code == 0 else "Failed"
    return WorkerObservation(name=f"demo-worker-{rank}", rank=rank, attempt=attempt, phase=phase,
                             exit_code=exit_code, termination=termination, disrupted=disrupted,
                             deleting=deleting, pod_ip=f"10.0.0.{rank + 1}", world_size=world_size)


def running_status(**extra):
    status = {"phase": "Running", "attempt": 0, "restarts": 0, "preemptions": 0,
              "startTime": rfc3339(NOW - timedelta(minutes=5)),
              "lastProgressTime": rfc3339(NOW - timedelta(seconds=5)), "progressAttempt": 0,
              "runningAttempt": 0}
    status.update(extra)
    return status


def test_new_job_creates_every_rank():
    plan = decide(spec=spec_of(), status=None, workers=[], now=NOW, generation=1)
    assert plan.create_ranks == [0, 1]
    assert plan.status["phase"] == "Pending" and plan.status["attempt"] == 0
    assert plan.status["startTime"] == rfc3339(NOW)
    assert plan.status["observedGeneration"] == 1


def test_all_running_is_running_and_starts_the_hang_clock():
    plan = decide(spec=spec_of(), status={"phase": "Pending", "attempt": 0},
                  workers=[worker(0), worker(1)], now=NOW)
    assert plan.create_ranks == [] and plan.delete_pods == []
    assert plan.status["phase"] == "Running"
    assert plan.status["lastProgressTime"] == rfc3339(NOW)
    assert get_condition(plan.status, "Running")["status"] == "True"


def test_crash_gang_restarts_with_backoff():
    spec = spec_of(restartPolicy={"backoffSeconds": 10, "maxBackoffSeconds": 300})
    plan = decide(spec=spec, status=running_status(lastCheckpoint={"step": 20}),
                  workers=[worker(0), worker(1, exit_code=1)], now=NOW)
    st = plan.status
    assert st["attempt"] == 1 and st["restarts"] == 1 and st["preemptions"] == 0
    assert st["phase"] == "Restarting"
    assert sorted(plan.delete_pods) == ["demo-worker-0", "demo-worker-1"]  # the whole gang
    assert plan.create_ranks == []
    assert st["restartAfterTime"] == rfc3339(NOW + timedelta(seconds=10))
    assert plan.requeue_after == 10
    assert st["lastFailure"]["rank"] == 1 and st["lastFailure"]["exitCode"] == 1
    assert [e.reason for e in plan.events] == ["CrashedRestart"]
    assert "checkpoint step 20" in plan.events[0].message


def test_backoff_waits_then_recreates_as_next_attempt():
    spec = spec_of(restartPolicy={"backoffSeconds": 10, "maxBackoffSeconds": 300})
    status = running_status(phase="Restarting", attempt=1, restarts=1,
                            restartAfterTime=rfc3339(NOW + timedelta(seconds=4)))
    waiting = decide(spec=spec, status=status, workers=[], now=NOW)
    assert waiting.create_ranks == [] and waiting.status["phase"] == "Restarting"
    assert waiting.requeue_after == pytest.approx(4)
    later = decide(spec=spec, status=status, workers=[], now=NOW + timedelta(seconds=5))
    assert later.create_ranks == [0, 1]
    assert "restartAfterTime" not in later.status


def test_old_attempt_pods_block_their_names_until_gone():
    status = running_status(phase="Restarting", attempt=1, restarts=1)
    plan = decide(spec=spec_of(), status=status,
                  workers=[worker(0, attempt=0, exit_code=143, deleting=True), worker(1, attempt=0, exit_code=1)],
                  now=NOW)
    assert plan.create_ranks == []  # same deterministic names: wait for the old ones to go
    assert plan.delete_pods == ["demo-worker-1"]  # the one not yet being deleted
    assert plan.status["restarts"] == 1  # an old attempt's failure is never counted again
    plan = decide(spec=spec_of(), status=status, workers=[worker(1, attempt=0, deleting=True)], now=NOW)
    assert plan.create_ranks == [0]


def test_deciding_twice_on_the_same_world_restarts_once():
    spec = spec_of()
    workers = [worker(0), worker(1, exit_code=1)]
    first = decide(spec=spec, status=running_status(), workers=workers, now=NOW)
    second = decide(spec=spec, status=first.status, workers=workers, now=NOW)
    assert second.status["restarts"] == 1 and second.status["attempt"] == 1
    assert second.events == []


def test_invalid_config_fails_at_once():
    plan = decide(spec=spec_of(), status=running_status(),
                  workers=[worker(0, exit_code=2, step=0, message="training.maxSteps: bad"),
                           worker(1, exit_code=2)], now=NOW)
    st = plan.status
    assert st["phase"] == "Failed" and st["restarts"] == 0 and st["attempt"] == 0
    failed = get_condition(st, "Failed")
    assert failed["status"] == "True" and failed["reason"] == "InvalidConfig"
    assert "training.maxSteps: bad" in failed["message"]
    assert st["completionTime"] == rfc3339(NOW)


@pytest.mark.parametrize(("policy", "phase", "restarts"), [("Fail", "Failed", 0), ("Restart", "Restarting", 1)])
def test_divergence_follows_the_policy(policy, phase, restarts):
    spec = spec_of(restartPolicy={"onDivergence": policy, "backoffSeconds": 0, "maxBackoffSeconds": 0})
    plan = decide(spec=spec, status=running_status(lastGoodCheckpoint={"step": 30}),
                  workers=[worker(0, exit_code=3), worker(1)], now=NOW)
    assert plan.status["phase"] == phase and plan.status["restarts"] == restarts


@pytest.mark.parametrize("failed", [worker(1, exit_code=143), worker(1, exit_code=137, disrupted=True)])
def test_preemption_uses_its_own_budget_without_backoff(failed):
    spec = spec_of(restartPolicy={"backoffSeconds": 30, "maxBackoffSeconds": 300})
    plan = decide(spec=spec, status=running_status(restarts=2), workers=[worker(0), failed], now=NOW)
    st = plan.status
    assert st["preemptions"] == 1 and st["restarts"] == 2 and st["attempt"] == 1
    assert "restartAfterTime" not in st and plan.requeue_after == 0
    assert plan.events[0].reason == "PreemptedRestart"


def test_preempted_peer_explains_the_others_crash():
    plan = decide(spec=spec_of(), status=running_status(),
                  workers=[worker(0, exit_code=1), worker(1, exit_code=143, disrupted=True)], now=NOW)
    assert plan.status["preemptions"] == 1 and plan.status["restarts"] == 0


def test_pod_that_vanished_while_running_is_a_preemption():
    plan = decide(spec=spec_of(), status=running_status(), workers=[worker(0)], now=NOW)
    assert plan.status["preemptions"] == 1 and plan.status["lastFailure"]["reason"] == "PodLost"
    assert plan.delete_pods == ["demo-worker-0"] and plan.create_ranks == []


def test_pod_deleted_after_an_eviction_before_the_operator_looked_is_a_preemption():
    # The watch saw its last state (DisruptionTarget, exit 143); the fresh list no longer has it.
    evicted = worker(1, exit_code=143, disrupted=True)
    plan = decide(spec=spec_of(), status=running_status(), workers=[worker(0)], now=NOW,
                  vanished=[evicted])
    assert plan.status["preemptions"] == 1 and plan.status["restarts"] == 0
    assert plan.status["lastFailure"]["reason"] == "Preempted"
    # an earlier attempt's eviction says nothing about this attempt's missing pod
    stale = decide(spec=spec_of(), status=running_status(), workers=[worker(0)], now=NOW,
                   vanished=[worker(1, attempt=-1, exit_code=143, disrupted=True)])
    assert stale.status["lastFailure"]["reason"] == "PodLost"
    # a pod force-deleted from a lost node was disrupted but never reported an end
    lost = decide(spec=spec_of(), status=running_status(), workers=[worker(0)], now=NOW,
                  vanished=[worker(1, disrupted=True)])
    assert lost.status["lastFailure"]["reason"] == "PodLost"
    # nor when PodGC marked it Failed on its way out: no kubelet reported an exit code
    on_lost_node = replace(worker(1, phase="Failed", disrupted=True), reason="DeletionByPodGC")
    seen = decide(spec=spec_of(), status=running_status(), workers=[worker(0), on_lost_node], now=NOW)
    assert seen.status["lastFailure"]["reason"] == "PodLost" and seen.status["preemptions"] == 1
    gc = decide(spec=spec_of(), status=running_status(), workers=[worker(0)], now=NOW,
                vanished=[worker(1, phase="Failed", disrupted=True)])
    assert gc.status["lastFailure"]["reason"] == "PodLost"


def test_restart_budget_exhausted_fails():
    spec = spec_of(restartPolicy={"maxRestarts": 2, "backoffSeconds": 0, "maxBackoffSeconds": 0})
    plan = decide(spec=spec, status=running_status(restarts=2), workers=[worker(0, exit_code=1), worker(1)], now=NOW)
    assert plan.status["phase"] == "Failed"
    assert get_condition(plan.status, "Failed")["reason"] == "RestartLimitExceeded"
    assert plan.delete_pods == ["demo-worker-1"]  # cleanPodPolicy Running: stop the survivor


def test_preemption_budget_exhausted_fails():
    spec = spec_of(restartPolicy={"maxPreemptions": 1, "backoffSeconds": 0, "maxBackoffSeconds": 0})
    plan = decide(spec=spec, status=running_status(preemptions=1),
                  workers=[worker(0, exit_code=143), worker(1)], now=NOW)
    assert get_condition(plan.status, "Failed")["reason"] == "PreemptionLimitExceeded"


def test_restarts_that_do_not_advance_the_checkpoint_end_as_no_progress():
    spec = spec_of(restartPolicy={"maxRestarts": 10, "maxRestartsWithoutProgress": 3,
                                  "backoffSeconds": 0, "maxBackoffSeconds": 0})
    status = running_status(lastCheckpoint={"step": 40})
    reasons = []
    for attempt in range(4):
        status["phase"] = "Running"
        plan = decide(spec=spec, status=status,
                      workers=[worker(0, attempt=attempt, exit_code=1), worker(1, attempt=attempt)], now=NOW)
        status = plan.status
        reasons.append(status["phase"])
    # restart 1 moved the checkpoint from "none" to 40; restarts 2 and 3 did not, the 4th fails
    assert reasons == ["Restarting", "Restarting", "Restarting", "Failed"]
    assert get_condition(status, "Failed")["reason"] == "NoProgress"


def test_progress_between_restarts_resets_the_no_progress_count():
    spec = spec_of(restartPolicy={"maxRestarts": 10, "maxRestartsWithoutProgress": 2,
                                  "backoffSeconds": 0, "maxBackoffSeconds": 0})
    status = running_status(lastCheckpoint={"step": 10}, checkpointStepAtLastRestart=10,
                            restartsWithoutProgress=1)
    status["lastCheckpoint"] = {"step": 20}
    plan = decide(spec=spec, status=status, workers=[worker(0, exit_code=1), worker(1)], now=NOW)
    assert plan.status["phase"] == "Restarting" and plan.status["restartsWithoutProgress"] == 0
    assert plan.status["checkpointStepAtLastRestart"] == 20


def test_success_needs_every_worker_to_exit_zero():
    one_failed = decide(spec=spec_of(), status=running_status(),
                        workers=[worker(0, exit_code=0), worker(1, exit_code=1)], now=NOW)
    assert one_failed.status["phase"] == "Restarting"
    one_running = decide(spec=spec_of(), status=running_status(),
                         workers=[worker(0, exit_code=0), worker(1)], now=NOW)
    assert one_running.status["phase"] == "Running"
    done = decide(spec=spec_of(), status=running_status(step=39),
                  workers=[worker(0, exit_code=0), worker(1, exit_code=0)], now=NOW)
    assert done.status["phase"] == "Succeeded" and done.status["step"] == 40
    assert get_condition(done.status, "Succeeded")["status"] == "True"
    assert done.delete_pods == []  # finished pods stay for their logs (cleanPodPolicy Running)


def test_exit_zero_before_max_steps_is_not_success():
    plan = decide(spec=spec_of(), status=running_status(),
                  workers=[worker(0, exit_code=0, step=12), worker(1, exit_code=0, step=12)], now=NOW)
    assert plan.status["phase"] == "Restarting"
    assert plan.status["lastFailure"]["reason"] == "ExitedEarly"


def test_no_step_progress_past_the_deadline_is_a_hang():
    spec = spec_of(progressDeadlineSeconds=60)
    fine = decide(spec=spec, status=running_status(lastProgressTime=rfc3339(NOW - timedelta(seconds=50))),
                  workers=[worker(0), worker(1)], now=NOW)
    assert fine.status["phase"] == "Running" and fine.requeue_after == pytest.approx(10)
    hung = decide(spec=spec, status=running_status(lastProgressTime=rfc3339(NOW - timedelta(seconds=61))),
                  workers=[worker(0), worker(1)], now=NOW)
    assert hung.status["lastFailure"]["reason"] == "Hung" and hung.status["restarts"] == 1
    assert sorted(hung.delete_pods) == ["demo-worker-0", "demo-worker-1"]
    assert hung.events[0].reason == "HungRestart"


def test_suspend_deletes_pods_and_keeps_status_then_resumes():
    status = running_status(restarts=1, lastCheckpoint={"step": 30})
    suspended = decide(spec=spec_of(suspend=True), status=status, workers=[worker(0), worker(1)], now=NOW)
    st = suspended.status
    assert st["phase"] == "Suspended" and sorted(suspended.delete_pods) == ["demo-worker-0", "demo-worker-1"]
    assert st["restarts"] == 1 and st["lastCheckpoint"] == {"step": 30}
    assert get_condition(st, "Suspended")["status"] == "True"
    assert st["attempt"] == 1  # the deleted workers' exits belong to the old attempt
    terminating = [worker(0, exit_code=143, deleting=True), worker(1, exit_code=143)]
    resumed = decide(spec=spec_of(suspend=False), status=st, workers=terminating, now=NOW)
    assert resumed.status["preemptions"] == 0 and resumed.create_ranks == []  # names still taken
    resumed = decide(spec=spec_of(suspend=False), status=st, workers=[], now=NOW)
    assert resumed.create_ranks == [0, 1] and resumed.status["restarts"] == 1
    assert resumed.status["startTime"] == rfc3339(NOW)  # activeDeadlineSeconds counts from here
    assert get_condition(resumed.status, "Suspended")["status"] == "False"
    assert [e.reason for e in resumed.events] == ["Resumed"]


def test_active_deadline_fails_the_job():
    plan = decide(spec=spec_of(activeDeadlineSeconds=60),
                  status=running_status(startTime=rfc3339(NOW - timedelta(seconds=61))),
                  workers=[worker(0), worker(1)], now=NOW)
    assert get_condition(plan.status, "Failed")["reason"] == "DeadlineExceeded"
    assert sorted(plan.delete_pods) == ["demo-worker-0", "demo-worker-1"]


def test_ttl_deletes_the_finished_job_when_due():
    status = {"phase": "Succeeded", "attempt": 0, "completionTime": rfc3339(NOW - timedelta(seconds=30))}
    early = decide(spec=spec_of(ttlSecondsAfterFinished=60), status=status, workers=[], now=NOW)
    assert not early.delete_job and early.requeue_after == pytest.approx(30)
    due = decide(spec=spec_of(ttlSecondsAfterFinished=60), status=status, workers=[],
                 now=NOW + timedelta(seconds=31))
    assert due.delete_job


def test_finished_job_never_restarts():
    status = {"phase": "Failed", "attempt": 2, "restarts": 2}
    plan = decide(spec=spec_of(), status=status, workers=[worker(0, attempt=2, exit_code=1)], now=NOW)
    assert plan.create_ranks == [] and plan.status["restarts"] == 2 and plan.events == []


def test_invalid_spec_creates_and_deletes_nothing():
    spec = spec_of(checkpointStorage={"volumeName": "missing"})
    plan = decide(spec=spec, status=running_status(), workers=[worker(0), worker(1, exit_code=1)], now=NOW)
    assert plan.create_ranks == [] and plan.delete_pods == []
    cond = get_condition(plan.status, "InvalidSpec")
    assert cond["status"] == "True" and "volumeName: 'missing'" in cond["message"]
    assert plan.events[0].reason == "InvalidSpec"
    again = decide(spec=spec, status=plan.status, workers=[], now=NOW)
    assert again.events == []  # the same problem is reported once


@pytest.mark.parametrize(("restarts", "expected"), [(1, 10), (2, 20), (3, 40), (6, 300), (20, 300)])
def test_backoff_is_exponential_and_capped(restarts, expected):
    spec = spec_of(restartPolicy={"backoffSeconds": 10, "maxBackoffSeconds": 300})
    assert backoff_seconds(spec, restarts) == expected


@pytest.mark.parametrize("replicas", [1, 3])
def test_changing_replicas_restarts_the_gang_without_using_a_budget(replicas):
    plan = decide(spec=spec_of(replicas=replicas), status=running_status(),
                  workers=[worker(0), worker(1)], now=NOW)
    st = plan.status
    assert st["attempt"] == 1 and st["restarts"] == 0 and st["preemptions"] == 0
    assert sorted(plan.delete_pods) == ["demo-worker-0", "demo-worker-1"]
    assert plan.events[0].reason == "ResizedRestart" and f"to {replicas}" in st["message"]
    again = decide(spec=spec_of(replicas=replicas), status=st, workers=[], now=NOW)
    assert again.create_ranks == list(range(replicas))


def test_why_a_worker_does_not_start_is_in_the_message():
    stuck = WorkerObservation(name="demo-worker-1", rank=1, attempt=0, phase="Pending",
                              waiting="ErrImagePull: pull access denied for adamw-trainer")
    plan = decide(spec=spec_of(), status={"phase": "Pending", "attempt": 0}, workers=[worker(0), stuck], now=NOW)
    assert plan.status["phase"] == "Pending"
    assert "rank 1: ErrImagePull: pull access denied" in plan.status["message"]


def test_hang_detection_waits_until_rank0_has_answered():
    """An operator that cannot reach the pods must never restart healthy training."""
    status = running_status(lastProgressTime=rfc3339(NOW - timedelta(hours=1)))
    del status["progressAttempt"]
    plan = decide(spec=spec_of(progressDeadlineSeconds=60), status=status,
                  workers=[worker(0), worker(1)], now=NOW)
    assert plan.status["phase"] == "Running" and plan.status["restarts"] == 0
    status["progressAttempt"] = 0
    plan = decide(spec=spec_of(progressDeadlineSeconds=60), status=status,
                  workers=[worker(0), worker(1)], now=NOW)
    assert plan.status["lastFailure"]["reason"] == "Hung"


@pytest.mark.parametrize(("told", "expected"), [(2, "Failed"), (143, "Restarting")])
def test_torchrun_pods_are_judged_by_the_trainers_own_exit_code(told, expected):
    """torchrun exits 1 whatever its workers said; the termination message tells the truth."""
    spec = spec_of(restartPolicy={"maxRestarts": 0})
    pod = WorkerObservation(name="demo-worker-0", rank=0, attempt=0, phase="Failed", exit_code=1,
                            termination=TerminationMessage(reason="x", exit_code=told, step=5))
    plan = decide(spec=spec, status=running_status(), workers=[pod, worker(1)], now=NOW)
    assert plan.status["phase"] == expected
    assert plan.status["restarts"] == 0  # neither is a crash


def test_a_message_never_turns_a_crash_into_success():
    pod = WorkerObservation(name="demo-worker-0", rank=0, attempt=0, phase="Failed", exit_code=137,
                            termination=TerminationMessage(reason="Succeeded", exit_code=0, step=40))
    plan = decide(spec=spec_of(), status=running_status(), workers=[pod, worker(1, exit_code=0)], now=NOW)
    assert plan.status["lastFailure"]["reason"] == "Crashed"


def test_time_suspended_does_not_count_against_the_deadline():
    long_ago = rfc3339(NOW - timedelta(hours=2))
    status = running_status(phase="Suspended", startTime=long_ago, attempt=1)
    from adamw_operator.status import set_condition
    set_condition(status, "Suspended", True, "Suspended", "", NOW, 1)
    still = decide(spec=spec_of(suspend=True, activeDeadlineSeconds=3600), status=status, workers=[], now=NOW)
    assert still.status["phase"] == "Suspended"
    resumed = decide(spec=spec_of(activeDeadlineSeconds=3600), status=status, workers=[], now=NOW)
    assert resumed.status["phase"] == "Pending" and resumed.create_ranks == [0, 1]


def test_a_pod_on_an_unreachable_node_is_still_a_member_until_it_vanishes():
    unknown = WorkerObservation(name="demo-worker-1", rank=1, attempt=0, phase="Unknown", world_size=2)
    plan = decide(spec=spec_of(), status=running_status(), workers=[worker(0), unknown], now=NOW)
    assert plan.status["phase"] == "Running" and plan.create_ranks == []
    status = dict(plan.status, phase="Pending")  # whatever the phase says meanwhile
    gone = decide(spec=spec_of(), status=status, workers=[worker(0)], now=NOW)
    assert gone.status["lastFailure"]["reason"] == "PodLost" and gone.create_ranks == []


def test_a_rank_not_yet_created_is_not_lost():
    plan = decide(spec=spec_of(), status={"phase": "Pending", "attempt": 0}, workers=[worker(0)], now=NOW)
    assert plan.create_ranks == [1] and plan.status["preemptions"] == 0


def converged(rank, reason, step=60, **fields):
    """A worker that exited 0 at `step` with a successful-early-stop termination message."""
    termination = TerminationMessage(reason=reason, exit_code=0, step=step, last_good_checkpoint_step=step,
                                     message=f"{reason} at step {step}", **fields)
    return WorkerObservation(name=f"demo-worker-{rank}", rank=rank, attempt=0, phase="Succeeded",
                             exit_code=0, termination=termination, world_size=2)


@pytest.mark.parametrize("reason", ["TargetReached", "EarlyStopped"])
def test_a_successful_early_stop_is_succeeded_with_its_reason_never_exited_early(reason):
    st = running_status(startTime=rfc3339(NOW - timedelta(seconds=90)))
    fields = dict(validation_loss=1.7, best_validation_loss=1.6, best_checkpoint_step=50)
    plan = decide(spec=spec_of(), status=st, now=NOW,
                  workers=[converged(0, reason, **fields), converged(1, reason)])
    st = plan.status
    assert st["phase"] == "Succeeded" and "lastFailure" not in st
    assert get_condition(st, "Succeeded")["reason"] == reason
    assert [e.reason for e in plan.events] == [reason]
    assert st["step"] == 60  # where it stopped, not maxSteps
    assert st["validationLoss"] == 1.7 and st["bestValidationLoss"] == 1.6
    assert st["bestCheckpoint"] == {"step": 50, "validationLoss": 1.6}
    if reason == "TargetReached":
        assert st["stepsToTarget"] == 60 and st["timeToTargetSeconds"] == 90  # restarts included
    else:
        assert "stepsToTarget" not in st and "timeToTargetSeconds" not in st


def test_rank0_reached_the_target_while_rank1_still_runs_waits_for_it():
    plan = decide(spec=spec_of(), status=running_status(), now=NOW,
                  workers=[converged(0, "TargetReached"), worker(1)])
    assert plan.status["phase"] == "Running" and "lastFailure" not in plan.status


def test_a_nonzero_exit_is_never_a_success_whatever_the_message_says():
    lying = WorkerObservation(name="demo-worker-1", rank=1, attempt=0, phase="Failed", exit_code=1,
                              termination=TerminationMessage(reason="TargetReached", exit_code=0, step=60),
                              world_size=2)
    plan = decide(spec=spec_of(), status=running_status(), now=NOW,
                  workers=[converged(0, "TargetReached"), lying])
    assert plan.status["phase"] == "Restarting" and plan.status["lastFailure"]["reason"] == "Crashed"


def test_the_final_status_pairs_the_last_step_with_its_loss_and_checkpoint() -> None:
    """`make demo` once ended with lastCheckpoint at the last poll's step (350 of 400),
    lastGoodCheckpoint at 400 without a loss, and the poll's loss beside step 400."""
    polled = running_status(step=35, loss=1.8508, lastCheckpoint={"step": 30, "loss": 1.85},
                            lastGoodCheckpoint={"step": 30, "loss": 1.85})
    done = [replace(worker(r, exit_code=0), termination=TerminationMessage(
        reason="Succeeded", exit_code=0, step=40, last_good_checkpoint_step=40, loss=1.7633))
        for r in (0, 1)]
    st = decide(spec=spec_of(), status=polled, workers=done, now=NOW).status
    assert st["phase"] == "Succeeded" and st["step"] == 40 and st["loss"] == 1.7633
    assert st["lastGoodCheckpoint"] == {"step": 40, "loss": 1.7633}
    assert st["lastCheckpoint"]["step"] == 40


def test_a_refused_worker_pod_is_said_once_and_retried_then_cleared() -> None:
    """The API server's refusal is an observation `decide` answers, not the executor."""
    spec = spec_of()
    one_in = [worker(0, phase="Pending")]
    first = decide(spec=spec, status={"attempt": 0}, workers=one_in, now=NOW)
    assert first.create_ranks == [1]
    refused = decide(spec=spec, status=first.status, workers=one_in, now=NOW,
                     rejected="pods \"demo-worker-1\" is forbidden: exceeded quota: pods, limited: pods=1")
    cond = get_condition(refused.status, "InvalidSpec")
    assert cond["status"] == "True" and cond["reason"] == "PodRejected" and "exceeded quota" in cond["message"]
    assert [e.reason for e in refused.events] == ["PodRejected"] and refused.create_ranks == []
    assert refused.requeue_after is not None and refused.requeue_after <= 30
    assert "exceeded quota" in refused.status["message"]
    again = decide(spec=spec, status=refused.status, workers=one_in, now=NOW + timedelta(seconds=5),
                   rejected="pods \"demo-worker-1\" is forbidden: exceeded quota: pods, limited: pods=1")
    assert again.events == []  # the same refusal is not said twice
    retry = decide(spec=spec, status=again.status, workers=one_in, now=NOW + timedelta(seconds=6))
    assert retry.create_ranks == [1]  # tried again on the next reconcile
    both = decide(spec=spec, status=retry.status, workers=[worker(0), worker(1)], now=NOW + timedelta(seconds=7))
    cond = get_condition(both.status, "InvalidSpec")
    assert cond["status"] == "False" and cond["reason"] == "PodsCreated"
    assert both.status["phase"] == "Running"


def test_a_spec_that_does_not_parse_is_reported_and_nothing_is_touched() -> None:
    plan = decide(spec=None, status=running_status(), workers=[worker(0), worker(1)], now=NOW, generation=3,
                  spec_problems=["spec.replicas: Input should be a valid integer"])
    cond = get_condition(plan.status, "InvalidSpec")
    assert cond["status"] == "True" and "spec.replicas" in cond["message"]
    assert plan.create_ranks == [] and plan.delete_pods == [] and plan.status["observedGeneration"] == 3
    assert [e.reason for e in plan.events] == ["InvalidSpec"]


def test_a_restart_carries_its_backoff_for_the_executor() -> None:
    spec = spec_of(restartPolicy={"backoffSeconds": 4, "maxBackoffSeconds": 60})
    crash = decide(spec=spec, status=running_status(), workers=[worker(0), worker(1, exit_code=1)], now=NOW)
    assert crash.restart is not None and crash.restart.reason == "Crashed" and crash.restart.delay == 4
    lost = decide(spec=spec, status=running_status(), workers=[worker(0), worker(1, exit_code=143, disrupted=True)],
                  now=NOW)
    assert lost.restart is not None and lost.restart.reason == "Preempted" and lost.restart.delay == 0


def test_a_node_that_fails_the_job_twice_is_avoided_and_given_back_when_nothing_else_fits() -> None:
    spec = spec_of(restartPolicy={"maxRestarts": 5, "backoffSeconds": 0, "maxBackoffSeconds": 0})

    def crash_on(node, status, attempt):
        ws = [replace(worker(0, attempt=attempt), node="node-2"),
              replace(worker(1, attempt=attempt, exit_code=1, message="Xid 79: GPU has fallen off the bus"),
                      node=node)]
        return decide(spec=spec, status=status, workers=ws, now=NOW)

    first = crash_on("node-1", running_status(), 0)
    assert first.status["nodeFailures"] == {"node-1": 1} and not first.status.get("avoidedNodes")
    assert "AvoidingNode" not in [e.reason for e in first.events]
    second = crash_on("node-1", {**first.status, "phase": "Running", "runningAttempt": 1, "progressAttempt": 1}, 1)
    assert second.status["avoidedNodes"] == ["node-1"]
    assert [e for e in second.events if e.reason == "AvoidingNode"][0].message.startswith(
        "workers failed 2 times on node node-1")
    # a preemption is not the node's fault
    evicted = decide(spec=spec, status={**second.status, "phase": "Running", "runningAttempt": 2}, now=NOW,
                     workers=[replace(worker(0, attempt=2), node="node-2"),
                              replace(worker(1, attempt=2, exit_code=143, disrupted=True), node="node-2")])
    assert evicted.status["nodeFailures"] == {"node-1": 2}
    # the only other node cannot take the pod: node-1 is allowed again and the pod recreated
    stuck = replace(worker(1, attempt=3, phase="Pending"),
                    waiting="Unschedulable: 0/2 nodes are available: 1 Insufficient cpu, "
                            "1 node(s) didn't match Pod's node affinity/selector.")
    given_back = decide(spec=spec, status={**evicted.status, "phase": "Pending"}, now=NOW,
                        workers=[replace(worker(0, attempt=3, phase="Pending"), node="node-2"), stuck])
    assert given_back.status["avoidedNodes"] == [] and given_back.delete_pods == ["demo-worker-1"]
    assert "NodeAvoidanceCleared" in [e.reason for e in given_back.events]


def test_the_killed_rank_is_blamed_not_the_peer_whose_collective_broke() -> None:
    """A clean-clone run read lastFailure.rank 0: the operator saw both ranks failed, rank 0
    with gloo's 'Connection reset by peer' after rank 1 was SIGKILLed."""
    echo = "RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error " \
           "[127.0.0.1]:43428: Connection reset by peer"
    workers = [worker(0, exit_code=1, step=39, good=20, message=echo), worker(1, exit_code=137)]
    st = decide(spec=spec_of(), status=running_status(), workers=workers, now=NOW).status
    assert st["lastFailure"]["rank"] == 1 and st["lastFailure"]["exitCode"] == 137
    # a peer-loss crash alone is still the failure
    alone = decide(spec=spec_of(), status=running_status(),
                   workers=[worker(0, exit_code=1, step=39, message=echo), worker(1)], now=NOW).status
    assert alone["lastFailure"]["rank"] == 0 and alone["lastFailure"]["reason"] == "Crashed"
