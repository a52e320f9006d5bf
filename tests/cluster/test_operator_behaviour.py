"""What the operator does with a training job, on the real control plane.

The chart's operator (the session's `operator` fixture: a pod under its ServiceAccount,
cluster-wide) drives real `adamw-train` processes; the faults are real too: SIGKILL of a
worker's pid, the Eviction API, a node that stops heartbeating, `kubectl` edits of the
spec. What is checked is what a user sees: the job's status and Events, the pods the
server holds (and ever held), the checkpoints on the claim and the trainers' own logs.
"""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from tests.cluster.harness import Cluster
from tests.cluster.training import (
    ATTEMPT_LABEL,
    JOB_LABEL,
    checkpoints,
    condition,
    events,
    evict,
    gone,
    heartbeat,
    kill,
    log_events,
    node_ready,
    operator_pods,
    pod_creations,
    process_of,
    reasons,
    status,
    submit,
    training_job,
    wait_checkpoint,
    wait_finished,
    wait_phase,
    wait_running,
    wait_status,
    worker_logs,
    workers,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(300)]


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_killed_worker_gang_restarts_from_the_checkpoint_and_succeeds(operator: Cluster):
    with operator.namespace("kill") as ns:
        submit(operator, training_job("kill", ns, restartPolicy={"backoffSeconds": 1, "maxBackoffSeconds": 5}))
        first = wait_running(operator, ns, "kill", attempt=0, replicas=2)
        saved = wait_checkpoint(operator, ns, "kill-ckpt")
        assert status(operator, ns, "kill")["phase"] == "Running"
        kill(operator, ns, "kill-worker-1")  # the trainer process itself, not its pod
        second = wait_running(operator, ns, "kill", attempt=1, replicas=2)
        assert not {p["metadata"]["uid"] for p in first} & {p["metadata"]["uid"] for p in second}
        env = {e["name"]: e.get("value") for e in second[0]["spec"]["containers"][0]["env"]}
        assert env["ADAMW_RESTART_COUNT"] == "1"
        st = wait_finished(operator, ns, "kill")
        assert st["phase"] == "Succeeded", st
        assert st["restarts"] == 1 and st["attempt"] == 1 and st["preemptions"] == 0
        assert st["lastFailure"]["reason"] == "Crashed" and st["lastFailure"]["rank"] == 1
        assert st["lastFailure"]["exitCode"] == 137
        assert st["step"] == 120 and st["lastGoodCheckpoint"]["step"] == 120
        assert condition(st, "Succeeded")["status"] == "True"
        # the second attempt's rank 0 resumed from a checkpoint at least as new as the one seen
        logs = worker_logs(operator, ns, "kill-worker-0")
        resumed = [r for log in logs.values() for r in log_events(log, "resumed")]
        assert resumed and resumed[0]["step"] >= saved, logs
        seen = reasons(operator, ns, "kill")
        assert seen.count("CrashedRestart") == 1 and seen.count("Succeeded") == 1, seen
        # two attempts of two workers: exactly four pods were ever created
        assert {n: len(u) for n, u in pod_creations(operator, ns).items()} == {
            "kill-worker-0": 2, "kill-worker-1": 2}
        # kubectl describe shows the story, from the server's Events
        described = operator.kubectl("describe", "awj", "kill", "-n", ns).stdout
        assert "Events:" in described and "CrashedRestart" in described and "Succeeded" in described


def test_crash_restarts_back_off_exponentially_until_the_restart_limit(operator: Cluster):
    """Each crash before any checkpoint: backoff 1 s, 2 s, 4 s, then RestartLimitExceeded."""
    policy = {"backoffSeconds": 1, "maxBackoffSeconds": 8, "maxRestarts": 3, "maxRestartsWithoutProgress": 0}
    with operator.namespace("backoff") as ns:
        submit(operator, training_job("backoff", ns, replicas=1, restartPolicy=policy))
        waited = []  # seconds from a crash to the next attempt's process
        killed_at = 0.0
        for attempt in range(4):
            operator.wait_for(f"attempt {attempt}'s process", lambda a=attempt: next(
                (p for p in workers(operator, ns, "backoff", a) if process_of(operator, p)), None), timeout=90)
            if attempt:
                waited.append(time.monotonic() - killed_at)
            kill(operator, ns, "backoff-worker-0")
            killed_at = time.monotonic()
            if attempt < 3:
                st = wait_status(operator, ns, "backoff", f"restart {attempt + 1}",
                                 lambda s, a=attempt: s.get("restarts") == a + 1)
                delay = (_time(st["restartAfterTime"]) - _time(st["lastFailure"]["time"])).total_seconds()
                assert delay == 2 ** attempt, st  # written by the operator: 1, 2, 4
                assert st["message"].endswith(f" in {2 ** attempt} s"), st["message"]
        st = wait_phase(operator, ns, "backoff", "Failed", timeout=60)
        assert condition(st, "Failed")["reason"] == "RestartLimitExceeded", st
        assert st["restarts"] == 3 and st["lastFailure"]["exitCode"] == 137
        for backoff, took in zip((1, 2, 4), waited, strict=True):
            assert took >= backoff, waited  # the next pods really waited out the backoff
        crashed = [e for e in events(operator, ns, "backoff") if e["reason"] == "CrashedRestart"]
        assert [e["message"].rsplit(" in ", 1)[1] for e in crashed] == ["1 s", "2 s", "4 s"]
        assert "RestartLimitExceeded" in reasons(operator, ns, "backoff")


def test_a_config_the_trainer_refuses_fails_the_job_without_a_restart(operator: Cluster):
    with operator.namespace("badcfg") as ns:
        # passes the CRD's schema, but the trainer finds no data there: exit 2, InvalidConfig
        submit(operator, training_job("badcfg", ns, replicas=1, restartPolicy={"backoffSeconds": 0},
                                      trainer={"data": {"source": "text", "path": "/data/missing.txt"}}))
        st = wait_finished(operator, ns, "badcfg", timeout=120)
        assert st["phase"] == "Failed" and condition(st, "Failed")["reason"] == "InvalidConfig", st
        assert "/data/missing.txt" in condition(st, "Failed")["message"]
        assert st["restarts"] == 0 and st["attempt"] == 0 and st["lastFailure"]["exitCode"] == 2
        time.sleep(2)
        assert workers(operator, ns, "badcfg", attempt=1) == []
        assert {n: len(u) for n, u in pod_creations(operator, ns).items()} == {"badcfg-worker-0": 1}
        assert reasons(operator, ns, "badcfg").count("InvalidConfig") == 1


def test_eviction_restarts_the_gang_outside_the_restart_budget(operator: Cluster):
    with operator.namespace("evict") as ns:
        submit(operator, training_job("evict", ns, restartPolicy={"maxRestarts": 0},
                                      trainer={"training": {"maxSteps": 300}}))
        wait_running(operator, ns, "evict", attempt=0, replicas=2)
        saved = wait_checkpoint(operator, ns, "evict-ckpt")
        evict(operator, ns, "evict-worker-0")  # SIGTERM: rank 0 saves, exits 143
        st = wait_finished(operator, ns, "evict")
        assert st["phase"] == "Succeeded", st
        assert st["preemptions"] == 1 and st["restarts"] == 0 and st["attempt"] == 1
        assert st["lastFailure"]["reason"] == "Preempted", st["lastFailure"]
        assert reasons(operator, ns, "evict").count("PreemptedRestart") == 1
        resumed = [r for log in worker_logs(operator, ns, "evict-worker-0").values()
                   for r in log_events(log, "resumed")]
        assert resumed and resumed[0]["step"] >= saved


def test_a_lost_node_restarts_the_gang_as_pod_lost(operator: Cluster):
    """node-X stops heartbeating (a partition: its processes keep running). The node
    controller marks it Unknown; the admin's out-of-service taint lets the taint manager
    evict and PodGC force-delete its pod; the operator restarts the gang on the other node."""
    op_node = operator_pods(operator)[0]["spec"]["nodeName"]
    # attempt 0's workers on different nodes, so the node that goes holds exactly one
    spread = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
        "topologyKey": "kubernetes.io/hostname",
        "labelSelector": {"matchLabels": {JOB_LABEL: "lost", ATTEMPT_LABEL: "0"}}}]}}
    with operator.namespace("lost") as ns:
        submit(operator, training_job("lost", ns, trainer={"training": {"maxSteps": 600}},
                                      pod={"terminationGracePeriodSeconds": 10, "affinity": spread}))
        pods = wait_running(operator, ns, "lost", attempt=0, replicas=2)
        lost = next(p for p in pods if p["spec"]["nodeName"] != op_node)
        node = lost["spec"]["nodeName"]
        wait_checkpoint(operator, ns, "lost-ckpt")
        heartbeat(operator, node, paused=True)
        try:
            operator.wait_for(f"{node} Unknown", lambda: node_ready(operator, node) == "Unknown", timeout=60)
            operator.kubectl("taint", "node", node, "node.kubernetes.io/out-of-service=nodeshutdown:NoExecute")
            st = wait_status(operator, ns, "lost", "the PodLost restart", lambda s: s.get("attempt", 0) >= 1,
                             timeout=90)
            assert st["lastFailure"]["reason"] == "PodLost", st
            assert st["lastFailure"]["rank"] == int(lost["metadata"]["labels"]["training.adamw.io/replica-index"])
            st = wait_finished(operator, ns, "lost")
        finally:
            heartbeat(operator, node, paused=False)
            operator.kubectl("taint", "node", node, "node.kubernetes.io/out-of-service-", check=False)
        assert st["phase"] == "Succeeded", st
        assert st["preemptions"] == 1 and st["restarts"] == 0
        assert reasons(operator, ns, "lost").count("PodLostRestart") == 1
        assert all(p["spec"]["nodeName"] != node for p in workers(operator, ns, "lost", attempt=1))
        operator.wait_for(f"{node} Ready again", lambda: node_ready(operator, node) == "True", timeout=60)


def test_suspend_saves_and_resume_continues_from_that_checkpoint(operator: Cluster):
    with operator.namespace("sus") as ns:
        submit(operator, training_job("sus", ns, replicas=1, trainer={"training": {"maxSteps": 600}}))
        wait_running(operator, ns, "sus", attempt=0, replicas=1)
        wait_checkpoint(operator, ns, "sus-ckpt")
        operator.kubectl("patch", "awj", "sus", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":true}}')
        st = wait_phase(operator, ns, "sus", "Suspended", timeout=60)
        assert condition(st, "Suspended")["status"] == "True"
        operator.wait_for("no workers", lambda: workers(operator, ns, "sus") == [], timeout=60)
        saved = checkpoints(operator, ns, "sus-ckpt")[-1]  # the SIGTERM save on the way out
        stopped = [r for log in worker_logs(operator, ns, "sus-worker-0").values()
                   for r in log_events(log, "preempted")]
        operator.kubectl("patch", "awj", "sus", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":false}}')
        st = wait_finished(operator, ns, "sus")
        assert st["phase"] == "Succeeded", st
        assert st["restarts"] == 0 and st["preemptions"] == 0
        assert condition(st, "Suspended")["status"] == "False"
        resumed = [r for log in worker_logs(operator, ns, "sus-worker-0").values()
                   for r in log_events(log, "resumed")]
        assert [r["step"] for r in resumed] == [saved], (resumed, stopped)
        seen = reasons(operator, ns, "sus")
        assert seen.count("Suspended") == 1 and seen.count("Resumed") == 1


def config_maps(cluster: Cluster, ns: str, job: str) -> list[str]:
    """The job's trainer-config ConfigMaps (`<job>-config-<hash>`, one per config it ran)."""
    return [c["metadata"]["name"] for c in cluster.get(
        "configmaps", namespace=ns, selector=f"training.adamw.io/job-name={job}")["items"]]


def test_ttl_deletes_the_finished_job_and_the_garbage_collector_its_children(operator: Cluster):
    with operator.namespace("ttl") as ns:
        submit(operator, training_job("ttl", ns, replicas=1, ttlSecondsAfterFinished=2, cleanPodPolicy="None",
                                      trainer={"training": {"maxSteps": 20}}))
        assert wait_finished(operator, ns, "ttl")["phase"] == "Succeeded"
        assert workers(operator, ns, "ttl")  # cleanPodPolicy None: the finished pod stays, until the TTL
        (config,) = config_maps(operator, ns, "ttl")
        operator.wait_for("the job deleted", lambda: gone(operator, "awj", "ttl", ns), timeout=60)
        for kind, name in (("pod", "ttl-worker-0"), ("service", "ttl-workers"), ("configmap", config)):
            operator.wait_for(f"{kind} {name} collected", lambda k=kind, n=name: gone(operator, k, n, ns), timeout=60)
        assert not gone(operator, "pvc", "ttl-ckpt", ns)  # the user's claim is not the job's child


def test_active_deadline_fails_the_job_and_stops_its_workers(operator: Cluster):
    with operator.namespace("deadline") as ns:
        submit(operator, training_job("deadline", ns, replicas=1, activeDeadlineSeconds=10,
                                      trainer={"training": {"maxSteps": 1000000}}))
        wait_running(operator, ns, "deadline", attempt=0, replicas=1)
        st = wait_finished(operator, ns, "deadline", timeout=90)
        assert st["phase"] == "Failed" and condition(st, "Failed")["reason"] == "DeadlineExceeded", st
        took = (_time(st["completionTime"]) - _time(st["startTime"])).total_seconds()
        assert 10 <= took < 30, st
        operator.wait_for("the worker deleted", lambda: workers(operator, ns, "deadline") == [], timeout=60)
        assert st["restarts"] == 0 and "DeadlineExceeded" in reasons(operator, ns, "deadline")


def test_deleting_a_job_lets_the_garbage_collector_remove_its_children(operator: Cluster):
    with operator.namespace("gc") as ns:
        submit(operator, training_job("gc", ns, trainer={"training": {"maxSteps": 1000000}}))
        pods = wait_running(operator, ns, "gc", attempt=0, replicas=2)
        job = operator.get("awj", "gc", ns)
        (config,) = config_maps(operator, ns, "gc")
        for child in [*pods, operator.get("service", "gc-workers", ns), operator.get("configmap", config, ns)]:
            owner = child["metadata"]["ownerReferences"][0]
            assert (owner["kind"], owner["uid"], owner.get("controller")) == ("AdamWTrainingJob",
                                                                             job["metadata"]["uid"], True)
        operator.kubectl("delete", "awj", "gc", "-n", ns, "--wait=false")
        for kind, name in (("pod", "gc-worker-0"), ("pod", "gc-worker-1"), ("service", "gc-workers"),
                           ("configmap", config)):
            operator.wait_for(f"{kind} {name} collected", lambda k=kind, n=name: gone(operator, k, n, ns), timeout=60)
        operator.wait_for("the processes stopped", lambda: not [
            p for p in operator.pod_processes() if p["namespace"] == ns and p.get("pid")], timeout=30)
