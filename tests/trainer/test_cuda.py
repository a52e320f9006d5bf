"""CUDA checks of the training step (run on a GPU machine; skipped elsewhere).

The guarded step must not synchronise with the host, bf16 autocast and fp16 loss
scaling must train, and an fp16 overflow must be skipped with the scale backed off.
"""

from __future__ import annotations

import io
import math

import pytest
import torch
from adamw_trainer.config import OptimizerConfig, TrainerConfig
from adamw_trainer.distributed import DistEnv
from adamw_trainer.model import GPT
from adamw_trainer.optim import GuardedAdamW, param_groups
from adamw_trainer.progress import RunLog
from adamw_trainer.train import Trainer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def cuda_trainer(tmp_path, precision: str, steps: int = 60, lr: float = 3e-3) -> tuple[Trainer, io.StringIO]:
    cfg = TrainerConfig.model_validate({
        "model": {"layers": 2, "heads": 4, "width": 128, "contextLength": 64},
        "data": {"source": "stdlib", "maxBytes": 2_000_000, "evalIntervalSteps": 0},
        "optimizer": {"lr": lr},
        "schedule": {"warmupSteps": 5},
        "training": {"maxSteps": steps, "batchSize": 32, "precision": precision, "logIntervalSteps": 10},
        "metrics": {"port": 0},
        "checkpoint": {"dir": str(tmp_path / "ckpt"), "intervalSteps": 0, "resume": False},
        "device": "cuda",
        "terminationMessagePath": str(tmp_path / "term"),
    })
    out = io.StringIO()
    return Trainer(cfg, env=DistEnv(), log=RunLog(stream=out, tty=False)), out


def test_train_step_never_syncs_with_the_host(tmp_path):
    trainer, _ = cuda_trainer(tmp_path, "bf16")
    trainer.train_step()  # first step: lazy state init, cuBLAS handles
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            trainer.train_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    trainer.close()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_lowers_the_loss(tmp_path, precision):
    import json

    trainer, out = cuda_trainer(tmp_path, precision)
    assert trainer.precision == precision
    assert int(trainer.run()) == 0
    trainer.close()
    train = [json.loads(line) for line in out.getvalue().splitlines() if '"train"' in line]
    first, last = train[0]["loss"], train[-1]["loss"]
    assert math.isfinite(last) and last < first - 1.0, (first, last)
    assert all(p.dtype == torch.float32 for p in trainer.raw_model.parameters())  # master weights
    if precision == "fp16":
        assert train[-1]["lossScale"] >= 1.0


def test_fp16_overflow_is_skipped_and_the_scale_backs_off():
    torch.manual_seed(0)
    from adamw_trainer.config import ModelConfig

    model = GPT(ModelConfig(layers=1, heads=2, width=32, context_length=16)).cuda()
    cfg = OptimizerConfig(lr=1e-3)
    opt = GuardedAdamW(param_groups(model, cfg), cfg, loss_scaling=True, init_loss_scale=2.0**16)
    x = torch.randint(0, 256, (4, 16), device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        loss = model(x, x)
    opt.scale_loss(loss).backward()
    opt.step()
    assert opt.nonfinite_total.item() == 0
    before = [p.detach().clone() for p in model.parameters()]
    exp_avg = [opt.optimizer.state[p]["exp_avg"].clone() for p in opt.params]
    opt.loss_scale.fill_(3e38)  # the next backward overflows fp32 gradients to Inf
    with torch.autocast("cuda", dtype=torch.float16):
        loss = model(x, x)
    opt.scale_loss(loss).backward()
    opt.step()
    assert opt.nonfinite_total.item() == 1
    assert opt.loss_scale.item() == pytest.approx(1.5e38)
    assert all(torch.equal(a, p.detach()) for a, p in zip(before, model.parameters(), strict=True))
    assert all(torch.equal(a, opt.optimizer.state[p]["exp_avg"]) for a, p in zip(exp_avg, opt.params, strict=True))
