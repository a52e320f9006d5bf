"""The node agent runs pods as real processes, with a torch-free stand-in trainer."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.kube.emulator import KubeAPI
from tests.kube.node_agent import NodeAgent

STANDIN = Path(__file__).parent / "standin" / "worker.py"
CONFIG = {"checkpointDir": "/checkpoints/run", "terminationMessagePath": "/dev/termination-log"}


@pytest_asyncio.fixture()
async def agent(kube: KubeAPI, tmp_path: Path) -> AsyncIterator[NodeAgent]:
    async with NodeAgent(kube, tmp_path / "node") as node:
        yield node
        assert not node.errors, node.errors


def worker_pod(rank: int, mode: str, *, job: str = "job1", grace: int = 30, claim: str = "job1-ckpt",
               extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """A pod shaped like the operator's (pod contract), running the stand-in."""
    env = {"RANK": str(rank), "WORLD_SIZE": "2", "STANDIN_MODE": mode,
           "MASTER_ADDR": f"{job}-worker-0.{job}-workers.default.svc.cluster.local", **(extra_env or {})}
    return {
        "metadata": {"name": f"{job}-worker-{rank}", "labels": {"training.adamw.io/job-name": job}},
        "spec": {
            "hostname": f"{job}-worker-{rank}", "subdomain": f"{job}-workers", "restartPolicy": "Never",
            "terminationGracePeriodSeconds": grace,
            "containers": [{
                "name": "trainer", "image": "adamw-trainer:dev",
                "command": [sys.executable, str(STANDIN), "--config", "/etc/adamw/config.yaml"],
                "env": [{"name": k, "value": v} for k, v in env.items()]
                + [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                "volumeMounts": [{"name": "config", "mountPath": "/etc/adamw", "readOnly": True},
                                 {"name": "checkpoints", "mountPath": "/checkpoints"},
                                 {"name": "tmp", "mountPath": "/tmp"}],
            }],
            "volumes": [{"name": "config", "configMap": {"name": f"{job}-config"}},
                        {"name": "checkpoints", "persistentVolumeClaim": {"claimName": claim}},
                        {"name": "tmp", "emptyDir": {}}],
        },
    }


async def config_map(kube: KubeAPI, job: str = "job1") -> None:
    await kube.client.create("configmaps", {"metadata": {"name": f"{job}-config"},
                                            "data": {"config.yaml": json.dumps(CONFIG)}})


def terminated(pod: dict) -> dict:
    return pod["status"]["containerStatuses"][0]["state"]["terminated"]


async def wait_phase(kube: KubeAPI, name: str, phase: str, timeout: float = 20) -> dict:
    return await kube.client.wait_for("pods", name, lambda p: p and p["status"].get("phase") == phase,
                                      timeout=timeout)


async def test_pods_run_with_local_mounts_ips_and_dns(kube: KubeAPI, agent: NodeAgent) -> None:
    await config_map(kube)
    port = {"STANDIN_PORT": "29517"}
    for rank in (1, 0):  # rank 1 first: it waits until rank 0's name resolves
        await kube.client.create("pods", worker_pod(rank, "serve", extra_env=port))
    pods = [await wait_phase(kube, f"job1-worker-{r}", "Succeeded") for r in (0, 1)]
    ips = [p["status"]["podIP"] for p in pods]
    assert ips[0] != ips[1] and all(ip.startswith("127.0.") for ip in ips)
    assert json.loads(terminated(pods[0])["message"]) == {"reason": "Completed", "exitCode": 0, "rank": 0}
    assert terminated(pods[0])["reason"] == "Completed"

    claim = agent.root / "claims" / "default" / "job1-ckpt"
    assert (claim / "run" / "greeting.txt").read_text() == "hello from rank 1"
    seen = json.loads((claim / "run" / "seen-1.json").read_text())
    assert seen["env"]["MASTER_ADDR"] == ips[0]  # cluster DNS name -> rank 0's pod IP
    assert seen["env"]["ADAMW_METRICS_HOST"] == ips[1]
    assert seen["env"]["GLOO_SOCKET_IFNAME"] == "lo" and seen["env"]["POD_NAME"] == "job1-worker-1"
    assert seen["config"]["checkpointDir"] == str(claim / "run")  # mount paths rewritten in files
    assert seen["config"]["terminationMessagePath"].endswith("termination-log")
    assert Path(seen["config_path"]).read_text() == json.dumps(seen["config"])
    assert Path(seen["env"]["TMPDIR"]).is_dir() and "volumes/tmp" in seen["env"]["TMPDIR"]


async def test_exit_codes_and_kill_become_failed_pods(kube: KubeAPI, agent: NodeAgent) -> None:
    await config_map(kube)
    await kube.client.create("pods", worker_pod(0, "exit:3"))
    await kube.client.create("pods", worker_pod(1, "wait"))
    diverged = await wait_phase(kube, "job1-worker-0", "Failed")
    assert terminated(diverged)["exitCode"] == 3 and terminated(diverged)["reason"] == "Error"
    await kube.client.wait_for("pods", "job1-worker-1", lambda p: p["status"].get("phase") == "Running")
    ready = agent.root / "claims/default/job1-ckpt/run/ready-1"
    await kube.client.wait_for("pods", "job1-worker-1", lambda p: ready.exists())
    agent.kill("job1-worker-1", signal.SIGKILL)
    killed = await wait_phase(kube, "job1-worker-1", "Failed")
    assert terminated(killed)["exitCode"] == 137 and terminated(killed)["signal"] == signal.SIGKILL


async def test_deletion_sends_sigterm_then_sigkill_after_the_grace_period(kube: KubeAPI, agent: NodeAgent) -> None:
    await config_map(kube)
    await kube.client.create("pods", worker_pod(0, "ignore-term", grace=1))
    await wait_phase(kube, "job1-worker-0", "Running")
    ready = agent.root / "claims/default/job1-ckpt/run/ready-0"
    await kube.client.wait_for("pods", "job1-worker-0", lambda p: ready.exists())
    pid = agent.run_of("job1-worker-0").process.pid
    started = time.monotonic()
    await kube.client.delete("pods", "job1-worker-0")
    await kube.client.wait_for("pods", "job1-worker-0", lambda p: p is None, timeout=10)
    assert 1.0 <= time.monotonic() - started < 15  # the grace period is honoured, then SIGKILL
    with pytest.raises(ProcessLookupError):
        import os
        os.kill(pid, 0)


async def test_preemption_gives_sigterm_and_a_disruption_condition(kube: KubeAPI, agent: NodeAgent) -> None:
    await config_map(kube)
    await kube.client.create("pods", worker_pod(0, "wait"))
    ready = agent.root / "claims/default/job1-ckpt/run/ready-0"
    await kube.client.wait_for("pods", "job1-worker-0", lambda p: ready.exists())
    final: list[dict] = []
    kube.store.listeners.append(lambda rt, ev: final.append(ev.object) if rt.plural == "pods" else None)
    await agent.preempt("job1-worker-0")
    await kube.client.wait_for("pods", "job1-worker-0", lambda p: p is None, timeout=10)
    last = final[-1]
    assert {c["type"]: c.get("reason") for c in last["status"]["conditions"]}["DisruptionTarget"] == \
        "PreemptionByScheduler"
    assert terminated(last)["exitCode"] == 143
    assert json.loads(terminated(last)["message"])["reason"] == "Preempted"


async def test_claims_survive_pod_recreation_and_empty_dirs_do_not(kube: KubeAPI, agent: NodeAgent) -> None:
    await kube.client.create("pods", worker_pod(0, "exit:0"))
    pending = await kube.client.wait_for(
        "pods", "job1-worker-0",
        lambda p: "waiting" in (p["status"].get("containerStatuses") or [{}])[0].get("state", {}))
    assert "job1-config" in pending["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
    await config_map(kube)  # the kubelet retries until the ConfigMap exists
    first = await wait_phase(kube, "job1-worker-0", "Succeeded")
    claim = agent.root / "claims/default/job1-ckpt/run"
    (claim / "checkpoint-step-5").write_text("saved")
    first_tmp = json.loads((claim / "seen-0.json").read_text())["env"]["TMPDIR"]
    Path(first_tmp, "scratch").write_text("x")
    await kube.client.delete("pods", "job1-worker-0")
    await kube.client.wait_for("pods", "job1-worker-0", lambda p: p is None)
    await kube.client.create("pods", worker_pod(0, "exit:0"))
    second = await wait_phase(kube, "job1-worker-0", "Succeeded")
    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    assert (claim / "checkpoint-step-5").read_text() == "saved"
    second_tmp = json.loads((claim / "seen-0.json").read_text())["env"]["TMPDIR"]
    assert second_tmp != first_tmp and not Path(second_tmp, "scratch").exists()
    await asyncio.sleep(0)
