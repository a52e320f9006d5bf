"""Hugging Face models: adamw-train vs a minimal loop on a Llama-style model, and LoRA vs full fine-tuning.

Part 1 trains one small `LlamaForCausalLM` (random init from a config, same seed, same
synthetic batches) three ways, interleaved round by round:
- `minimal loop`: `model(input_ids=x).logits`, `cross_entropy`, `backward`,
  `clip_grad_norm_`, fused AdamW, `loss.item()` at each log interval: what people write;
- `minimal + guarded step`: the same with this project's `GuardedAdamW.step()`;
- `adamw-train`: the real `Trainer.run()` with `model.source: huggingface` (metrics server,
  JSON log to /dev/null, per-step metrics, interval reads; no checkpoints: they have their own
  benchmark), timed from its first step to its last, as the loops are.
The cost of the trainer around the step is `adamw-train` against `minimal + guarded step`.

Part 2 runs `adamw-train` on the same model with full fine-tuning and with LoRA (rank 8 on
q/k/v/o), interleaved, and reports step time, trainable parameters, AdamW state bytes and
checkpoint bytes (model.pt + optimizer.pt as the trainer writes them).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
import time

import torch
from adamw_trainer.checkpoint.payload import capture
from adamw_trainer.config import TrainerConfig
from adamw_trainer.data import BatchSource
from adamw_trainer.distributed import DistEnv
from adamw_trainer.models import build_model
from adamw_trainer.optim import GuardedAdamW, param_groups
from adamw_trainer.progress import RunLog
from adamw_trainer.schedule import lr_at
from adamw_trainer.train import Trainer

from .common import describe_machine, md_table, median, rotated

LLAMA = {
    "model_type": "llama", "num_hidden_layers": 4, "hidden_size": 64, "intermediate_size": 176,
    "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 512,
    "max_position_embeddings": 128, "tie_word_embeddings": False,
}
CONTEXT, BATCH = 64, 8
LORA = {"rank": 8, "alpha": 16, "targetModules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def config(steps: int, lora: bool = False) -> TrainerConfig:
    data = {
        "model": {"source": "huggingface", "contextLength": CONTEXT, "huggingface": {"config": LLAMA}},
        "data": {"source": "synthetic", "evalIntervalSteps": 0},
        "training": {"maxSteps": steps, "batchSize": BATCH, "logIntervalSteps": 10},
        "schedule": {"warmupSteps": 2},
        "metrics": {"port": 0},
        "checkpoint": {"dir": tempfile.mkdtemp(prefix="bench-ft-"), "intervalSteps": 0, "resume": False},
        "device": "cpu",
    }
    if lora:
        data["finetune"] = {"lora": LORA}
    return TrainerConfig.model_validate(data)


class _TimedTrainer(Trainer):
    """Times the loop from the first step to the last (the one-time start, ~50 ms of
    metrics server and config logging, would be 10% of these short runs); no final save."""

    def resume(self) -> None:
        super().resume()
        self.loop_started = time.perf_counter()

    def finish(self) -> None:
        self.loop_seconds = time.perf_counter() - self.loop_started
        return None


def trainer_run(cfg: TrainerConfig) -> tuple[float, Trainer]:
    with open(os.devnull, "w") as null:
        trainer = _TimedTrainer(cfg, env=DistEnv(), log=RunLog(enabled=True, stream=null, tty=False))
        try:
            trainer.run()
            return trainer.loop_seconds, trainer
        finally:
            trainer.close()


def minimal_loop(cfg: TrainerConfig, data: BatchSource, guarded: bool) -> float:
    torch.manual_seed(cfg.training.seed)
    lm = build_model(cfg).module.lm  # the bare LlamaForCausalLM
    o, t = cfg.optimizer, cfg.training
    groups = param_groups(lm, o)
    opt = GuardedAdamW(groups, o) if guarded else torch.optim.AdamW(
        groups, lr=o.lr, betas=o.betas, eps=o.eps, fused=True
    )
    inner = opt.optimizer if guarded else opt
    start = time.perf_counter()
    for step in range(t.max_steps):
        for g in inner.param_groups:
            g["lr"] = lr_at(step, o, cfg.schedule, t.max_steps)
        x, y = data.train_batch(step, 0, 0)
        logits = lm(input_ids=x, use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        if guarded:
            opt.step()
        else:
            torch.nn.utils.clip_grad_norm_(lm.parameters(), o.grad_clip_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
        if (step + 1) % t.log_interval_steps == 0:
            loss.item()
    return time.perf_counter() - start


def state_bytes(trainer: Trainer) -> tuple[int, int]:
    """(AdamW state bytes, checkpoint bytes of model.pt + optimizer.pt)."""
    opt = trainer.optimizer.optimizer
    adam = sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values()
               if isinstance(v, torch.Tensor))
    payload = capture(trainer.raw_model, trainer.optimizer, trainer.train_state())
    total = 0
    for part in (payload.model, payload.optimizer):
        buf = io.BytesIO()
        torch.save(part, buf)
        total += buf.tell()
    return adam, total


def run(args: argparse.Namespace) -> str:
    steps, rounds = (10, 1) if args.quick else (40, 5)
    cfg = config(steps)
    data = BatchSource(cfg.data, vocab_size=LLAMA["vocab_size"], context_length=CONTEXT, batch_size=BATCH,
                       seed=cfg.training.seed, device=torch.device("cpu"))
    loops = rotated({
        "minimal loop": lambda: minimal_loop(cfg, data, guarded=False),
        "minimal + guarded step": lambda: minimal_loop(cfg, data, guarded=True),
        "adamw-train": lambda: trainer_run(config(steps))[0],
    }, rounds)
    tokens = steps * BATCH * CONTEXT
    rows = [[name, f"{tokens / min(s):,.0f}", f"{min(s):.2f}", f"{median(s):.2f}"] for name, s in loops.items()]
    base = loops["minimal + guarded step"]
    overhead = min(loops["adamw-train"]) / min(base) - 1
    paired = median([a / b - 1 for a, b in zip(loops["adamw-train"], base, strict=True)])
    vs_minimal = min(loops["minimal loop"]) / min(loops["adamw-train"])

    kept: dict[str, Trainer] = {}

    def ft(kind: str) -> float:
        seconds, trainer = trainer_run(config(steps, lora=kind == "LoRA"))
        kept[kind] = trainer
        return seconds

    ft_times = rotated({"full": lambda: ft("full"), "LoRA": lambda: ft("LoRA")}, rounds)
    ft_rows = []
    measured = {}
    for kind in ("full", "LoRA"):
        trainer = kept[kind]
        adam, ckpt = state_bytes(trainer)
        measured[kind] = (min(ft_times[kind]) / steps, adam, ckpt)
        ft_rows.append([
            kind, f"{trainer.n_trainable:,}", f"{1000 * min(ft_times[kind]) / steps:.1f}",
            f"{1000 * median(ft_times[kind]) / steps:.1f}", f"{adam / 2**20:.2f}", f"{ckpt / 2**20:.2f}",
        ])
    (t_full, a_full, c_full), (t_lora, a_lora, c_lora) = measured["full"], measured["LoRA"]
    n_params = kept["full"].n_params
    lines = [
        f"Machine: {describe_machine()}.",
        f"Model: `LlamaForCausalLM` from a config ({LLAMA['num_hidden_layers']} layers, hidden "
        f"{LLAMA['hidden_size']}, {LLAMA['num_attention_heads']} heads, vocab {LLAMA['vocab_size']}; "
        f"{n_params / 1e6:.2f}M parameters), context {CONTEXT}, batch {BATCH}, fp32, synthetic tokens; "
        f"{steps} steps per run, {rounds} interleaved rounds after a warm-up round.",
        "",
        md_table(["loop", "tokens/s (best run)", f"s per {steps} steps (best)", "(median)"], rows),
        "",
        f"- Cost of the trainer around the step (adamw-train vs minimal + guarded step, best "
        f"runs): **{overhead:+.1%}** (goal < 2%); median of paired rounds {paired:+.1%}.",
        f"- adamw-train vs the minimal loop: **{vs_minimal:.2f}x** its tokens/s.",
        "",
        f"LoRA (rank {LORA['rank']} on {', '.join(LORA['targetModules'])}) vs full fine-tuning, "
        "both through adamw-train:",
        "",
        md_table(["fine-tuning", "trainable parameters", "ms/step (best)", "(median)",
                  "AdamW state MiB", "checkpoint MiB (model.pt + optimizer.pt)"], ft_rows),
        "",
        f"- LoRA step time **{t_lora / t_full:.2f}x** of full fine-tuning; AdamW state "
        f"**{a_lora / a_full:.3f}x**; checkpoint **{c_lora / c_full:.3f}x**.",
        "- What LoRA saves per step is the frozen weights' gradient matmuls and their AdamW "
        "updates; on a model this small the step is bound by per-layer overhead (kernel "
        "launches, and peft's wrapper around each adapted layer), so the step time barely "
        "moves while the optimizer state and checkpoints shrink with the trainable share.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        print(run(argparse.Namespace(quick=True)))
