from __future__ import annotations

import pytest
from adamw_trainer.config import OptimizerConfig, ScheduleConfig
from adamw_trainer.schedule import lr_at


def test_warmup_then_cosine_to_floor():
    opt, sched = OptimizerConfig(lr=1.0), ScheduleConfig(warmup_steps=10, min_lr_ratio=0.1)
    lrs = [lr_at(s, opt, sched, 110) for s in range(120)]
    assert lrs[0] == pytest.approx(1 / 11)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11], strict=True))  # rising warmup
    assert lrs[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:110], lrs[11:111], strict=True))  # decaying
    assert lrs[60] == pytest.approx(0.55)  # halfway: midpoint of peak and floor
    assert lrs[110] == lrs[119] == pytest.approx(0.1)
