"""Reading pods into observations, and the operator's command line."""

from __future__ import annotations

import json
import logging

import pytest
from adamw_operator.cli import JsonFormatter, build_parser, main
from adamw_operator.observe import observe_pod


def pod(phase="Running", terminated=None, reason=None, conditions=(), deleting=False):
    status = {"phase": phase, "podIP": "10.1.2.3", "conditions": list(conditions)}
    if reason:
        status["reason"] = reason
    if terminated is not None:
        status["containerStatuses"] = [{"name": "trainer", "state": {"terminated": terminated}}]
    meta = {"name": "j-worker-1", "labels": {"training.adamw.io/replica-index": "1",
                                             "training.adamw.io/attempt": "2"}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    spec = {"containers": [{"name": "trainer", "env": [{"name": "WORLD_SIZE", "value": "4"}]}]}
    return {"metadata": meta, "spec": spec, "status": status}


def test_running_pod():
    w = observe_pod(pod())
    assert (w.rank, w.attempt, w.phase, w.pod_ip, w.world_size) == (1, 2, "Running", "10.1.2.3", 4)
    assert not w.failed and not w.finished and not w.preempted


def test_termination_message_is_parsed():
    message = json.dumps({"reason": "Diverged", "exitCode": 3, "step": 77, "lastGoodCheckpointStep": 60,
                          "message": "NaN for 20 steps"})
    w = observe_pod(pod("Failed", {"exitCode": 3, "reason": "Error", "message": message}))
    assert w.failed and w.exit_code == 3
    assert w.termination.step == 77 and w.termination.last_good_checkpoint_step == 60


def test_garbage_termination_message_is_kept_as_text():
    w = observe_pod(pod("Failed", {"exitCode": 1, "reason": "Error", "message": "Traceback ..."}))
    assert w.termination is None and w.message == "Traceback ..."


@pytest.mark.parametrize("status", [
    {"reason": "Evicted"},
    {"conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}]},
])
def test_eviction_and_preemption_are_disruptions(status):
    w = observe_pod(pod("Failed", {"exitCode": 137, "reason": "Error"}, reason=status.get("reason"),
                        conditions=status.get("conditions", ())))
    assert w.preempted and w.failed


def test_sigterm_exit_after_save_is_a_preemption():
    assert observe_pod(pod("Failed", {"exitCode": 143, "reason": "Error"})).preempted


def test_oom_kill_is_a_crash_not_a_preemption():
    w = observe_pod(pod("Failed", {"exitCode": 137, "reason": "OOMKilled"}))
    assert w.failed and not w.preempted


def test_cli_requires_a_scope(capsys):
    assert main([]) == 2
    assert "--all-namespaces" in capsys.readouterr().err


def test_cli_flags():
    args = build_parser().parse_args(["-n", "a", "-n", "b", "--peering", "adamw", "--metrics-port", "9200"])
    assert args.namespace == ["a", "b"] and args.peering == "adamw" and args.metrics_port == 9200
    assert args.liveness_port == 8080 and args.log_format == "json"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["-A", "-n", "a"])  # one scope or the other


def test_json_logs_are_one_object_per_line():
    record = logging.LogRecord("adamw_operator", logging.WARNING, __file__, 1, "job %s failed", ("x",), None)
    line = JsonFormatter().format(record)
    data = json.loads(line)
    assert data["level"] == "warning" and data["message"] == "job x failed" and "\n" not in line


async def test_expired_token_is_reloaded_once(tmp_path, monkeypatch):
    """Service-account tokens rotate: on 401 the client reads its credentials again."""
    import aiohttp.web
    from adamw_operator import kube as kube_module

    seen = []

    async def handler(request):
        seen.append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") != "Bearer fresh":
            return aiohttp.web.json_response({"message": "Unauthorized"}, status=401)
        return aiohttp.web.json_response({"metadata": {"name": "j"}})

    app = aiohttp.web.Application()
    app.router.add_get("/apis/training.adamw.io/v1alpha1/namespaces/ns/adamwtrainingjobs/j", handler)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    tokens = iter(["Bearer old", "Bearer fresh"])
    monkeypatch.setattr(kube_module, "_connection_from_kubeconfig",
                        lambda: (url, {"Authorization": next(tokens)}, False))
    client = kube_module.KubeClient()
    try:
        assert (await client.get_job("ns", "j"))["metadata"]["name"] == "j"
        assert seen == ["Bearer old", "Bearer fresh"]
    finally:
        await client.close()
        await runner.cleanup()


def test_unschedulable_and_image_pull_problems_are_reported():
    unschedulable = pod("Pending", conditions=[{"type": "PodScheduled", "status": "False",
                                               "reason": "Unschedulable",
                                               "message": "0/4 nodes have nvidia.com/gpu"}])
    assert observe_pod(unschedulable).waiting == "Unschedulable: 0/4 nodes have nvidia.com/gpu"
    pulling = pod("Pending")
    pulling["status"]["containerStatuses"] = [{"name": "trainer", "state": {"waiting": {
        "reason": "ImagePullBackOff", "message": "Back-off pulling image"}}}]
    assert observe_pod(pulling).waiting == "ImagePullBackOff: Back-off pulling image"
    creating = pod("Pending")
    creating["status"]["containerStatuses"] = [{"name": "trainer", "state": {"waiting": {
        "reason": "ContainerCreating"}}}]
    assert observe_pod(creating).waiting == ""


def test_cli_default_trainer_image_from_flag_or_env(monkeypatch):
    monkeypatch.setenv("ADAMW_DEFAULT_TRAINER_IMAGE", "from-env:1")
    assert build_parser().parse_args(["-A"]).default_trainer_image == "from-env:1"
    args = build_parser().parse_args(["-A", "--default-trainer-image", "flag:2"])
    assert args.default_trainer_image == "flag:2"
