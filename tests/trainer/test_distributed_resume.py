"""Two CPU ranks (gloo): the same skip decision everywhere, rank 0 saves, a kill of one rank,
both resume from the same checkpoint and end bit-identical to an uninterrupted 2-rank run;
the 2-rank checkpoint then resumes on 1 rank (a world-size change is supported)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from adamw_trainer.checkpoint.store import CheckpointStore

from tests.trainer.test_resume_exactness import assert_bit_identical, final_state
from tests.trainer.trainer_process import (
    free_port,
    json_events,
    launch_world,
    run_trainer,
    small_config,
    wait_for_status,
    write_config,
)

MAX_STEPS = 400
WORLD = 2


def rank_config(root: Path, rank: int, port: int) -> Path:
    cfg = small_config(
        root,
        training={"maxSteps": MAX_STEPS, "logIntervalSteps": 5},
        metrics={"port": port, "host": "127.0.0.1"},  # rank r listens on port + r
        checkpoint={"intervalSteps": 20, "keepLatest": 2},
        terminationMessagePath=str(root / f"termination-log-{rank}"),
    )
    return write_config(root, cfg, name=f"rank{rank}.yaml")


def start_world(root: Path, port: int = 0) -> list[subprocess.Popen]:
    # Only rank 1's loss goes NaN (steps 12-13); DDP averages the gradients, so every
    # rank must see a non-finite gradient and skip those steps together.
    return launch_world([rank_config(root, rank, port) for rank in range(WORLD)],
                        env={1: {"ADAMW_FAULT_NAN_GRAD_STEPS": "12-13"}})


def finish(procs: list[subprocess.Popen], timeout: float = 120) -> list[tuple[int, str, str]]:
    results = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=timeout)
        finally:
            p.kill()
        results.append((p.returncode, out, err))
    return results


def status_of_all(port: int, procs) -> list[dict]:
    return [wait_for_status(port + r, procs[r]) for r in range(WORLD)]


def wait_all(port: int, procs, predicate, timeout: float = 90) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        statuses = status_of_all(port, procs)
        if all(predicate(s) for s in statuses):
            return statuses
        time.sleep(0.02)
    raise AssertionError(f"ranks never got there: {statuses}")


def two_free_ports() -> int:
    while True:
        port = free_port()
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue


@pytest.mark.slow
def test_two_ranks_skip_together_survive_a_kill_and_resume_identically(tmp_path):
    ref_dir, run_dir = tmp_path / "reference", tmp_path / "interrupted"
    ref_dir.mkdir()
    run_dir.mkdir()
    reference = finish(start_world(ref_dir))
    assert [code for code, _, _ in reference] == [0, 0], reference[0][2][-2000:] + reference[1][2][-2000:]

    port = two_free_ports()
    procs = start_world(run_dir, port)
    try:
        # Both ranks count exactly the two skipped steps: the same decision on every rank.
        statuses = wait_all(port, procs, lambda s: (s.get("step") or 0) >= 50)
        assert [s["nonfiniteSteps"] for s in statuses] == [2, 2]
        assert statuses[0]["lastCheckpoint"] is not None and statuses[1]["lastCheckpoint"] is None  # rank 0 saves
        procs[1].kill()  # one pod dies; rank 0 then fails on its next collective
        rank0 = finish(procs[:1], timeout=60)[0]
    finally:
        for p in procs:
            p.kill()
    assert rank0[0] not in (0, 143), "rank 0 must not report success after losing its peer"
    assert not list((run_dir / "checkpoints").glob("step-400"))

    port = two_free_ports()
    procs = start_world(run_dir, port)
    statuses = wait_all(port, procs, lambda s: s.get("phase") == "Training")
    resumed = [s["resumedFromStep"] for s in statuses]
    results = finish(procs)
    assert [code for code, _, _ in results] == [0, 0], results[0][2][-2000:] + results[1][2][-2000:]
    assert resumed[0] == resumed[1] and resumed[0] >= 40, resumed  # the same checkpoint on both
    assert json_events(results[0][1], "resumed")[0]["step"] == resumed[0]
    assert_bit_identical(final_state(ref_dir / "checkpoints"), final_state(run_dir / "checkpoints"))

    # Resuming the 2-rank checkpoint on 1 rank is supported: the state is replicated and
    # batches are drawn from (seed, step, rank); only the global batch per step changes.
    # Two such continuations from copies of the same checkpoint agree bit for bit.
    finals = []
    for copy in ("one-rank-a", "one-rank-b"):
        root = tmp_path / copy
        shutil.copytree(run_dir / "checkpoints", root / "checkpoints")
        cfg = small_config(root, training={"maxSteps": MAX_STEPS + 20, "logIntervalSteps": 5},
                           checkpoint={"intervalSteps": 20, "keepLatest": 2})
        single = run_trainer(write_config(root, cfg))
        assert single.returncode == 0, single.stderr[-2000:]
        changed = json_events(single.stdout, "world-size-changed")
        assert [(e["step"], e["fromWorldSize"], e["toWorldSize"]) for e in changed] == [(MAX_STEPS, 2, 1)]
        assert json_events(single.stdout, "resumed")[0]["step"] == MAX_STEPS
        store = CheckpointStore(root / "checkpoints")
        before, after = store.verify(MAX_STEPS).meta, store.verify(MAX_STEPS + 20).meta
        assert after.world_size == 1
        per_rank_step = 4 * 32  # batchSize x contextLength of small_config
        assert after.tokens_seen == before.tokens_seen + 20 * per_rank_step
        assert before.tokens_seen == MAX_STEPS * 2 * per_rank_step
        finals.append(final_state(root / "checkpoints", MAX_STEPS + 20))
    assert_bit_identical(finals[0], finals[1])
