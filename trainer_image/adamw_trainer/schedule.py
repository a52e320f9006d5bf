"""Learning-rate schedule: linear warmup, then cosine decay to a floor at maxSteps."""

from __future__ import annotations

import math

from .config import OptimizerConfig, ScheduleConfig


def lr_at(step: int, opt: OptimizerConfig, sched: ScheduleConfig, max_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based), as in nanoGPT's get_lr."""
    peak = opt.lr
    floor = peak * sched.min_lr_ratio
    if step < sched.warmup_steps:
        return peak * (step + 1) / (sched.warmup_steps + 1)
    if step >= max_steps:
        return floor
    span = max(1, max_steps - sched.warmup_steps)
    progress = (step - sched.warmup_steps) / span
    return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak - floor)
