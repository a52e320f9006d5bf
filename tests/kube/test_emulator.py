"""The emulator behaves like a kube-apiserver where the operator relies on it."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import aiohttp
import pytest

from tests.kube.emulator import KubeAPI
from tests.kube.store import CONFIGMAPS, JOBS, PODS, ApiError

JOB = {"apiVersion": "training.adamw.io/v1alpha1", "kind": "AdamWTrainingJob",
       "metadata": {"name": "job1"}, "spec": {"replicas": 2}}


def owned_by(owner: dict, name: str, **extra: object) -> dict:
    ref = {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
           "uid": owner["metadata"]["uid"], "controller": True}
    return {"metadata": {"name": name, "ownerReferences": [ref], **extra}}


async def test_create_fills_server_metadata_and_namespace_from_url(kube: KubeAPI) -> None:
    job = await kube.client.create("awj", JOB, namespace="default")
    meta = job["metadata"]
    assert meta["namespace"] == "default"
    assert meta["generation"] == 1
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z")
    assert int(meta["resourceVersion"]) > 0
    with pytest.raises(ApiError) as conflict:
        await kube.client.create("awj", JOB)
    assert conflict.value.code == 409
    with pytest.raises(ApiError) as mismatch:
        await kube.client.create("configmaps", {"metadata": {"name": "x", "namespace": "other"}})
    assert mismatch.value.code == 400


async def test_generate_name_gets_a_unique_suffix(kube: KubeAPI) -> None:
    names = {(await kube.client.create("events", {"metadata": {"generateName": "ev-"}}))["metadata"]["name"]
             for _ in range(5)}
    assert len(names) == 5 and all(n.startswith("ev-") and len(n) == 8 for n in names)
    new_api = await kube.client.create("events.k8s.io/v1/events", {"metadata": {"generateName": "e-"}})
    assert new_api["apiVersion"] == "events.k8s.io/v1"


async def test_generation_bumps_only_on_spec_changes(kube: KubeAPI) -> None:
    await kube.client.create("awj", JOB)
    labelled = await kube.client.patch("awj", "job1", {"metadata": {"labels": {"a": "b"}}})
    assert labelled["metadata"]["generation"] == 1
    changed = await kube.client.patch("awj", "job1", {"spec": {"replicas": 3}})
    assert changed["metadata"]["generation"] == 2
    assert int(changed["metadata"]["resourceVersion"]) > int(labelled["metadata"]["resourceVersion"])


async def test_status_subresource_is_separate_from_the_main_resource(kube: KubeAPI) -> None:
    created = await kube.client.create("awj", {**JOB, "status": {"phase": "Forged"}})
    assert "status" not in created  # custom resources get status only via /status
    main = await kube.client.patch("awj", "job1", {"spec": {"replicas": 4}, "status": {"phase": "X"}})
    assert "status" not in main and main["spec"]["replicas"] == 4
    status = await kube.client.patch("awj", "job1", {"spec": {"replicas": 9}, "status": {"phase": "Running"}},
                                     subresource="status")
    assert status["status"] == {"phase": "Running"}
    assert status["spec"]["replicas"] == 4 and status["metadata"]["generation"] == 2


async def test_label_and_field_selectors_filter_lists(kube: KubeAPI) -> None:
    for name, labels in [("a", {"job": "x", "rank": "0"}), ("b", {"job": "x", "rank": "1"}), ("c", {"job": "y"})]:
        await kube.client.create("configmaps", {"metadata": {"name": name, "labels": labels}})

    async def names(**kwargs: str) -> list[str]:
        return sorted(o["metadata"]["name"] for o in await kube.client.list("configmaps", **kwargs))

    assert await names(labels="job=x") == ["a", "b"]
    assert await names(labels="job=x,rank!=0") == ["b"]
    assert await names(labels="job in (x, y),!rank") == ["c"]
    assert await names(labels="rank notin (1)") == ["a", "c"]
    assert await names(labels="rank") == ["a", "b"]
    assert await names(fields="metadata.name=c") == ["c"]


async def test_patch_kinds_and_optimistic_concurrency(kube: KubeAPI) -> None:
    cm = await kube.client.create("configmaps", {"metadata": {"name": "cm"}, "data": {"a": "1", "b": "2"}})
    merged = await kube.client.patch("configmaps", "cm", {"data": {"a": None, "c": "3"}})
    assert merged["data"] == {"b": "2", "c": "3"}
    with pytest.raises(ApiError) as failed_test:  # Kopf's finalizer patches rely on this 422
        await kube.client.patch("configmaps", "cm", [
            {"op": "test", "path": "/metadata/resourceVersion", "value": cm["metadata"]["resourceVersion"]},
            {"op": "add", "path": "/data/d", "value": "4"}])
    assert failed_test.value.code == 422
    with pytest.raises(ApiError) as stale:
        await kube.client.replace("configmaps", "cm", {**cm, "data": {"z": "0"}})
    assert stale.value.code == 409
    fresh = await kube.client.get("configmaps", "cm")
    replaced = await kube.client.replace("configmaps", "cm", {**fresh, "data": {"z": "0"}})
    assert replaced["data"] == {"z": "0"}


async def test_finalizers_hold_deletion_until_removed(kube: KubeAPI) -> None:
    await kube.client.create("awj", {**JOB, "metadata": {"name": "job1", "finalizers": ["x/y"]}})
    marked = await kube.client.delete("awj", "job1")
    assert marked["metadata"]["deletionTimestamp"]
    assert await kube.client.get_or_none("awj", "job1") is not None
    await kube.client.patch("awj", "job1", {"metadata": {"finalizers": None}})
    assert await kube.client.get_or_none("awj", "job1") is None


async def test_deleting_an_owner_collects_its_dependents(kube: KubeAPI) -> None:
    job = await kube.client.create("awj", JOB)
    await kube.client.create("configmaps", owned_by(job, "job1-config"))
    await kube.client.create("services", owned_by(job, "job1-workers"))
    await kube.client.create("pods", {**owned_by(job, "job1-worker-0"), "spec": {"containers": [{"name": "t"}]}})
    await kube.client.create("configmaps", {"metadata": {"name": "unrelated"}})
    await kube.client.delete("awj", "job1")
    assert [c["metadata"]["name"] for c in await kube.client.list("configmaps")] == ["unrelated"]
    assert await kube.client.list("services") == [] and await kube.client.list("pods") == []


async def test_bound_pods_terminate_gracefully_until_the_kubelet_confirms(kube: KubeAPI) -> None:
    pod = {"metadata": {"name": "p"}, "spec": {"nodeName": "node-1", "terminationGracePeriodSeconds": 7,
                                               "containers": [{"name": "t"}]}}
    created = await kube.client.create("pods", pod)
    assert created["status"]["phase"] == "Pending"
    assert created["spec"]["containers"][0]["terminationMessagePath"] == "/dev/termination-log"
    deleting = await kube.client.delete("pods", "p")
    assert deleting["metadata"]["deletionGracePeriodSeconds"] == 7
    assert await kube.client.get_or_none("pods", "p") is not None
    await kube.client.delete("pods", "p", grace_period=0)  # the kubelet's confirmation
    assert await kube.client.get_or_none("pods", "p") is None


async def _read_events(response: aiohttp.ClientResponse, count: int, timeout: float = 3.0) -> list[dict]:
    events = []
    async with asyncio.timeout(timeout):
        while len(events) < count:
            line = await response.content.readline()
            if not line:
                break
            events.append(json.loads(line))
    return events


async def test_watch_resumes_from_a_resource_version_with_selectors(kube: KubeAPI) -> None:
    first = await kube.client.create("configmaps", {"metadata": {"name": "a", "labels": {"x": "1"}}})
    await kube.client.create("configmaps", {"metadata": {"name": "b", "labels": {"x": "1"}}})
    since = first["metadata"]["resourceVersion"]
    url = kube.url + CONFIGMAPS.url("default")
    params = {"watch": "true", "resourceVersion": since, "labelSelector": "x=1"}
    async with aiohttp.ClientSession() as session, session.get(url, params=params) as response:
        replayed = await _read_events(response, 1)
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in replayed] == [("ADDED", "b")]
        await kube.client.patch("configmaps", "a", {"metadata": {"labels": {"x": "2"}}})  # leaves
        await kube.client.create("configmaps", {"metadata": {"name": "c"}})  # never matches
        await kube.client.patch("configmaps", "b", {"data": {"k": "v"}})
        live = await _read_events(response, 2)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in live] == [("DELETED", "a"), ("MODIFIED", "b")]


async def test_watch_from_a_compacted_version_answers_410(kube: KubeAPI) -> None:
    await kube.client.create("configmaps", {"metadata": {"name": "a"}})
    for i in range(3):
        await kube.client.patch("configmaps", "a", {"data": {"i": str(i)}})
    kube.store.compact(keep_last=1)
    params = {"watch": "true", "resourceVersion": "1"}
    async with aiohttp.ClientSession() as session, \
            session.get(kube.url + CONFIGMAPS.url("default"), params=params) as response:
        [event] = await _read_events(response, 1)
    assert event["type"] == "ERROR" and event["object"]["code"] == 410


async def test_dropped_watches_are_cut_mid_stream(kube: KubeAPI) -> None:
    params = {"watch": "true"}
    async with aiohttp.ClientSession() as session, \
            session.get(kube.url + PODS.url("default"), params=params) as response:
        await asyncio.sleep(0.05)
        assert kube.emulator.open_watches == [PODS.key]
        assert await kube.drop_watches() == 1
        with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, ConnectionError)):
            async with asyncio.timeout(3):
                while await response.content.readline():
                    pass
                raise ConnectionError("ended")  # a clean EOF also counts as cut
    await asyncio.sleep(0.05)
    assert kube.emulator.open_watches == []


async def test_fault_injection_answers_the_next_n_requests(kube: KubeAPI) -> None:
    await kube.client.create("awj", JOB)
    fault = kube.fail("PATCH", kube.url_of(JOBS, "default", "job1", "status"), 409, times=2)
    for _ in range(2):
        with pytest.raises(ApiError) as err:
            await kube.client.patch("awj", "job1", {"status": {"phase": "Running"}}, subresource="status")
        assert err.value.code == 409
    ok = await kube.client.patch("awj", "job1", {"status": {"phase": "Running"}}, subresource="status")
    assert ok["status"]["phase"] == "Running" and fault.fired == 2
    kube.fail("*", kube.url_of(PODS, "default"), 500)
    with pytest.raises(ApiError) as err:
        await kube.client.list("pods")
    assert err.value.code == 500
    assert await kube.client.list("pods") == []


async def test_discovery_serves_the_custom_resource_with_status(kube: KubeAPI) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(kube.url + "/apis/training.adamw.io/v1alpha1") as r:
            resources = {res["name"]: res for res in (await r.json())["resources"]}
        async with session.get(kube.url + "/api/v1") as r:
            core = await r.json()
    assert resources["adamwtrainingjobs"]["kind"] == "AdamWTrainingJob"
    assert resources["adamwtrainingjobs"]["namespaced"] is True
    assert "adamwtrainingjobs/status" in resources
    assert core["groupVersion"] == "v1"
    assert {"pods", "pods/status", "services", "configmaps", "events", "namespaces"} <= {
        res["name"] for res in core["resources"]}
    assert [ns["metadata"]["name"] for ns in await kube.client.list("namespaces", None)] == ["default"]


async def test_the_kubernetes_client_and_kubectl_talk_to_it(kube: KubeAPI) -> None:
    import kubernetes

    assert os.environ["KUBECONFIG"] == str(kube.kubeconfig)
    kubernetes.config.load_kube_config()
    core = kubernetes.client.CoreV1Api()
    await asyncio.to_thread(core.create_namespaced_config_map, "default",
                            {"metadata": {"name": "from-client"}, "data": {"k": "v"}})
    await asyncio.to_thread(core.patch_namespaced_config_map, "from-client", "default", {"data": {"k": "w"}})
    listed = await asyncio.to_thread(core.list_namespaced_config_map, "default")
    assert [(c.metadata.name, c.data) for c in listed.items] == [("from-client", {"k": "w"})]

    kubectl = Path(__file__).resolve().parents[2] / ".tools/kubectl/kubectl"
    kubectl_path = str(kubectl) if kubectl.exists() else shutil.which("kubectl")
    if kubectl_path is None:
        pytest.skip("kubectl is not installed (make tools installs it)")
    proc = await asyncio.create_subprocess_exec(
        kubectl_path, "get", "configmaps", "-o", "name",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert out.decode().split() == ["configmap/from-client"]


async def test_kubectl_get_shows_the_crds_printer_columns(tmp_path: Path) -> None:
    """`kubectl get awj` renders the CRD's additionalPrinterColumns from the job's status."""
    from tests.kube.emulator import kube_api

    repo = Path(__file__).resolve().parents[2]
    kubectl = repo / ".tools/kubectl/kubectl"
    crd = repo / "crds" / "adamwtrainingjobs.training.adamw.io.yaml"
    if not kubectl.exists() or not crd.exists():
        pytest.skip("kubectl (make tools) or the generated CRD is missing")
    async with kube_api(workdir=tmp_path, crd_files=[crd]) as api:
        await api.client.create("awj", JOB)
        await api.client.patch("awj", "job1", {"status": {
            "phase": "Running", "step": 120, "loss": 2.5, "nonfiniteRate": 0.01, "restarts": 1,
            "lastCheckpoint": {"step": 100}}}, subresource="status")
        proc = await asyncio.create_subprocess_exec(
            str(kubectl), "get", "awj", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    header, row = out.decode().splitlines()
    assert header.split() == ["NAME", "STATE", "STEP", "LOSS", "NAN-RATE", "RESTARTS", "LAST-CHECKPOINT", "AGE"]
    assert row.split()[:7] == ["job1", "Running", "120", "2.5", "0.01", "1", "100"]
