"""Optimizer step: guarded fused AdamW vs bare fused AdamW vs the common recipe.

Compares, on GPT-shaped parameter sets of about 10M and 50M parameters:
- `guarded`: this project's `GuardedAdamW.step()` (one global-norm pass gives the clip
  factor and the NaN flag, handed to the fused kernel as `grad_scale`/`found_inf`);
- `bare fused`: `torch.optim.AdamW(fused=True).step()`, no clipping, no NaN check;
- `common recipe`: `clip_grad_norm_`, `torch.isfinite(norm).item()` (a host sync), then
  the default `torch.optim.AdamW`;
- a STREAM-add bandwidth probe over the same number of floats, timed in the same rounds.

Bytes per parameter are what each variant must move at least (fp32): bare 28 (read
param, grad, exp_avg, exp_avg_sq; write param and both moments); guarded 36 (+4 for the
norm pass reading the grads, +4 because the fused kernel writes the unscaled grads back
in place); common 40 (+4 norm pass, +8 for clip's read-and-write scaling pass).
"""

from __future__ import annotations

import argparse

import torch
from adamw_trainer.config import ModelConfig, OptimizerConfig
from adamw_trainer.model import GPT
from adamw_trainer.optim import GuardedAdamW, param_groups

from .common import BandwidthProbe, describe_machine, interleaved, md_table, median

SIZES = {
    "10M": ModelConfig(layers=6, heads=6, width=384, context_length=256),
    "50M": ModelConfig(layers=8, heads=8, width=720, context_length=256),
}
BYTES_PER_PARAM = {"guarded": 36, "bare fused": 28, "common recipe": 40}


def _setup(cfg: ModelConfig, device: torch.device, seed: int = 0):
    torch.manual_seed(seed)
    model = GPT(cfg).to(device)
    params = list(model.parameters())
    grads = [torch.randn_like(p) * 1e-3 for p in params]
    return model, params, grads


def variants(cfg: ModelConfig, device: torch.device):
    opt_cfg = OptimizerConfig(lr=1e-4, weight_decay=0.1, grad_clip_norm=1.0)

    m1, p1, g1 = _setup(cfg, device)
    guarded = GuardedAdamW(param_groups(m1, opt_cfg), opt_cfg)

    def guarded_step():
        for p, g in zip(p1, g1, strict=True):  # the step drops grads (set_to_none)
            p.grad = g
        guarded.step()

    m2, p2, g2 = _setup(cfg, device)
    for p, g in zip(p2, g2, strict=True):
        p.grad = g
    bare = torch.optim.AdamW(param_groups(m2, opt_cfg), lr=1e-4, betas=(0.9, 0.95), fused=True)

    def bare_step():
        bare.step()

    m3, p3, g3 = _setup(cfg, device)
    for p, g in zip(p3, g3, strict=True):
        p.grad = g
    common = torch.optim.AdamW(param_groups(m3, opt_cfg), lr=1e-4, betas=(0.9, 0.95))

    def common_step():
        norm = torch.nn.utils.clip_grad_norm_(p3, 1.0)
        if torch.isfinite(norm).item():  # host sync every step
            common.step()

    n = sum(p.numel() for p in p1)
    return n, {"guarded": guarded_step, "bare fused": bare_step, "common recipe": common_step}


def run(args: argparse.Namespace) -> str:
    return optimizer_table(SIZES, torch.device("cpu"), rounds=3 if args.quick else 15)


def optimizer_table(sizes: dict[str, ModelConfig], device: torch.device, rounds: int) -> str:
    """Time the three steps and the probe per size; a markdown table and verdicts."""
    rows, verdicts = [], []
    cpu = device.type == "cpu"
    for label, cfg in sizes.items():
        n, fns = variants(cfg, device)
        probe = BandwidthProbe(n, device)
        times = interleaved({**fns, "probe": probe}, device, rounds=rounds, repeat=3)
        # Best of the rounds: on a shared machine contention only ever slows a run down.
        med = {k: min(v) for k, v in times.items()}
        bw = probe.gbps(med["probe"])
        for name in fns:
            moved = BYTES_PER_PARAM[name] * n / med[name] / 1e9
            rows.append([
                label, f"{n / 1e6:.1f}M", name, f"{med[name] * 1e3:.2f}", BYTES_PER_PARAM[name],
                f"{moved:.1f}", f"{moved / bw:.2f}",
            ])
        rows.append([label, f"{n / 1e6:.1f}M", "bandwidth probe", f"{med['probe'] * 1e3:.2f}", 12, f"{bw:.1f}", "1.00"])
        g_vs_bare = med["guarded"] / med["bare fused"]
        common_vs_g = med["common recipe"] / med["guarded"]
        paired = median([g / b for g, b in zip(times["guarded"], times["bare fused"], strict=True)])
        frac = BYTES_PER_PARAM["guarded"] * n / med["guarded"] / 1e9 / bw
        del fns, probe
        verdicts.append(
            f"- {label}: guarded / bare = **{g_vs_bare:.2f}x** (goal ≤ 1.25; median of paired rounds "
            f"{paired:.2f}x), common / guarded = "
            f"**{common_vs_g:.2f}x**{' (goal ≥ 2 on CPU)' if cpu else ''}, guarded at **{frac:.2f}** of measured "
            f"bandwidth for its 36 B/param (goal ≥ 0.85)"
        )
    header = ["size", "params", "variant", "ms (best)", "bytes/param", "GB/s", "of probe bandwidth"]
    return "\n".join([
        f"Machine: {describe_machine(device)}. Best of {rounds} interleaved rounds of 3 steps each.",
        "",
        md_table(header, rows),
        "",
        *verdicts,
    ])
