"""Convergence: what each evaluation's validation loss means for the run (torch-free, pure).

    tracker = Convergence(cfg.training)
    verdict = tracker.observe(step, validation_loss, wall_time)
    if verdict.improved: save a checkpoint of this step (it is the best one so far)
    if verdict.stop: save, exit 0 with verdict.stop as the termination reason

Targets (`training.targetValidationLoss`) stop at the first evaluation at or below the
target; early stopping (`training.earlyStopping`) stops after `patience` evaluations in a
row that did not improve on the best by `minDelta`. The state (best loss and step,
evaluations without improvement, when the run first started) travels in the checkpoint's
train state, so a resumed attempt keeps counting where the killed one stopped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .config import TrainingConfig
from .exit_codes import ExitReason


@dataclass(frozen=True)
class Verdict:
    improved: bool  # a new best validation loss (by any amount; minDelta counts for patience)
    stop: ExitReason | None  # TargetReached or EarlyStopped; None: keep training
    message: str = ""


class Convergence:
    def __init__(self, cfg: TrainingConfig, started_at: float | None = None):
        self.target = cfg.target_validation_loss
        self.early = cfg.early_stopping
        self.best_loss: float | None = None
        self.best_step: int | None = None
        self.best_time: float | None = None
        self.evals_without_improvement = 0
        self.reference_loss: float | None = None  # what patience measures improvements against
        self.last_loss: float | None = None
        # Wall clock of the run's first start, kept across restarts (time to target).
        self.started_at = started_at
        self.target_step: int | None = None
        self.target_seconds: float | None = None

    def observe(self, step: int, loss: float, now: float) -> Verdict:
        """Fold one evaluation in; a non-finite loss is never an improvement."""
        self.last_loss = loss if math.isfinite(loss) else None
        if not math.isfinite(loss):
            self.evals_without_improvement += 1
            improved = False
        else:
            improved = self.best_loss is None or loss < self.best_loss
            # Patience measures against the last loss that improved by minDelta (as Keras does),
            # so many small steps that add up to minDelta still count.
            delta = self.early.min_delta if self.early else 0.0
            meaningful = self.reference_loss is None or loss < self.reference_loss - delta
            if meaningful:
                self.reference_loss = loss
            self.evals_without_improvement = 0 if meaningful else self.evals_without_improvement + 1
            if improved:
                self.best_loss, self.best_step, self.best_time = loss, step, now
        if self.target is not None and math.isfinite(loss) and loss <= self.target:
            self.target_step = step
            self.target_seconds = now - self.started_at if self.started_at is not None else None
            return Verdict(improved, ExitReason.TARGET_REACHED,
                           f"validation loss {loss:.4f} reached the target {self.target:g} at step {step}")
        if self.early is not None and self.evals_without_improvement >= self.early.patience:
            return Verdict(
                improved, ExitReason.EARLY_STOPPED,
                f"validation loss did not improve on {self.best_loss if self.best_loss is not None else float('nan'):.4f} "
                f"(step {self.best_step}) by {self.early.min_delta:g} for {self.early.patience} "
                f"evaluation(s); stopped at step {step}",
            )
        return Verdict(improved, None)

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_loss": self.best_loss,
            "best_step": self.best_step,
            "best_time": self.best_time,
            "evals_without_improvement": self.evals_without_improvement,
            "reference_loss": self.reference_loss,
            "started_at": self.started_at,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_loss = state.get("best_loss")
        self.best_step = state.get("best_step")
        self.best_time = state.get("best_time")
        self.evals_without_improvement = int(state.get("evals_without_improvement", 0))
        self.reference_loss = state.get("reference_loss")
        if state.get("started_at") is not None:
            self.started_at = float(state["started_at"])
