"""The live status line and the summary: what the user reads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from adamw_operator.local.view import status_line, summary


def test_the_status_line_shows_progress_and_the_newest_checkpoint() -> None:
    line = status_line({"phase": "Running", "step": 120, "maxSteps": 400, "loss": 2.31234,
                        "tokensPerSecond": 6950.4, "nonfiniteRate": 0.0125, "restarts": 1,
                        "preemptions": 2, "lastCheckpoint": {"step": 100},
                        "lastGoodCheckpoint": {"step": 50}})
    assert [p.strip() for p in line.split("|")] == [
        "Running", "step 120/400", "loss 2.3123", "val -", "6,950 tok/s", "NaN 1.25%", "restarts 1",
        "preemptions 2", "last ckpt 100"]


def test_a_restart_backoff_counts_down() -> None:
    later = (datetime.now(UTC) + timedelta(seconds=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    line = status_line({"phase": "Restarting", "restartAfterTime": later})
    assert line.startswith("Restarting in 2") or line.startswith("Restarting in 3")


def test_an_interrupted_run_says_how_to_resume(tmp_path: Path) -> None:
    text = summary("job", {"phase": "Running", "step": 80, "maxSteps": 400,
                           "lastGoodCheckpoint": {"step": 80}},
                   interrupted=True, wall_seconds=12.3, run_dir=tmp_path, plot=None,
                   first_loss=5.5, last_loss=3.25, loss_steps=(10, 80))
    assert "job: Interrupted after 12 s" in text
    assert "5.5000 -> 3.2500 (training, steps 10 -> 80)" in text and "step 80" in text
    assert "run the same command again to resume" in text


def test_the_summary_says_whether_and_when_the_run_converged(tmp_path: Path) -> None:
    status = {"phase": "Succeeded", "step": 360, "maxSteps": 400, "validationLoss": 1.79,
              "bestValidationLoss": 1.79, "bestCheckpoint": {"step": 360}, "stepsToTarget": 360,
              "timeToTargetSeconds": 41.2, "conditions": [{"type": "Succeeded", "status": "True",
                                                          "reason": "TargetReached"}],
              "tracking": {"url": "http://mlflow:5000/#/experiments/1/runs/abc"}}
    text = summary("job", status, interrupted=False, wall_seconds=45, run_dir=tmp_path, plot=None,
                   first_loss=5.5, last_loss=1.8, target=1.8)
    assert "validation   1.7900 (best 1.7900, best checkpoint step 360)" in text
    assert "TargetReached: validation loss at or below 1.8 at step 360 after 41 s" in text
    assert "mlflow run   http://mlflow:5000/#/experiments/1/runs/abc" in text
    plain = {"phase": "Succeeded", "step": 400, "maxSteps": 400, "bestValidationLoss": 1.9,
             "conditions": [{"type": "Succeeded", "status": "True", "reason": "Succeeded"}]}
    text = summary("job", plain, interrupted=False, wall_seconds=45, run_dir=tmp_path, plot=None,
                   first_loss=None, last_loss=None, target=1.8)
    assert "target       1.8 not reached: the best validation loss was 1.9000" in text
