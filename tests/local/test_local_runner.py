"""`adamw-job run` with real worker processes: crash recovery, Ctrl-C and resume, refusals."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest

from tests.local.runner import Run, tiny_job, trainer_events, wait_for_checkpoint, write

pytestmark = pytest.mark.slow

async def test_kill_9_restarts_the_gang_from_the_checkpoint(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run = await Run(write(tmp_path, tiny_job("crashy", 9481)), run_dir).start()
    pid = int((await run.wait_for_line(r"attempt 0 rank 1: pid (\d+)")).group(1))
    saved = await wait_for_checkpoint(run_dir, 25)
    os.kill(pid, signal.SIGKILL)
    code = await run.finish()
    assert code == 0, run.output
    assert re.search(r"\[Warning CrashedRestart\] Crashed: rank 1 exited 137", run.output), run.output
    assert re.search(r"restarts\s+1 \(preemptions 0\)", run.output), run.output
    assert re.search(r"steps\s+1500 of 1500", run.output)
    # Attempt 1 (both ranks, new processes) resumed from a checkpoint no older than the one
    # on disk before the kill; rank 0 logs for the gang.
    assert len(re.findall(r"attempt 1 rank \d: pid \d+", run.output)) == 2
    rank0 = Path(re.search(r"attempt 1 rank 0: .* log (\S+)", run.output).group(1))
    [resumed] = trainer_events(rank0, "resumed")
    assert resumed["step"] >= saved
    assert (run_dir / "loss.png").stat().st_size > 10_000
    # The final status agrees with itself and with the log: the last step's loss, and the
    # final save as both the newest and the newest good checkpoint.
    final = json.loads((run_dir / "status.json").read_text())["status"]
    assert final["lastCheckpoint"]["step"] == final["lastGoodCheckpoint"]["step"] == 1500
    last = trainer_events(rank0, "train")[-1]
    assert last["step"] == 1500 and final["loss"] == pytest.approx(last["loss"], abs=1e-5)


async def test_ctrl_c_saves_and_the_same_command_resumes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    manifest = write(tmp_path, tiny_job("pausable", 9482))
    first = await Run(manifest, run_dir).start()
    await wait_for_checkpoint(run_dir, 50)
    intruder = await Run(manifest, run_dir).start()  # a second run would corrupt the checkpoints
    assert await intruder.finish(timeout=30) == 2
    assert f"{run_dir} is in use by another adamw-job run (pid {first.proc.pid})" in intruder.output
    first.proc.send_signal(signal.SIGINT)
    assert await first.finish() == 130, first.output
    assert "pausable: Interrupted" in first.output
    assert "run the same command again to resume" in first.output
    stopped = await wait_for_checkpoint(run_dir, 50, timeout=1)
    rank0 = Path(re.search(r"attempt 0 rank 0: .* log (\S+)", first.output).group(1))
    [preempted] = trainer_events(rank0, "preempted")  # SIGTERM made the trainer save its step
    assert preempted["saved"] and preempted["step"] == stopped

    second = await Run(manifest, run_dir).start()
    assert await second.finish() == 0, second.output
    rank0 = Path(re.search(r"attempt 0 rank 0: .* log (\S+)", second.output).group(1))
    assert trainer_events(rank0, "resumed")[0]["step"] == stopped
    assert re.search(r"restarts\s+0", second.output)


async def test_an_invalid_manifest_is_refused_like_the_cluster(tmp_path: Path) -> None:
    from tests.operator.crd_validation import load_crd, validate

    bad = tiny_job("bad", 9483)
    bad["spec"]["replicas"] = 0
    path = write(tmp_path, bad)
    run = await Run(path, tmp_path / "run").start()
    assert await run.finish(timeout=30) == 2
    assert "spec.replicas" in run.output and "greater than or equal to 1" in run.output
    # The cluster's admission (CRD schema) refuses the same field.
    assert any(p.startswith("spec.replicas:") for p in validate(load_crd(), bad))
    assert not (tmp_path / "run").exists()  # nothing was started


@pytest.mark.cluster
async def test_a_spec_that_cannot_run_gets_the_operators_message(tmp_path: Path, operator) -> None:
    """The real operator's InvalidSpec condition (on the session's real control plane) and
    the runner's refusal say the same thing."""
    from tests.cluster.training import condition, wait_status

    bad = tiny_job("unmountable", 9484, checkpointStorage={"volumeName": "nowhere"})
    with operator.namespace("local") as ns:
        bad["metadata"]["namespace"] = ns
        operator.apply(bad)
        st = wait_status(operator, ns, "unmountable", "the InvalidSpec condition",
                         lambda s: condition(s, "InvalidSpec"))
    cluster_message = condition(st, "InvalidSpec")["message"]
    assert "spec.checkpointStorage.volumeName" in cluster_message

    run = await Run(write(tmp_path, bad), tmp_path / "run").start()
    assert await run.finish(timeout=30) == 2
    assert cluster_message in run.output


async def test_a_config_the_trainer_refuses_fails_without_restarting(tmp_path: Path) -> None:
    """Exit code 2 (InvalidConfig) ends the job at once, as the operator does on a cluster."""
    job = tiny_job("nodata", 9486)
    job["spec"]["trainer"]["data"] = {"source": "text", "path": "/no/such/corpus"}
    run = await Run(write(tmp_path, job), tmp_path / "run").start()
    assert await run.finish() == 1, run.output
    assert "[Warning InvalidConfig]" in run.output and "/no/such/corpus" in run.output
    assert re.search(r"restarts\s+0 \(preemptions 0\)", run.output)
    assert "attempt 1" not in run.output
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["phase"] == "Failed" and status["status"]["lastFailure"]["exitCode"] == 2


async def test_sigterm_to_a_worker_is_a_preemption_not_a_restart(tmp_path: Path) -> None:
    """A worker that saves on SIGTERM and exits 143 uses the preemption budget, not maxRestarts."""
    run_dir = tmp_path / "run"
    run = await Run(write(tmp_path, tiny_job("evicted", 9487)), run_dir).start()
    pid = int((await run.wait_for_line(r"attempt 0 rank 0: pid (\d+)")).group(1))
    await wait_for_checkpoint(run_dir, 25)
    os.kill(pid, signal.SIGTERM)  # what the kubelet sends on eviction or preemption
    assert await run.finish() == 0, run.output
    # The trainer spreads a stop request over the gang, so any rank may be seen first.
    assert re.search(r"\[Warning PreemptedRestart\] Preempted: rank \d exited 143", run.output), run.output
    assert re.search(r"restarts\s+0 \(preemptions 1\)", run.output), run.output
