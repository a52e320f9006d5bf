"""Pod -> local process translation (pure parts): path and DNS rewriting, env, volumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from adamw_operator.api.spec import parse_spec
from adamw_operator.builders.configmap import render_trainer_config
from adamw_operator.builders.pods import build_worker_pod
from adamw_operator.local.loss_curve import loss_points
from adamw_operator.local.pod_process import (
    PodSpecError,
    dns_names,
    expand_env_references,
    prepare_pod,
    rewrite,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/ckpt", "/L/ckpt"),
        ("/ckpt/step-5", "/L/ckpt/step-5"),
        ("dir: /ckpt\n", "dir: /L/ckpt\n"),
        ('{"dir": "/ckpt"}', '{"dir": "/L/ckpt"}'),
        ("/ckpt2", "/ckpt2"),  # another path that merely starts the same
        ("/data/ckpt", "/data/ckpt"),  # not at a path start
        ("/tmp/no-such-adamw-dir /ckpt", "/L/tmp/no-such-adamw-dir /L/ckpt"),
        ("/tmp", "/L/tmp"),
    ],
)
def test_mount_paths_are_rewritten_only_at_path_boundaries(text: str, expected: str) -> None:
    mounts = {"/ckpt": "/L/ckpt", "/tmp": "/L/tmp"}
    assert rewrite(text, mounts) == expected


def test_a_local_dir_under_a_mount_path_is_not_rewritten_twice() -> None:
    mounts = {"/tmp": "/tmp/run/pod/tmp", "/etc/adamw": "/tmp/run/pod/config"}
    assert rewrite("--config /etc/adamw/config.yaml", mounts) == "--config /tmp/run/pod/config/config.yaml"


def test_cluster_dns_names_become_pod_ips() -> None:
    hosts = {"j-worker-0.j-workers.default.svc.cluster.local": "127.0.0.2",
             "j-worker-0.j-workers.default.svc": "127.0.0.2"}
    assert rewrite("j-worker-0.j-workers.default.svc.cluster.local", {}, hosts) == "127.0.0.2"
    assert rewrite("tcp://j-worker-0.j-workers.default.svc:29500", {}, hosts) == "tcp://127.0.0.2:29500"
    assert rewrite("x-j-worker-0.j-workers.default.svc.evil", {}, hosts) == "x-j-worker-0.j-workers.default.svc.evil"


def test_env_references_expand_like_the_kubelet() -> None:
    env = {"NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1"}
    assert expand_env_references("--node-rank=$(NODE_RANK)", env) == "--node-rank=1"
    assert expand_env_references("$$(NODE_RANK) $(UNSET)", env) == "$(NODE_RANK) $(UNSET)"


def test_the_operators_pod_becomes_a_runnable_local_launch(tmp_path: Path) -> None:
    spec = parse_spec({"image": "adamw-trainer:dev", "replicas": 2,
                       "trainer": {"checkpoint": {"dir": "/checkpoints"}, "metrics": {"port": 9400}},
                       "checkpointStorage": {"claimName": "ckpt"}})
    pod = build_worker_pod("job", "default", "uid-1", spec, rank=1, attempt=0, restart_count=0)
    pod["metadata"]["uid"] = "pod-uid-1"
    rank0 = build_worker_pod("job", "default", "uid-1", spec, rank=0, attempt=0, restart_count=0)
    hosts = {name: "127.0.0.2" for name in dns_names(rank0)}
    launch = prepare_pod(pod, root=tmp_path, pod_ip="127.0.0.3", hosts=hosts,
                         config_maps={"job-config": {"config.yaml": render_trainer_config(spec)}},
                         base_env={"PATH": "/usr/bin"})
    claim = tmp_path / "claims" / "default" / "ckpt"
    assert launch.argv[0].endswith("adamw-train")
    config_file = Path(launch.argv[-1])
    assert config_file.is_file() and str(tmp_path) in str(config_file)
    config_text = config_file.read_text()
    assert str(claim) in config_text and "/dev/termination-log" not in config_text
    assert launch.env["MASTER_ADDR"] == "127.0.0.2"
    assert launch.env["ADAMW_CHECKPOINT_DIR"] == str(claim)
    assert launch.env["ADAMW_METRICS_HOST"] == "127.0.0.3" and launch.env["RANK"] == "1"
    assert launch.env["HOME"] == str(launch.layout.mounts["/tmp"]) and Path(launch.env["HOME"]).is_dir()
    assert launch.cwd.is_dir() and str(launch.cwd).startswith(str(tmp_path))
    assert launch.grace_seconds == pod["spec"]["terminationGracePeriodSeconds"]


def test_unsupported_volumes_and_missing_config_maps_are_clear_errors(tmp_path: Path) -> None:
    pod = {"metadata": {"name": "p", "uid": "u"},
           "spec": {"containers": [{"name": "trainer", "command": ["true"]}],
                    "volumes": [{"name": "nfs", "nfs": {"server": "x", "path": "/"}}]}}
    with pytest.raises(PodSpecError, match="nfs volumes cannot run locally"):
        prepare_pod(pod, root=tmp_path, pod_ip="127.0.0.2", config_maps={})
    pod["spec"]["volumes"] = [{"name": "cfg", "configMap": {"name": "absent"}}]
    with pytest.raises(PodSpecError, match="ConfigMap 'absent'"):
        prepare_pod(pod, root=tmp_path, pod_ip="127.0.0.2", config_maps={})


def test_loss_points_keep_the_latest_attempt_after_a_resume(tmp_path: Path) -> None:
    def log(name: str, steps: list[int], loss: float) -> Path:
        path = tmp_path / name
        path.write_text("\n".join(json.dumps({"event": "train", "step": s, "loss": loss}) for s in steps)
                        + '\nnot json\n{"event": "checkpoint", "step": 20}\n')
        return path

    first = log("a.log", [10, 20, 30, 40], 3.0)  # crashed after step 40, checkpoint at 20
    second = log("b.log", [30, 40, 50], 2.0)  # resumed from 20: steps 30+ are redone
    points, resumes = loss_points([first, second])
    assert points == [(10, 3.0), (20, 3.0), (30, 2.0), (40, 2.0), (50, 2.0)]
    assert resumes == [30]
    # The same for validation loss, from the eval records.
    evals = tmp_path / "c.log"
    evals.write_text("\n".join(json.dumps({"event": "eval", "step": s, "validationLoss": 2.5}) for s in (20, 40)))
    assert loss_points([evals], event="eval", field="validationLoss")[0] == [(20, 2.5), (40, 2.5)]


async def test_a_worker_does_not_outlive_its_supervisor(tmp_path: Path) -> None:
    """A runner killed with -9 must not leave trainers burning CPU (PR_SET_PDEATHSIG)."""
    import asyncio
    import os
    import sys

    script = f"""
import asyncio, os
from pathlib import Path
from adamw_operator.local.pod_process import LocalProcess, prepare_pod
async def main():
    pod = {{"metadata": {{"name": "p", "uid": "u1"}},
           "spec": {{"containers": [{{"name": "t", "command": ["sleep", "60"]}}]}}}}
    process = LocalProcess(prepare_pod(pod, root=Path({str(tmp_path)!r}), pod_ip="127.0.0.9", config_maps={{}}))
    await process.start()
    print(process.pid, flush=True)
    os._exit(0)  # the supervisor dies without stopping its worker
asyncio.run(main())
"""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    worker = int(out)
    for _ in range(50):
        try:
            with open(f"/proc/{worker}/stat") as f:
                state = f.read().split(")")[-1].split()[0]
        except FileNotFoundError:
            return  # gone and reaped
        if state == "Z":
            return  # dead, waiting for a reaper
        await asyncio.sleep(0.05)
    os.kill(worker, 9)
    raise AssertionError("the worker survived its supervisor")


def test_host_files_a_mount_would_hide_stay_visible(tmp_path):
    """A checkout under /tmp with an emptyDir at /tmp: the venv's python is image content."""
    host_file = tmp_path / "venv" / "bin" / "python"
    host_file.parent.mkdir(parents=True)
    host_file.write_text("")
    scratch = tmp_path / "pod-tmp"
    scratch.mkdir()
    mounts = {str(tmp_path): scratch}
    assert rewrite(str(host_file), mounts) == str(host_file)
    # A path that exists nowhere on the host is the volume's, as before.
    assert rewrite(f"{tmp_path}/ckpt/step-1", mounts) == f"{scratch}/ckpt/step-1"
    # A file present in the volume wins over the host's.
    (scratch / "venv" / "bin").mkdir(parents=True)
    (scratch / "venv" / "bin" / "python").write_text("")
    assert rewrite(str(host_file), mounts) == str(scratch / "venv" / "bin" / "python")
