"""The node agent runs the real `adamw-train` from operator-shaped pods (2 ranks, gloo)."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
import yaml
from adamw_trainer.config import TrainerConfig

from tests.kube.emulator import KubeAPI
from tests.kube.node_agent import NodeAgent
from tests.trainer.trainer_process import free_port

pytestmark = pytest.mark.slow


def trainer_pod(rank: int, master_port: int) -> dict:
    env = {"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_PORT": str(master_port),
           "MASTER_ADDR": "tiny-worker-0.tiny-workers.default.svc.cluster.local",
           "ADAMW_RESTART_COUNT": "0", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return {
        "metadata": {"name": f"tiny-worker-{rank}"},
        "spec": {
            "hostname": f"tiny-worker-{rank}", "subdomain": "tiny-workers", "restartPolicy": "Never",
            "containers": [{
                "name": "trainer", "image": "adamw-trainer:dev",
                "command": ["adamw-train", "--config", "/etc/adamw/config.yaml"],
                "env": [{"name": k, "value": v} for k, v in env.items()],
                "volumeMounts": [{"name": "config", "mountPath": "/etc/adamw"},
                                 {"name": "checkpoints", "mountPath": "/checkpoints"},
                                 {"name": "tmp", "mountPath": "/tmp"}],
            }],
            "volumes": [{"name": "config", "configMap": {"name": "tiny-config"}},
                        {"name": "checkpoints", "persistentVolumeClaim": {"claimName": "tiny-checkpoints"}},
                        {"name": "tmp", "emptyDir": {}}],
        },
    }


async def test_two_real_trainer_ranks_train_and_checkpoint(kube: KubeAPI, tmp_path: Path) -> None:
    config = {
        "model": {"layers": 1, "heads": 2, "width": 32, "contextLength": 32},
        "data": {"source": "synthetic", "evalIntervalSteps": 0},
        "training": {"maxSteps": 20, "batchSize": 4, "logIntervalSteps": 5, "threads": 1},
        "schedule": {"warmupSteps": 2},
        "metrics": {"port": 9464},
        "checkpoint": {"dir": "/checkpoints", "intervalSteps": 10},
    }
    # The operator writes the fully resolved config (defaults included), so the trainer's
    # /dev/termination-log appears in the file and the agent maps it to the pod's own file.
    resolved = TrainerConfig.model_validate(config).to_dict()
    await kube.client.create("configmaps", {"metadata": {"name": "tiny-config"},
                                            "data": {"config.yaml": yaml.safe_dump(resolved)}})
    async with NodeAgent(kube, tmp_path / "node") as agent:
        port = free_port()
        for rank in (0, 1):
            await kube.client.create("pods", trainer_pod(rank, port))
        running = await kube.client.wait_for(
            "pods", "tiny-worker-0", lambda p: p["status"].get("phase") in ("Running", "Succeeded", "Failed"))
        status = None
        if running["status"]["phase"] == "Running":  # the trainer serves /status on its pod IP
            async def answers(_: object) -> bool:
                nonlocal status
                try:
                    url = f"http://{running['status']['podIP']}:9464/status"
                    with urllib.request.urlopen(url, timeout=1) as r:  # noqa: S310 - loopback
                        status = json.load(r)
                    return True
                except OSError:
                    return agent.run_of("tiny-worker-0").process.running is False
            await kube.client.wait_for("pods", "tiny-worker-0", answers, timeout=60, interval=0.2)
        done = [await kube.client.wait_for(
            "pods", f"tiny-worker-{r}", lambda p: p["status"].get("phase") in ("Succeeded", "Failed"),
            timeout=120, interval=0.2) for r in (0, 1)]
        logs = {r: agent.log(f"tiny-worker-{r}")[-3000:] for r in (0, 1)}
        assert [p["status"]["phase"] for p in done] == ["Succeeded", "Succeeded"], logs
        assert agent.errors == []
    message = json.loads(done[0]["status"]["containerStatuses"][0]["state"]["terminated"]["message"])
    assert message["reason"] == "Succeeded" and message["step"] == 20
    claim = tmp_path / "node" / "claims" / "default" / "tiny-checkpoints"
    assert any(p.name.startswith("step-") for p in claim.rglob("*")), sorted(claim.rglob("*"))
    if status is not None:
        assert status["worldSize"] == 2
