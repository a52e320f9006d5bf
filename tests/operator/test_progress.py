"""Training progress from rank 0's /status: folded into the job status, rollbacks become
events, and a step that stops advancing is a hang (gang restart with reason Hung)."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta

import aiohttp.web
import pytest
from adamw_operator.controller import Controller, merge_patch
from adamw_operator.handlers import register
from adamw_operator.kube import KubeClient
from adamw_operator.progress import fold_progress
from adamw_operator.status import rfc3339

from tests.kube.kopf_runner import run_operator
from tests.kube.store import JOBS, PODS
from tests.operator.harness import events_for, phase_is
from tests.operator.jobs import job_manifest

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_fold_progress_takes_the_trainer_report():
    report = {"step": 120, "maxSteps": 1000, "loss": 2.345678912, "nonfiniteRate": 0.01,
              "tokensPerSecond": 7000.0, "lastStepTimestamp": 1.0,
              "lastCheckpoint": {"step": 100, "loss": 2.4, "time": 1767225600.0},
              "lastGoodCheckpoint": {"step": 100, "loss": 2.4, "time": "2026-01-01T00:00:00Z"},
              "checkpointSaveSeconds": 1.25, "rollbacks": 0}
    patch, events = fold_progress({"step": 100}, report, NOW)
    assert patch["step"] == 120 and patch["lastProgressTime"] == rfc3339(NOW)
    assert patch["loss"] == 2.345679 and patch["nonfiniteRate"] == 0.01
    assert patch["lastCheckpoint"] == {"step": 100, "loss": 2.4, "time": "2026-01-01T00:00:00.000000Z"}
    assert patch["checkpointSaveSeconds"] == 1.25 and events == []
    assert patch["progressAttempt"] == 0  # rank 0 answered in this attempt: hang detection armed


def test_no_new_step_does_not_move_the_hang_clock():
    patch, _ = fold_progress({"step": 120, "loss": 2.0, "attempt": 1, "progressAttempt": 1},
                             {"step": 120, "loss": 2.0}, NOW)
    assert patch == {}


def test_nan_loss_and_rollbacks():
    patch, events = fold_progress({"step": 5, "loss": 2.0, "rollbacks": 0, "lastGoodCheckpoint": {"step": 4}},
                                  {"step": 6, "loss": float("nan"), "rollbacks": 1}, NOW)
    assert patch["loss"] is None and patch["rollbacks"] == 1
    assert [e.reason for e in events] == ["Rollback"] and "step 4" in events[0].message


def test_merge_patch_removes_what_went_away():
    old = {"phase": "Restarting", "restartAfterTime": "t", "lastFailure": {"rank": 1, "exitCode": 1}}
    new = {"phase": "Running", "lastFailure": {"rank": 0}}
    assert merge_patch(old, new) == {"phase": "Running", "restartAfterTime": None,
                                     "lastFailure": {"rank": 0, "exitCode": None}}


@contextlib.asynccontextmanager
async def fake_trainer_status(report: dict):
    """Stands for the trainer's metrics server: GET /status returns `report` as JSON."""
    app = aiohttp.web.Application()

    async def status(_request):
        return aiohttp.web.json_response(report)

    app.router.add_get("/status", status)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        await runner.cleanup()


async def test_progress_is_polled_and_a_stalled_step_is_a_hang(kube, fake_kubelet):
    report = {"step": 5, "loss": 2.5, "nonfiniteRate": 0.0, "tokensPerSecond": 100.0,
              "lastCheckpoint": {"step": 4, "loss": 2.6, "time": 1767225600.0},
              "lastGoodCheckpoint": {"step": 4, "loss": 2.6, "time": 1767225600.0},
              "checkpointSaveSeconds": 1.5, "rollbacks": 0}
    offset = timedelta(0)
    controller_holder = {}

    def clock():
        return datetime.now(UTC) + offset

    async with fake_trainer_status(report) as port:
        controller = Controller(KubeClient(kube.url), poll_interval=0.1, resync_interval=60, tick=0.02,
                                clock=clock)
        controller_holder["c"] = controller
        async with run_operator(kube, setup=lambda r: register(r, controller), wait_for_watches=(JOBS, PODS)):
            await kube.client.create("awj", job_manifest("prog", replicas=1, progressDeadlineSeconds=60,
                                                         trainer={"metrics": {"port": port},
                                                                  "training": {"maxSteps": 40}}))
            await fake_kubelet.wait_running("prog-worker-0")
            # the node's pod network: rank 0 answers on this host
            await kube.client.patch("pods", "prog-worker-0", {"status": {"podIP": "127.0.0.1"}},
                                    subresource="status")
            job = await kube.client.wait_for(
                "awj", "prog", lambda j: j and (j.get("status") or {}).get("step") == 5, timeout=10)
            st = job["status"]
            assert st["loss"] == 2.5 and st["lastGoodCheckpoint"]["step"] == 4
            assert st["checkpointSaveSeconds"] == 1.5 and st["lastCheckpoint"]["step"] == 4
            report.update(step=6, rollbacks=1)
            await kube.client.wait_for("awj", "prog", lambda j: j["status"].get("rollbacks") == 1, timeout=10)
            assert "Rollback" in [e["reason"] for e in await events_for(kube, "prog")]
            # The step stays at 6; 61 s later (on the operator's clock) it is a hang.
            offset = timedelta(seconds=61)
            await controller.reconcile("default", "prog")
            job = await kube.client.wait_for(
                "awj", "prog", lambda j: (j["status"].get("lastFailure") or {}).get("reason") == "Hung",
                timeout=10)
            assert job["status"]["restarts"] == 1
            await kube.client.wait_for_list(
                "pods", lambda items: any(p["metadata"]["labels"]["training.adamw.io/attempt"] == "1"
                                          for p in items),
                labels="training.adamw.io/job-name=prog", timeout=10)
            assert "HungRestart" in [e["reason"] for e in await events_for(kube, "prog")]
            # the new pods get a grace period sized from the measured save time (3 x 1.5 + 30)
            pod = await kube.client.get("pods", "prog-worker-0")
            assert pod["spec"]["terminationGracePeriodSeconds"] == 35
            await kube.client.wait_for("awj", "prog", phase_is("Running"), timeout=10)


@pytest.mark.parametrize(("status", "step"), [
    ({"attempt": 1, "progressAttempt": 0, "step": 139}, 120),  # resumed below the old step
    ({"attempt": 0, "progressAttempt": 0, "step": 1900}, 1000),  # rolled back in-process
])
def test_a_step_going_back_is_progress_not_a_hang(status, step):
    patch, _ = fold_progress(status, {"step": step}, NOW)
    assert patch["lastProgressTime"] == rfc3339(NOW) and patch["step"] == step
