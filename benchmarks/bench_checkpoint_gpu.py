"""GPU checkpoint stall: async vs sync save of a GPT-2-small-sized model's state while training on CUDA.

Runs only where CUDA is available (`python -m benchmarks.run_all --only checkpoint_gpu`);
elsewhere the section already in BENCHMARKS.md is kept. Same method as `bench_checkpoint`
(interleaved no-save / sync / async windows, stall = window minus the round's no-save
window), with windows long enough for the background write of ~1.5 GB of fp32 state to
finish inside them: that is the case a real job is in, since saves are minutes apart.
"""

from __future__ import annotations

import argparse
import os

import torch
from adamw_trainer.config import TrainerConfig

from .bench_checkpoint import measure
from .common import describe_machine, md_table, median


def gpt2_small() -> TrainerConfig:
    return TrainerConfig.model_validate({
        "model": {"layers": 12, "heads": 12, "width": 768, "contextLength": 1024, "vocabSize": 50304},
        "data": {"source": "synthetic", "evalIntervalSteps": 0},
        "training": {"batchSize": 8, "precision": "bf16"},
        "device": "cuda",
    })


def run(args: argparse.Namespace) -> str | None:
    if not torch.cuda.is_available():
        return None
    torch.backends.cuda.matmul.allow_tf32 = True
    cfg = gpt2_small()
    steps, rounds = (20, 1) if args.quick else (int(os.environ.get("BENCH_CKPT_GPU_STEPS", "250")), 3)
    r = measure(cfg, rounds, steps, torch.device("cuda"))
    rows = r["rows"]
    base = median(rows["base"])
    sync_stall, async_stall = median(rows["sync"]), median(rows["async"])
    ratio = async_stall / sync_stall if sync_stall > 0 else float("nan")
    table = md_table(
        ["step", "window (no save)", "sync save stall", "async save stall",
         "training thread blocked (snapshot)", "async / sync", "goal < 0.10"],
        [[f"{base / steps * 1e3:.1f} ms", f"{base:.2f} s", f"{sync_stall:.2f} s", f"{async_stall:.3f} s",
          f"{median(rows['async_blocked']):.3f} s", f"**{ratio:.3f}**", "met" if ratio < 0.10 else "not met"]],
    )
    gpu = torch.cuda.get_device_name()
    return f"""Machine: {describe_machine()}; {gpu}; checkpoints on the machine's local disk, fsync included.
Model: GPT-2 small's shape, {r['params'] / 1e6:.1f}M parameters, bf16 autocast, batch {cfg.training.batch_size};
state per save {r['state_bytes'] / 2**30:.2f} GiB (fp32 weights + AdamW moments, snapshotted into pinned host
memory), {r['file_bytes'] / 2**30:.2f} GiB on disk. Windows of {steps} steps; {rounds} interleaved rounds; medians
of the paired differences against the no-save window of the same round.

{table}

- The writer needs about as long as a synchronous save (3.4-3.6 s here: serialize, sha256,
  fsync of 1.5 GiB), so the async save is only free when saves are further apart than one
  write. In a first run with 60-step windows (1.7 s, shorter than the write) the wait for the
  writer counted as stall and the ratio was 0.47; jobs checkpoint minutes apart.
- The CUDA path of checkpoints was also checked on this machine with real processes
  (`tests/trainer/test_cuda_fault_tolerance.py`): SIGKILL then resume onto the GPU finishes
  from the checkpoint, and SIGTERM saves and exits 143.
"""
