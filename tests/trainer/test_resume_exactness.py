"""Exact resume: a run SIGKILLed at random moments (some mid-checkpoint-write) and restarted
each time ends bit-identical to a run that was never interrupted (CPU, fixed seed)."""

from __future__ import annotations

import random
import subprocess
import time
from pathlib import Path

import pytest
import torch
from adamw_trainer.checkpoint.store import CheckpointStore

from tests.trainer.trainer_process import (
    free_port,
    json_events,
    run_trainer,
    small_config,
    trainer_cmd,
    trainer_env,
    wait_for_status,
    wait_until,
    write_config,
)

MAX_STEPS = 400


def config(tmp_path: Path, port: int = 0) -> Path:
    cfg = small_config(
        tmp_path,
        training={"maxSteps": MAX_STEPS, "logIntervalSteps": 10},
        metrics={"port": port, "host": "127.0.0.1"},
        checkpoint={"intervalSteps": 20, "keepLatest": 2},
    )
    return write_config(tmp_path, cfg, name=f"trainer-{port}.yaml")


def final_state(ckpt_dir: Path, step: int = MAX_STEPS) -> dict:
    info = CheckpointStore(ckpt_dir).verify(step)
    # The .pt files; config.json names this run's own paths and ports, so it differs.
    state = {name: torch.load(info.path / name, weights_only=True) for name in info.files if name.endswith(".pt")}
    for key in WALL_CLOCK:  # when the run started and when its best evaluation happened
        state.get("train_state.pt", {}).get("convergence", {}).pop(key, None)
    return state


WALL_CLOCK = ("started_at", "best_time")


def assert_bit_identical(a, b, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_bit_identical(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_bit_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def tmp_dirs(ckpt_dir: Path) -> list[str]:
    return [p.name for p in ckpt_dir.glob(".tmp-step-*")] if ckpt_dir.exists() else []


def wait_for_write(ckpt_dir: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until a checkpoint write is under way (its temp folder exists), polled every 2 ms."""
    deadline = time.monotonic() + timeout
    while not tmp_dirs(ckpt_dir) and time.monotonic() < deadline:
        assert proc.poll() is None, "trainer finished before a write could be interrupted"
        time.sleep(0.002)
    assert tmp_dirs(ckpt_dir), "no checkpoint write seen"


def progress(port: int, proc: subprocess.Popen, beyond: int, timeout: float = 60) -> int:
    status = wait_until(
        port, proc, lambda s: (s.get("step") or 0) > beyond, timeout, poll=0.01, what=f"no progress past step {beyond}"
    )
    return status["step"]


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path):
    ref_dir, run_dir = tmp_path / "reference", tmp_path / "interrupted"
    ref_dir.mkdir()
    run_dir.mkdir()
    ref = run_trainer(config(ref_dir))
    assert ref.returncode == 0, ref.stderr[-2000:]

    rng = random.Random(20261122)
    ckpt_dir = run_dir / "checkpoints"
    # What each interrupted attempt is killed during: anywhere in training, in the middle of
    # a checkpoint write (writes slowed down so the kill can land inside one), or at startup.
    plan = ["training", "checkpoint-write", "startup", "training", "checkpoint-write", "training"]
    log = []
    for moment in plan:
        port = free_port()
        env = {"ADAMW_FAULT_CHECKPOINT_WRITE_DELAY_SECONDS": "0.2"} if moment == "checkpoint-write" else {}
        proc = subprocess.Popen(
            trainer_cmd(config(run_dir, port)), env=trainer_env(**env),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        try:
            if moment == "startup":
                time.sleep(rng.uniform(0.1, 1.0))
            elif moment == "training":
                # A random step a little past wherever this attempt resumed (steps take ~ms).
                start = wait_for_status(port, proc).get("step") or 0
                progress(port, proc, beyond=start + rng.randint(5, 50))
            else:
                # Wait until this attempt trains (it has removed older leftovers by then), then
                # for one of its own writes to be under way.
                progress(port, proc, beyond=wait_for_status(port, proc).get("step") or 0)
                wait_for_write(ckpt_dir, proc)
            assert proc.poll() is None, f"trainer exited ({proc.returncode}) before the {moment} kill"
            proc.kill()  # SIGKILL: no handler runs, nothing is flushed
            out, _ = proc.communicate(timeout=30)
        finally:
            proc.kill()
        assert proc.returncode == -9
        resumed = json_events(out, "resumed")
        log.append((moment, resumed[0]["step"] if resumed else None, tmp_dirs(ckpt_dir)))
        if moment == "checkpoint-write":
            assert log[-1][2], "the kill should have left a half-written temporary folder"

    final = run_trainer(config(run_dir))
    assert final.returncode == 0, final.stderr[-2000:]
    assert not tmp_dirs(ckpt_dir), "leftovers of killed writes are removed on start"
    final_resume = json_events(final.stdout, "resumed")
    resumed_steps = [step for _, step, _ in log if step is not None] + [final_resume[0]["step"]]
    # Six SIGKILLs; every restart that got as far as loading resumed where the last left off.
    print("kills (moment, resumed-from, leftovers):", log)
    assert len(plan) >= 5 and len(resumed_steps) >= 4, log
    assert resumed_steps == sorted(resumed_steps) and resumed_steps[-1] < MAX_STEPS, log

    assert_bit_identical(final_state(ref_dir / "checkpoints"), final_state(ckpt_dir))
