"""Training on the byte-level stdlib corpus lowers the loss clearly in a CPU-sized run."""

from __future__ import annotations

import math

import pytest
from trainer_process import json_events, run_trainer, small_config, write_config


@pytest.mark.slow
def test_loss_falls_on_the_byte_corpus(tmp_path):
    cfg = small_config(
        tmp_path,
        model={"layers": 2, "heads": 2, "width": 64, "contextLength": 64},
        data={"source": "stdlib", "maxBytes": 3_000_000, "evalIntervalSteps": 150, "evalBatches": 4},
        optimizer={"lr": 3e-3},
        schedule={"warmupSteps": 10},
        training={"maxSteps": 150, "batchSize": 16, "logIntervalSteps": 10, "threads": 1},
    )
    done = run_trainer(write_config(tmp_path, cfg))
    assert done.returncode == 0, done.stderr
    train = json_events(done.stdout, "train")
    evals = json_events(done.stdout, "eval")
    first, last = train[0]["loss"], train[-1]["loss"]
    # Uniform over 256 bytes is ln 256 = 5.55; learning Python's byte statistics takes
    # the loss well below 3 within these 150 steps.
    assert first > 4.0, first
    assert last < first - 1.5, (first, last)
    assert evals and evals[-1]["step"] == 150 and evals[-1]["validationLoss"] < 3.0
    assert all(t["nonfiniteSteps"] == 0 for t in train)
    assert all(math.isfinite(t["loss"]) for t in train)
