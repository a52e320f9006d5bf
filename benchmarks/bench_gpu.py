"""GPU: bf16 training throughput and MFU of a GPT-2-small-sized model, and the optimizer step on CUDA.

Runs only where CUDA is available (`python -m benchmarks.run_all --only gpu`); elsewhere
the section already in BENCHMARKS.md is kept. The model is GPT-2 small's shape (12
layers, 12 heads, width 768, context 1024, vocabulary 50304) on the synthetic source, in
bf16 autocast with fp32 master weights, without `torch.compile` (the trainer does not
compile).
"""

from __future__ import annotations

import argparse

import torch
from adamw_trainer.config import TrainerConfig

from .bench_optimizer_step import optimizer_table
from .bench_throughput import compare, report


def gpt2_small(steps: int, batch: int) -> TrainerConfig:
    return TrainerConfig.model_validate({
        "model": {"layers": 12, "heads": 12, "width": 768, "contextLength": 1024, "vocabSize": 50304},
        "data": {"source": "synthetic", "evalIntervalSteps": 0},
        "training": {"maxSteps": steps, "batchSize": batch, "precision": "bf16", "logIntervalSteps": 10},
        "schedule": {"warmupSteps": 5},
        "device": "cuda",
    })


def run(args: argparse.Namespace) -> str | None:
    if not torch.cuda.is_available():
        return None
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    steps, rounds = (10, 1) if args.quick else (30, 3)
    cfg = gpt2_small(steps, batch=16)
    parts = ["### Training throughput (bf16)", "", report(cfg, device, compare(cfg, device, rounds))]
    parts += ["", "### Optimizer step at GPT-2-small size (fp32 master weights and moments)", ""]
    parts.append(optimizer_table({"124M": cfg.model}, device, rounds=5 if args.quick else 15))
    return "\n".join(parts)
