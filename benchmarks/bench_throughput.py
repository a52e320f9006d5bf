"""Training throughput: adamw-train vs a minimal nanoGPT-style loop, same model, data and threads.

Three loops train the same model (same seed) on the same batches:
- `nanoGPT loop`: forward/backward, `clip_grad_norm_`, fused AdamW, `loss.item()` at
  each log interval: the minimal loop people write;
- `minimal + guarded step`: the same loop with this project's `GuardedAdamW.step()`;
- `adamw-train`: the real `Trainer.run()`, with its Prometheus/`/status` server running,
  JSON logging (to /dev/null), per-step metrics and the interval reads. Checkpointing is
  off here (no interval saves, no resume, final save skipped): its cost has its own
  benchmark.
The cost of metrics, logging and progress is `adamw-train` against `minimal + guarded
step` (same arithmetic); the nanoGPT row shows what the guarded step buys end to end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import tempfile
import time

import torch
from adamw_trainer.config import TrainerConfig
from adamw_trainer.data import BatchSource
from adamw_trainer.distributed import DistEnv
from adamw_trainer.model import GPT, flops_per_token
from adamw_trainer.optim import GuardedAdamW, param_groups
from adamw_trainer.progress import RunLog
from adamw_trainer.schedule import lr_at
from adamw_trainer.train import Trainer, peak_flops

from .common import describe_machine, md_table, median, rotated, sync


def cpu_config(steps: int) -> TrainerConfig:
    """The quickstart model (examples/quickstart-trainer.yaml) on the stdlib corpus."""
    return TrainerConfig.model_validate({
        "model": {"layers": 4, "heads": 4, "width": 256, "contextLength": 128},
        "data": {"source": "stdlib", "maxBytes": 4_000_000, "evalIntervalSteps": 0},
        "training": {"maxSteps": steps, "batchSize": 16, "logIntervalSteps": 10},
        "schedule": {"warmupSteps": 5},
        "device": "cpu",
    })


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Loop:
    """A minimal training loop; `guarded` picks the optimizer step."""

    def __init__(self, cfg: TrainerConfig, device: torch.device, data: BatchSource, guarded: bool):
        torch.manual_seed(cfg.training.seed)
        self.cfg, self.device, self.data, self.guarded = cfg, device, data, guarded
        self.model = GPT(cfg.model).to(device)
        groups = param_groups(self.model, cfg.optimizer)
        if guarded:
            self.opt = GuardedAdamW(groups, cfg.optimizer)
        else:
            o = cfg.optimizer
            self.opt = torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps, fused=True)
        p = cfg.training.precision
        self.autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16 if p == "bf16" else torch.float16)
            if p != "fp32" and device.type == "cuda" else contextlib.nullcontext()
        )

    def run(self) -> None:
        t, c = self.cfg.training, self.cfg
        for step in range(t.max_steps):
            lr = lr_at(step, c.optimizer, c.schedule, t.max_steps)
            groups = self.opt.optimizer.param_groups if self.guarded else self.opt.param_groups
            for g in groups:
                g["lr"] = lr
            for micro in range(t.grad_accumulation_steps):
                x, y = self.data.train_batch(step, micro, 0)
                with self.autocast:
                    loss = self.model(x, y) / t.grad_accumulation_steps
                loss.backward()
            if self.guarded:
                self.opt.step()
            else:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.optimizer.grad_clip_norm)
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
            if (step + 1) % t.log_interval_steps == 0:
                loss.item()  # host sync, as nanoGPT does only when it logs


class _NoFinalSaveTrainer(Trainer):
    def finish(self) -> None:
        return None


def _trainer_run(cfg: TrainerConfig) -> float:
    cfg = cfg.model_copy(deep=True)
    cfg.metrics.port = _free_port()
    cfg.metrics.host = "127.0.0.1"
    cfg.checkpoint.dir = tempfile.mkdtemp(prefix="bench-ckpt-")
    cfg.checkpoint.interval_steps = 0
    cfg.checkpoint.resume = False
    with open(os.devnull, "w") as null:
        trainer = _NoFinalSaveTrainer(cfg, env=DistEnv(), log=RunLog(enabled=True, stream=null, tty=False))
        try:
            start = time.perf_counter()
            trainer.run()
            return time.perf_counter() - start
        finally:
            trainer.close()


def compare(cfg: TrainerConfig, device: torch.device, rounds: int) -> dict[str, list[float]]:
    """Seconds for `maxSteps` steps per loop, interleaved round by round."""
    data = BatchSource(
        cfg.data, vocab_size=cfg.model.vocab_size, context_length=cfg.model.context_length,
        batch_size=cfg.training.batch_size, seed=cfg.training.seed, device=device,
    )

    def timed_loop(guarded: bool) -> float:
        loop = _Loop(cfg, device, data, guarded)
        sync(device)
        start = time.perf_counter()
        loop.run()
        sync(device)
        return time.perf_counter() - start

    runners = {
        "nanoGPT loop": lambda: timed_loop(False),
        "minimal + guarded step": lambda: timed_loop(True),
        "adamw-train": lambda: _trainer_run(cfg),
    }
    return rotated(runners, rounds)


def report(cfg: TrainerConfig, device: torch.device, times: dict[str, list[float]]) -> str:
    t = cfg.training
    tokens = t.max_steps * t.batch_size * t.grad_accumulation_steps * cfg.model.context_length
    model = GPT(cfg.model)
    n_params = sum(p.numel() for p in model.parameters())
    fpt = flops_per_token(cfg.model, n_params)
    peak = peak_flops(device, t.precision) if device.type == "cuda" else None
    rows = []
    # Best run of each loop: on a shared machine contention only ever slows a run down.
    for name, secs in times.items():
        tps = tokens / min(secs)
        row = [name, f"{tps:,.0f}", f"{min(secs):.2f}", f"{median(secs):.2f}"]
        if peak:
            row.append(f"{fpt * tps / peak:.1%}")
        rows.append(row)
    header = ["loop", "tokens/s (best run)", f"s per {t.max_steps} steps (best)", "(median)"]
    header += ["MFU"] if peak else []
    base = times["minimal + guarded step"]
    overhead = min(times["adamw-train"]) / min(base) - 1
    paired = median([a / b - 1 for a, b in zip(times["adamw-train"], base, strict=True)])
    vs_nano = min(times["nanoGPT loop"]) / min(times["adamw-train"])
    m = cfg.model
    lines = [
        f"Machine: {describe_machine(device)}.",
        f"Model: {m.layers} layers, width {m.width}, {m.heads} heads, context {m.context_length}, "
        f"vocab {m.vocab_size} ({n_params / 1e6:.1f}M parameters); batch {t.batch_size}, "
        f"{t.precision}, data `{cfg.data.source}`; {t.max_steps} steps per run, "
        f"{len(base)} interleaved rounds after a warm-up round.",
        "",
        md_table(header, rows),
        "",
        f"- Cost of metrics, logging and progress (adamw-train vs minimal + guarded step, "
        f"best runs): **{overhead:+.1%}** (goal < 2%); median of paired rounds {paired:+.1%}.",
        f"- adamw-train vs the nanoGPT loop: **{vs_nano:.2f}x** its tokens/s.",
    ]
    if peak:
        lines.append(
            f"- MFU uses {fpt / 1e9:.2f} GFLOP/token (6N + 12·L·T·d) and a "
            f"{peak / 1e12:.0f} TFLOP/s dense bf16 peak."
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> str:
    device = torch.device("cpu")
    steps, rounds = (8, 1) if args.quick else (10, 15)
    cfg = cpu_config(steps)
    return report(cfg, device, compare(cfg, device, rounds))
