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
        "Running", "step 120/400", "loss 2.3123", "6,950 tok/s", "NaN 1.25%", "restarts 1",
        "preemptions 2", "last ckpt 100"]


def test_a_restart_backoff_counts_down() -> None:
    later = (datetime.now(UTC) + timedelta(seconds=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    line = status_line({"phase": "Restarting", "restartAfterTime": later})
    assert line.startswith("Restarting in 2") or line.startswith("Restarting in 3")


def test_an_interrupted_run_says_how_to_resume(tmp_path: Path) -> None:
    text = summary("job", {"phase": "Running", "step": 80, "maxSteps": 400,
                           "lastGoodCheckpoint": {"step": 80}},
                   interrupted=True, wall_seconds=12.3, run_dir=tmp_path, plot=None,
                   first_loss=5.5, last_loss=3.25)
    assert "job: Interrupted after 12 s" in text
    assert "5.5000 -> 3.2500" in text and "step 80" in text
    assert "run the same command again to resume" in text
