"""The real Kopf operator runs against the emulator; the fake kubelet drives pod lifecycles."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import kopf
import pytest

from tests.kube.emulator import KubeAPI
from tests.kube.kopf_runner import run_operator
from tests.kube.kubelet import FakeKubelet
from tests.kube.store import JOBS, PODS

JOB = {"apiVersion": "training.adamw.io/v1alpha1", "kind": "AdamWTrainingJob",
       "metadata": {"name": "job1"}, "spec": {"replicas": 2}}


def toy_operator(registry: kopf.OperatorRegistry) -> None:
    """A stand-in for the real handlers: one pod per replica, status mirrors the pods."""

    @kopf.on.resume(JOBS.group, JOBS.version, JOBS.plural, registry=registry)
    @kopf.on.create(JOBS.group, JOBS.version, JOBS.plural, registry=registry)
    async def create_pods(body: Any, spec: Any, namespace: str, patch: Any, memo: Any, **_: Any) -> None:
        api = memo.api
        for rank in range(spec["replicas"]):
            pod = {"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": f"{body.metadata.name}-worker-{rank}",
                                "labels": {"training.adamw.io/job-name": body.metadata.name}},
                   "spec": {"restartPolicy": "Never", "containers": [{"name": "trainer", "image": "x"}]}}
            kopf.adopt(pod, owner=body)
            try:
                await api.client.create("pods", pod, namespace)
            except Exception as e:  # the emulator answers 409 for an existing name
                if getattr(e, "code", None) != 409:
                    raise
        patch.status["phase"] = "Pending"

    @kopf.on.event("", "v1", "pods", labels={"training.adamw.io/job-name": kopf.PRESENT}, registry=registry)
    async def pod_event(body: Any, memo: Any, **_: Any) -> None:
        memo.seen.append((body.metadata.name, body.get("status", {}).get("phase")))


def memo_for(api: KubeAPI) -> kopf.Memo:
    """The toy handlers reach the emulator through the test client (the real operator has its own)."""
    return kopf.Memo(api=api, seen=[])


async def test_kopf_creates_children_and_sees_kubelet_updates(kube: KubeAPI, fake_kubelet: FakeKubelet) -> None:
    async with run_operator(kube, setup=toy_operator, wait_for_watches=(JOBS, PODS), memo=memo_for(kube)) as op:
        await kube.client.create("awj", JOB)
        pods = await kube.client.wait_for_list(
            "pods", lambda items: len(items) == 2 and all(p["status"]["phase"] == "Running" for p in items),
            labels="training.adamw.io/job-name=job1")
        assert all(p["metadata"]["ownerReferences"][0]["name"] == "job1" for p in pods)
        assert all(p["status"]["podIP"].startswith("10.244.") for p in pods)
        await kube.client.wait_for("awj", "job1", lambda j: j and j.get("status", {}).get("phase") == "Pending")
        await fake_kubelet.finish("job1-worker-1", 1, message='{"reason":"Crashed"}')
        failed = await kube.client.wait_for(
            "pods", "job1-worker-1", lambda p: p["status"]["phase"] == "Failed")
        terminated = failed["status"]["containerStatuses"][0]["state"]["terminated"]
        assert terminated == {**terminated, "exitCode": 1, "reason": "Error", "message": '{"reason":"Crashed"}'}
        await asyncio.sleep(0.3)
        assert ("job1-worker-1", "Failed") in op.memo.seen
        stopping = time.monotonic()
    # Kopf stops on the stop flag; a task it wrongly took for its own would hold it >= 5 s.
    assert time.monotonic() - stopping < 5


async def test_kopf_survives_api_errors_and_dropped_watches(kube: KubeAPI, fake_kubelet: FakeKubelet) -> None:
    async with run_operator(kube, setup=toy_operator, wait_for_watches=(JOBS, PODS), memo=memo_for(kube)):
        status_url = kube.url_of(JOBS, "default", "job1", "status")
        status_fault = kube.fail("PATCH", status_url, 500, times=2)
        watch_fault = kube.fail("GET", kube.url_of(PODS, "default"), 500, times=1)  # a reconnect fails
        await kube.drop_watches()
        await kube.client.create("awj", JOB)
        job = await kube.client.wait_for(
            "awj", "job1", lambda j: j and j.get("status", {}).get("phase") == "Pending", timeout=15)
        assert job["status"]["phase"] == "Pending"
        assert len(await kube.client.list("pods")) == 2
        assert status_fault.fired == 2 and watch_fault.fired == 1
        await kube.drop_watches()
        await asyncio.sleep(0.5)  # Kopf reconnects from its last resourceVersion
        assert set(kube.emulator.open_watches) >= {JOBS.key, PODS.key}


async def test_operator_restart_resumes_without_duplicates(kube: KubeAPI, fake_kubelet: FakeKubelet) -> None:
    async with run_operator(kube, setup=toy_operator, wait_for_watches=(JOBS, PODS), memo=memo_for(kube)):
        await kube.client.create("awj", JOB)
        await kube.client.wait_for_list("pods", lambda items: len(items) == 2)
    async with run_operator(kube, setup=toy_operator, wait_for_watches=(JOBS, PODS), memo=memo_for(kube)):
        await asyncio.sleep(0.5)
        assert sorted(p["metadata"]["name"] for p in await kube.client.list("pods")) == [
            "job1-worker-0", "job1-worker-1"]


async def test_preemption_marks_the_pod_then_it_goes_away(kube: KubeAPI, fake_kubelet: FakeKubelet) -> None:
    pod = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "trainer"}]}}
    await kube.client.create("pods", pod)
    await fake_kubelet.wait_running("p")
    seen: list[dict] = []
    kube.store.listeners.append(lambda rt, ev: seen.append(ev.object) if rt.key == PODS.key else None)
    await fake_kubelet.preempt("p")
    await kube.client.wait_for("pods", "p", lambda p: p is None)
    last = seen[-1]
    conditions = {c["type"]: c for c in last["status"]["conditions"]}
    assert conditions["DisruptionTarget"]["reason"] == "PreemptionByScheduler"
    assert last["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 143


async def test_peering_lets_only_the_highest_priority_operator_act(kube: KubeAPI) -> None:
    """Two Kopf operators peer through `kopf.dev/v1 kopfpeerings`; the lower one pauses."""
    from tests.kube.store import PEERINGS

    await kube.client.create(PEERINGS, {"metadata": {"name": "adamw"}})
    high, low = memo_for(kube), memo_for(kube)

    def counting(registry: kopf.OperatorRegistry) -> None:
        @kopf.on.create(JOBS.group, JOBS.version, JOBS.plural, registry=registry)
        async def created(body: Any, memo: Any, **_: Any) -> None:
            memo.seen.append(body.metadata.name)

    common = dict(setup=counting, standalone=False, peering_name="adamw", wait_for_watches=(PEERINGS,))
    async with run_operator(kube, priority=100, memo=high, **common), \
            run_operator(kube, priority=0, memo=low, **common):
        peering = await kube.client.wait_for(
            PEERINGS, "adamw", lambda p: p is not None and len(p.get("status") or {}) == 2)
        assert sorted(v["priority"] for v in peering["status"].values()) == [0, 100]
        await asyncio.sleep(0.5)  # the lower-priority operator pauses its watches
        await kube.client.create("awj", JOB)
        await kube.client.wait_for("awj", "job1", lambda j: high.seen == ["job1"])
        await asyncio.sleep(0.5)
    assert low.seen == []


async def test_a_handler_module_is_loaded_into_a_fresh_registry_each_time(
        kube: KubeAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.kube.kopf_runner import load_registry

    (tmp_path / "toy_handlers.py").write_text(
        "import kopf\n"
        "@kopf.on.create('training.adamw.io', 'v1alpha1', 'adamwtrainingjobs')\n"
        "async def created(patch, **_):\n"
        "    patch.status['phase'] = 'Seen'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    first, second = load_registry("toy_handlers"), load_registry("toy_handlers")
    assert len(first._changing.get_all_handlers()) == len(second._changing.get_all_handlers()) == 1
    async with run_operator(kube, module="toy_handlers"):
        await kube.client.create("awj", JOB)
        await kube.client.wait_for("awj", "job1", lambda j: (j.get("status") or {}).get("phase") == "Seen")
