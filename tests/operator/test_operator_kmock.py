"""The real Kopf operator over HTTP against the API emulator, with a process-free kubelet.

What a user sees: pods appear, the status moves, failures restart the whole gang, events
tell the story; and the operator survives its own restart, API errors and dropped watches.
"""

from __future__ import annotations

import asyncio

from adamw_operator.controller import Controller
from adamw_operator.kube import KubeClient

from tests.kube.store import JOBS, PODS
from tests.operator.harness import condition, events_for, phase_is, running_operator, workers
from tests.operator.jobs import job_manifest

WAIT = 10.0


def env_of(pod):
    return {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}


async def all_running(api, job, attempt, n=2):
    return await api.client.wait_for_list(
        "pods", lambda items: len(items) == n and all(p.get("status", {}).get("phase") == "Running" for p in items),
        labels=f"training.adamw.io/job-name={job},training.adamw.io/attempt={attempt}", timeout=WAIT)


async def test_job_runs_to_success(kube, fake_kubelet):
    async with running_operator(kube):
        await kube.client.create("awj", job_manifest("ok"))
        pods = await all_running(kube, "ok", 0)
        assert sorted(p["metadata"]["name"] for p in pods) == ["ok-worker-0", "ok-worker-1"]
        assert await kube.client.get("configmaps", "ok-config")
        assert (await kube.client.get("services", "ok-workers"))["spec"]["clusterIP"] == "None"
        job = await kube.client.wait_for("awj", "ok", phase_is("Running"), timeout=WAIT)
        assert condition(job, "Running")["status"] == "True"
        for rank in (0, 1):
            await fake_kubelet.finish(f"ok-worker-{rank}", 0)
        job = await kube.client.wait_for("awj", "ok", phase_is("Succeeded"), timeout=WAIT)
        st = job["status"]
        assert st["restarts"] == 0 and st["step"] == 40 and st["completionTime"]
        assert condition(job, "Succeeded")["status"] == "True"
        assert st["observedGeneration"] == job["metadata"]["generation"]
        # Kopf lists and watches only worker pods (server-side selector), not every pod
        kopf_pod_reads = [r for r in kube.emulator if r.url.path == "/api/v1/namespaces/default/pods"
                          and "kopf" in str(r.headers.get("User-Agent", ""))]
        assert kopf_pod_reads
        assert all(r.params.get("labelSelector") == "training.adamw.io/job-name" for r in kopf_pod_reads)
        # the operator writes only the status: no finalizers or Kopf annotations on the job
        assert not job["metadata"].get("finalizers")
        assert not any("kopf" in k for k in job["metadata"].get("annotations", {}))


async def test_crash_gang_restarts_then_succeeds(kube, fake_kubelet):
    async with running_operator(kube) as controller:
        await kube.client.create("awj", job_manifest("crash"))
        first = await all_running(kube, "crash", 0)
        uids = {p["metadata"]["uid"] for p in first}
        await fake_kubelet.finish("crash-worker-1", 1, message="segfault in rank 1")
        second = await all_running(kube, "crash", 1)
        assert not uids & {p["metadata"]["uid"] for p in second}  # the whole gang is new
        assert {env_of(p)["ADAMW_RESTART_COUNT"] for p in second} == {"1"}
        job = await kube.client.get("awj", "crash")
        assert job["status"]["restarts"] == 1 and job["status"]["lastFailure"]["rank"] == 1
        for rank in (0, 1):
            await fake_kubelet.finish(f"crash-worker-{rank}", 0)
        job = await kube.client.wait_for("awj", "crash", phase_is("Succeeded"), timeout=WAIT)
        assert job["status"]["restarts"] == 1 and job["status"]["attempt"] == 1
        reasons = [e["reason"] for e in await events_for(kube, "crash")]
        assert "CrashedRestart" in reasons and "Succeeded" in reasons
        restarts = controller.metrics.registry.get_sample_value(
            "adamw_operator_restarts_total", {"namespace": "default", "job_name": "crash", "reason": "Crashed"})
        assert restarts == 1  # alerts can name the job


async def test_invalid_config_fails_without_restart(kube, fake_kubelet):
    async with running_operator(kube) as controller:
        await kube.client.create("awj", job_manifest("bad"))
        await all_running(kube, "bad", 0)
        await fake_kubelet.finish("bad-worker-0", 2, message='{"reason":"InvalidConfig","exitCode":2,'
                                  '"message":"data.path: file not found"}')
        job = await kube.client.wait_for("awj", "bad", phase_is("Failed"), timeout=WAIT)
        assert condition(job, "Failed")["reason"] == "InvalidConfig"
        assert "data.path: file not found" in condition(job, "Failed")["message"]
        await asyncio.sleep(0.5)
        assert await workers(kube, "bad", attempt=1) == []
        assert (await kube.client.get("awj", "bad"))["status"]["restarts"] == 0
        failures = controller.metrics.registry.get_sample_value(
            "adamw_operator_job_failures_total", {"namespace": "default", "job_name": "bad", "reason": "InvalidConfig"})
        assert failures == 1


async def test_preemption_restarts_without_using_the_budget(kube, fake_kubelet):
    async with running_operator(kube):
        await kube.client.create("awj", job_manifest("pre", restartPolicy={"maxRestarts": 0}))
        await all_running(kube, "pre", 0)
        await fake_kubelet.preempt("pre-worker-1")
        await all_running(kube, "pre", 1)
        job = await kube.client.get("awj", "pre")
        assert job["status"]["preemptions"] == 1 and job["status"]["restarts"] == 0


async def test_invalid_spec_is_reported_and_creates_nothing(kube, fake_kubelet):
    async with running_operator(kube):
        await kube.client.create("awj", job_manifest("inv", checkpointStorage={"volumeName": "nope"}))
        job = await kube.client.wait_for("awj", "inv", lambda j: j and condition(j, "InvalidSpec"), timeout=WAIT)
        assert "volumeName: 'nope'" in condition(job, "InvalidSpec")["message"]
        await asyncio.sleep(0.3)
        assert await workers(kube, "inv") == []
        # fixing the spec lets it run
        await kube.client.patch("awj", "inv", {"spec": {"checkpointStorage": {"volumeName": None,
                                                                              "claimName": "ckpt"}}})
        await all_running(kube, "inv", 0)
        job = await kube.client.wait_for("awj", "inv", phase_is("Running"), timeout=WAIT)
        assert condition(job, "InvalidSpec")["status"] == "False"


async def test_suspend_and_resume(kube, fake_kubelet):
    async with running_operator(kube):
        await kube.client.create("awj", job_manifest("sus"))
        await all_running(kube, "sus", 0)
        await kube.client.patch("awj", "sus", {"spec": {"suspend": True}})
        await kube.client.wait_for("awj", "sus", phase_is("Suspended"), timeout=WAIT)
        await kube.client.wait_for_list("pods", lambda items: not items,
                                        labels="training.adamw.io/job-name=sus", timeout=WAIT)
        await kube.client.patch("awj", "sus", {"spec": {"suspend": False}})
        await kube.client.wait_for("awj", "sus", phase_is("Running"), timeout=WAIT)
        job = await kube.client.get("awj", "sus")
        assert job["status"]["restarts"] == 0 and condition(job, "Suspended")["status"] == "False"


async def test_ttl_deletes_finished_job_and_children(kube, fake_kubelet):
    async with running_operator(kube):
        await kube.client.create("awj", job_manifest("ttl", replicas=1, ttlSecondsAfterFinished=1))
        await all_running(kube, "ttl", 0, n=1)
        await fake_kubelet.finish("ttl-worker-0", 0)
        await kube.client.wait_for("awj", "ttl", lambda j: j is None, timeout=WAIT)
        await kube.client.wait_for_list("pods", lambda items: not items,
                                        labels="training.adamw.io/job-name=ttl", timeout=WAIT)


async def test_operator_restart_creates_no_duplicates(kube, fake_kubelet):
    created: list[str] = []
    kube.store.listeners.append(
        lambda rt, ev: created.append(ev.object["metadata"]["name"])
        if rt.key == PODS.key and ev.type == "ADDED" else None)
    async with running_operator(kube):
        await kube.client.create("awj", job_manifest("re"))
        before = await all_running(kube, "re", 0)
        await kube.client.wait_for("awj", "re", phase_is("Running"), timeout=WAIT)
    assert sorted(created) == ["re-worker-0", "re-worker-1"]
    async with running_operator(kube):
        await asyncio.sleep(1.0)
        after = await workers(kube, "re")
        assert {p["metadata"]["uid"] for p in after} == {p["metadata"]["uid"] for p in before}
        job = await kube.client.get("awj", "re")
        assert job["status"]["attempt"] == 0 and job["status"]["phase"] == "Running"
        assert len(created) == 2  # nothing was recreated by the new operator
        # and it still acts: a crash after the restart gang-restarts exactly once
        await fake_kubelet.finish("re-worker-0", 1)
        await all_running(kube, "re", 1)
        await asyncio.sleep(0.5)
    assert len(created) == 4
    assert (await kube.client.get("awj", "re"))["status"]["restarts"] == 1


async def test_survives_api_errors_and_dropped_watches(kube, fake_kubelet):
    async with running_operator(kube):
        status_path = kube.url_of(JOBS, "default", "flaky", "status")
        kube.fail("PATCH", status_path, 409, times=2)
        kube.fail("POST", "/api/v1/namespaces/default/pods", 500, times=2)
        await kube.client.create("awj", job_manifest("flaky"))
        await all_running(kube, "flaky", 0)
        await kube.client.wait_for("awj", "flaky", phase_is("Running"), timeout=WAIT)
        assert await kube.drop_watches() >= 2
        kube.fail("GET", kube.url_of(JOBS, "default", "flaky"), 500, times=3)
        await fake_kubelet.finish("flaky-worker-1", 1)
        await all_running(kube, "flaky", 1)
        for rank in (0, 1):
            await fake_kubelet.finish(f"flaky-worker-{rank}", 0)
        job = await kube.client.wait_for("awj", "flaky", phase_is("Succeeded"), timeout=WAIT)
        assert job["status"]["restarts"] == 1
        assert len(await workers(kube, "flaky")) == 2  # no duplicates anywhere


async def test_pod_refused_by_the_server_is_reported_then_cleared(kube, fake_kubelet):
    seen: list[tuple[str, str, str]] = []  # every InvalidSpec condition ever stored
    kube.store.listeners.append(lambda rt, ev: seen.extend(
        (c["status"], c["reason"], c["message"]) for c in (ev.object.get("status") or {}).get("conditions", [])
        if c["type"] == "InvalidSpec") if rt.key == JOBS.key else None)
    async with running_operator(kube):
        kube.fail("POST", "/api/v1/namespaces/default/pods", 422, times=2,
                  message='Pod "rej-worker-0" is invalid: spec.tolerations[0].operator: Unsupported value')
        await kube.client.create("awj", job_manifest("rej"))
        await all_running(kube, "rej", 0)  # retried, and the server accepts this time
        job = await kube.client.wait_for("awj", "rej", phase_is("Running"), timeout=WAIT)
        assert condition(job, "InvalidSpec")["status"] == "False"
        rejected = [s for s in seen if s[0] == "True"]
        assert rejected and rejected[0][1] == "PodRejected" and "tolerations[0].operator" in rejected[0][2]
        reasons = [e["reason"] for e in await events_for(kube, "rej")]
        assert reasons.count("PodRejected") == 1


class StaleOnce(KubeClient):
    """A replica that read the job before a restart (a peering hand-over, a slow operator)."""

    def __init__(self, url, stale):
        super().__init__(url)
        self.stale = stale

    async def get_job(self, namespace, name):
        if self.stale is not None:
            stale, self.stale = self.stale, None
            return stale
        return await super().get_job(namespace, name)


async def test_a_replica_acting_on_a_stale_view_cannot_undo_a_restart(kube, fake_kubelet):
    async with running_operator(kube):
        await kube.client.create("awj", job_manifest("race"))
        await all_running(kube, "race", 0)
        await kube.client.wait_for("awj", "race", phase_is("Running"), timeout=WAIT)
        stale = await kube.client.get("awj", "race")
        await fake_kubelet.finish("race-worker-1", 1)
        current = await all_running(kube, "race", 1)
        other = Controller(StaleOnce(kube.url, stale))
        try:
            await other.reconcile("default", "race")  # decides on attempt 0: its write is refused
            job = await kube.client.get("awj", "race")
            assert job["status"]["attempt"] == 1 and job["status"]["restarts"] == 1
            assert {p["metadata"]["uid"] for p in await workers(kube, "race")} == \
                {p["metadata"]["uid"] for p in current}  # the new attempt's pods are untouched
            await other.reconcile("default", "race")  # then it reads fresh and agrees
            assert (await kube.client.get("awj", "race"))["status"]["restarts"] == 1
        finally:
            await other.stop()


async def test_all_namespaces(tmp_path):
    from tests.kube.emulator import kube_api
    from tests.kube.kubelet import FakeKubelet

    async with kube_api(namespaces=("team-a", "team-b"), workdir=tmp_path) as api, FakeKubelet(api), \
            running_operator(api, clusterwide=True):
        for ns in ("team-a", "team-b"):
            manifest = job_manifest("multi")
            manifest["metadata"]["namespace"] = ns
            await api.client.create("awj", manifest, namespace=ns)
        for ns in ("team-a", "team-b"):
            job = await api.client.wait_for("awj", "multi", phase_is("Running"), namespace=ns, timeout=WAIT)
            pods = await api.client.list("pods", ns, labels="training.adamw.io/job-name=multi")
            assert len(pods) == 2 and job["status"]["attempt"] == 0
            env = env_of(pods[0])
            assert env["MASTER_ADDR"] == f"multi-worker-0.multi-workers.{ns}.svc.cluster.local"
