"""`adamw-job run` with real workers: reaching the validation-loss target is success, with
its reason, on the same decision function the operator runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.local.runner import Run, tiny_job, write

pytestmark = pytest.mark.slow


async def test_two_workers_reaching_the_target_succeed_with_reason_target_reached(tmp_path: Path) -> None:
    job = tiny_job("target", 9488)
    trainer = job["spec"]["trainer"]
    trainer["data"] = {"source": "synthetic", "evalIntervalSteps": 10, "evalBatches": 2}
    trainer["optimizer"] = {"lr": 0.01}
    trainer["training"]["targetValidationLoss"] = 2.2
    run = await Run(write(tmp_path, job), tmp_path / "run").start()
    assert await run.finish() == 0, run.output
    assert "[Normal TargetReached]" in run.output and "ExitedEarly" not in run.output
    assert "converged    TargetReached: validation loss at or below 2.2 at step" in run.output
    final = json.loads((tmp_path / "run" / "status.json").read_text())
    status = final["status"]
    assert final["phase"] == "Succeeded" and status["step"] < 1500
    assert [c["reason"] for c in status["conditions"] if c["type"] == "Succeeded"] == ["TargetReached"]
    assert status["stepsToTarget"] == status["step"] and status["timeToTargetSeconds"] > 0
    assert status["validationLoss"] <= 2.2 and status["bestCheckpoint"]["step"] == status["step"]
