"""What to do when steps keep going non-finite: tolerate, roll back, or give up.

The fused optimizer step already skips a step whose gradients hold NaN/Inf, leaving
parameters and moments untouched. A few skipped steps are harmless (one bad batch); a long
streak means the model has diverged and every further step will be skipped too. Then:

    divergence:
      maxConsecutiveNonfiniteSteps: 20   # a streak longer than this triggers the action
      action: Rollback                   # or Fail
      lrFactor: 0.5                      # learning rate x0.5 at every rollback
      maxRollbacks: 3                    # then exit 3 (Diverged)

`Rollback` reloads the last known-good checkpoint (finite loss at save time) in-process,
multiplies the learning rate by `lrFactor` and carries on; the rollback count and the
learning-rate scale survive the rollback and are saved in later checkpoints.

The streak is counted on the device by the optimizer and read only when the trainer
syncs anyway (its log interval), so detection costs no host sync per step.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from typing import Any

import torch

from .config import DivergenceConfig


class Action(enum.StrEnum):
    CONTINUE = "Continue"
    ROLLBACK = "Rollback"
    FAIL = "Fail"


@dataclass(frozen=True)
class Decision:
    action: Action
    message: str = ""


@dataclass
class DivergencePolicy:
    """The divergence budget: decides, and remembers rollbacks and the learning-rate scale."""

    config: DivergenceConfig
    rollbacks: int = 0
    lr_scale: float = 1.0

    def decide(self, step: int, longest_streak: int, last_good_step: int | None) -> Decision:
        """Act once a streak exceeds `maxConsecutiveNonfiniteSteps`; Rollback updates the counters."""
        limit = self.config.max_consecutive_nonfinite_steps
        if longest_streak <= limit:
            return Decision(Action.CONTINUE)
        what = (
            f"{longest_streak} consecutive non-finite steps by step {step} "
            f"(divergence.maxConsecutiveNonfiniteSteps is {limit})"
        )
        if self.config.action == "Fail":
            return Decision(Action.FAIL, f"{what}; divergence.action is Fail")
        if self.rollbacks >= self.config.max_rollbacks:
            return Decision(
                Action.FAIL,
                f"{what}; already rolled back {self.rollbacks} time(s), the limit set by "
                f"divergence.maxRollbacks",
            )
        if last_good_step is None:
            return Decision(Action.FAIL, f"{what}; no known-good checkpoint to roll back to")
        self.rollbacks += 1
        self.lr_scale *= self.config.lr_factor
        return Decision(
            Action.ROLLBACK,
            f"{what}; rollback {self.rollbacks}/{self.config.max_rollbacks} to step "
            f"{last_good_step} with the learning rate scaled by {self.lr_scale:g}",
        )

    def state_dict(self) -> dict[str, Any]:
        return {"rollbacks": self.rollbacks, "lr_scale": self.lr_scale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rollbacks = int(state.get("rollbacks", 0))
        self.lr_scale = float(state.get("lr_scale", 1.0))


# -- fault injection (tests and demos only) ------------------------------------------------

NAN_GRAD_STEPS_ENV = "ADAMW_FAULT_NAN_GRAD_STEPS"
NAN_GRAD_UNTIL_ROLLBACKS_ENV = "ADAMW_FAULT_NAN_GRAD_UNTIL_ROLLBACKS"


@dataclass(frozen=True)
class NanGradFault:
    """Make the loss (so the gradients) NaN at chosen steps, to drive a real run into divergence.

    Set `ADAMW_FAULT_NAN_GRAD_STEPS=30-60` (inclusive ranges, comma-separated) to poison
    those steps; with `ADAMW_FAULT_NAN_GRAD_UNTIL_ROLLBACKS=1` only while fewer than that
    many rollbacks happened (so a rollback "cures" it). For tests and demos; never set
    in production.
    """

    ranges: tuple[tuple[int, int], ...]
    until_rollbacks: int | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> NanGradFault | None:
        env = os.environ if env is None else env
        spec = env.get(NAN_GRAD_STEPS_ENV, "").strip()
        if not spec:
            return None
        ranges = []
        for part in spec.split(","):
            lo, _, hi = part.strip().partition("-")
            try:
                ranges.append((int(lo), int(hi or lo)))
            except ValueError:
                raise ValueError(
                    f"{NAN_GRAD_STEPS_ENV}={spec!r}: expected step ranges like '30-60,90'"
                ) from None
        until = env.get(NAN_GRAD_UNTIL_ROLLBACKS_ENV)
        return cls(tuple(ranges), int(until) if until else None)

    def active(self, step: int, rollbacks: int) -> bool:
        if self.until_rollbacks is not None and rollbacks >= self.until_rollbacks:
            return False
        return any(lo <= step <= hi for lo, hi in self.ranges)

    @staticmethod
    def poison(loss: torch.Tensor) -> torch.Tensor:
        """A NaN loss, as an exploding model gives: its gradients (all-reduced by DDP) are NaN."""
        return loss * float("nan")
