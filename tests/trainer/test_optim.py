"""The guarded fused AdamW step against references, and its NaN/Inf skip."""

from __future__ import annotations

import copy

import pytest
import torch
from adamw_trainer.config import OptimizerConfig
from adamw_trainer.optim import GuardedAdamW, param_groups
from torch import nn

torch.set_num_threads(1)

# The fused kernel differs per device; on a CUDA machine the same checks run there too.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def tiny_model(seed: int = 0, device: str = "cpu") -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(7, 5), nn.LayerNorm(5), nn.Linear(5, 3)).to(device)
    with torch.no_grad():  # no zero biases: a decayed zero would look undecayed
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def random_grads(model: nn.Module, steps: int, seed: int = 1, scale: float = 1.0) -> list[list[torch.Tensor]]:
    """float64 gradients per step, with norms that straddle the clip threshold."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in range(steps):
        mult = scale * (0.2 if s % 2 else 3.0)  # every other step is clipped
        out.append([torch.randn(p.shape, generator=g, dtype=torch.float64) * mult for p in model.parameters()])
    return out


def reference_adamw(params64, grads_per_step, *, lr, betas, eps, wd_for, clip):
    """Loshchilov & Hutter AdamW with bias correction and global-norm clipping, in float64."""
    b1, b2 = betas
    m = [torch.zeros_like(p) for p in params64]
    v = [torch.zeros_like(p) for p in params64]
    for t, grads in enumerate(grads_per_step, start=1):
        norm = torch.sqrt(sum((g * g).sum() for g in grads))
        factor = min(1.0, clip / (norm.item() + 1e-6)) if clip > 0 else 1.0
        for i, (p, g) in enumerate(zip(params64, grads, strict=True)):
            g = g * factor
            p.mul_(1 - lr * wd_for[i])  # decoupled: decay is not part of the gradient
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            m_hat = m[i] / (1 - b1**t)
            v_hat = v[i] / (1 - b2**t)
            p.sub_(lr * m_hat / (v_hat.sqrt() + eps))
    return params64


def run_guarded(model, grads_per_step, cfg: OptimizerConfig) -> GuardedAdamW:
    opt = GuardedAdamW(param_groups(model, cfg), cfg)
    for grads in grads_per_step:
        for p, g in zip(model.parameters(), grads, strict=True):
            p.grad = g.to(p.device, p.dtype).clone()
        opt.step()
    return opt


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("clip", [0.0, 1.0])
def test_matches_float64_reference(clip, device):
    # Tolerance: fp32 has a 2^-24 (6e-8) relative unit; each of the 6 steps rounds the
    # moments and the update a few times, so fp32 parameters drift ~1e-7 from float64.
    # A real algorithmic slip (missing bias correction, coupled decay, wrong clip) moves
    # parameters by ~lr*wd = 1e-3 or ~lr = 1e-2, four orders of magnitude above atol.
    cfg = OptimizerConfig(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, grad_clip_norm=clip)
    model = tiny_model(device=device)
    params64 = [p.detach().cpu().double().clone() for p in model.parameters()]
    wd_for = [cfg.weight_decay if p.dim() >= 2 else 0.0 for p in model.parameters()]
    grads = random_grads(model, steps=6)
    run_guarded(model, grads, cfg)
    expected = reference_adamw(
        params64, grads, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, wd_for=wd_for, clip=clip
    )
    for p, ref in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.detach().cpu().double(), ref, rtol=1e-5, atol=1e-6)


def test_clipping_equals_clip_grad_norm_then_adamw():
    cfg = OptimizerConfig(lr=3e-3, weight_decay=0.05, grad_clip_norm=0.5)
    a, b = tiny_model(), tiny_model()
    grads = random_grads(a, steps=5, scale=2.0)
    run_guarded(a, grads, cfg)

    groups = param_groups(b, cfg)
    plain = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    for step_grads in grads:
        for p, g in zip(b.parameters(), step_grads, strict=True):
            p.grad = g.float().clone()
        torch.nn.utils.clip_grad_norm_(b.parameters(), cfg.grad_clip_norm)
        plain.step()
    # Same algorithm; only the order of rounding differs (divide by the factor vs multiply).
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def _state(opt: GuardedAdamW) -> list[torch.Tensor]:
    out = []
    for p in opt.params:
        out.append(p.detach().clone())
        st = opt.optimizer.state[p]
        out += [st["exp_avg"].clone(), st["exp_avg_sq"].clone(), st["step"].clone()]
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_gradient_skips_the_step_bit_identically(bad, device):
    cfg = OptimizerConfig(lr=1e-2, weight_decay=0.1, grad_clip_norm=1.0)
    model = tiny_model(device=device)
    opt = run_guarded(model, random_grads(model, steps=3), cfg)  # non-zero moments
    before = _state(opt)

    poisoned = random_grads(model, steps=1, seed=9)[0]
    poisoned[2].view(-1)[1] = bad  # one element of one tensor
    for p, g in zip(model.parameters(), poisoned, strict=True):
        p.grad = g.float().to(device)
    opt.step()

    after = _state(opt)
    for x, y in zip(before, after, strict=True):
        assert torch.equal(x, y), "a skipped step changed a parameter, a moment or a step count"
    assert opt.nonfinite_total.item() == 1
    assert opt.consecutive_nonfinite.item() == 1

    # A second bad step in a row, then a good one: the run counter resets, params move.
    for p, g in zip(model.parameters(), poisoned, strict=True):
        p.grad = g.float().to(device)
    opt.step()
    assert opt.consecutive_nonfinite.item() == 2
    run_guarded_step(model, opt, random_grads(model, steps=1, seed=10)[0])
    assert opt.consecutive_nonfinite.item() == 0
    assert opt.nonfinite_total.item() == 2
    assert not torch.equal(before[0], next(model.parameters()).detach())
    assert opt.optimizer.state[opt.params[0]]["step"].item() == 4


def run_guarded_step(model, opt, grads):
    for p, g in zip(model.parameters(), grads, strict=True):
        p.grad = g.to(p.device, torch.float32)
    opt.step()


def test_no_decay_groups_do_not_decay():
    # With zero gradients Adam's update is 0/(0+eps) = 0, so only weight decay moves a
    # parameter: matrices shrink by exactly (1 - lr*wd), vectors stay put.
    cfg = OptimizerConfig(lr=0.1, weight_decay=0.5, decay="matrices")
    model = tiny_model()
    before = [p.detach().clone() for p in model.parameters()]
    run_guarded(model, [[torch.zeros(p.shape, dtype=torch.float64) for p in model.parameters()]], cfg)
    for p0, p in zip(before, model.parameters(), strict=True):
        if p.dim() >= 2:
            torch.testing.assert_close(p.detach(), p0 * (1 - 0.1 * 0.5))
        else:
            assert torch.equal(p.detach(), p0), "a bias/norm parameter decayed"


@pytest.mark.parametrize("decay, decays_vectors, decays_matrices", [("all", True, True), ("none", False, False)])
def test_decay_modes(decay, decays_vectors, decays_matrices):
    cfg = OptimizerConfig(lr=0.1, weight_decay=0.5, decay=decay)
    model = tiny_model()
    before = [p.detach().clone() for p in model.parameters()]
    run_guarded(model, [[torch.zeros(p.shape, dtype=torch.float64) for p in model.parameters()]], cfg)
    for p0, p in zip(before, model.parameters(), strict=True):
        changed = not torch.equal(p.detach(), p0)
        assert changed == (decays_matrices if p.dim() >= 2 else decays_vectors)


def test_param_groups_cover_each_parameter_once_with_tied_weights():
    from adamw_trainer.config import ModelConfig
    from adamw_trainer.model import GPT

    model = GPT(ModelConfig(layers=1, heads=2, width=16, context_length=8))
    groups = param_groups(model, OptimizerConfig())
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert model.head.weight is model.tok_emb.weight


def test_fp16_loss_scaling_matches_unscaled_and_backs_off_on_overflow():
    cfg = OptimizerConfig(lr=1e-2, grad_clip_norm=1.0)
    x = torch.randn(16, 7, generator=torch.Generator().manual_seed(3))
    a, b = tiny_model(), tiny_model()
    plain = GuardedAdamW(param_groups(a, cfg), cfg)
    scaled = GuardedAdamW(param_groups(b, cfg), cfg, loss_scaling=True, init_loss_scale=2.0**10, growth_interval=2)
    for _ in range(4):
        plain.scale_loss(a(x).pow(2).mean()).backward()
        plain.step()
        scaled.scale_loss(b(x).pow(2).mean()).backward()
        scaled.step()
    # Scaling by a power of two is exact, so only the clip/unscale rounding differs.
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
    assert scaled.loss_scale.item() == 2.0**12  # doubled after each 2 clean steps

    # An overflowing scale makes the gradients Inf: the step is skipped and the scale halves.
    scaled.loss_scale.fill_(3e38)
    before = [p.detach().clone() for p in b.parameters()]
    scaled.scale_loss(b(x).pow(2).mean() + 10.0).backward()
    scaled.step()
    assert all(torch.equal(p0, p.detach()) for p0, p in zip(before, b.parameters(), strict=True))
    assert scaled.loss_scale.item() == pytest.approx(1.5e38)
    assert scaled.nonfinite_total.item() == 1


def test_state_dict_round_trip_carries_guard_state():
    cfg = OptimizerConfig()
    model = tiny_model()
    opt = run_guarded(model, random_grads(model, steps=2), cfg)
    opt.nonfinite_total.fill_(5)
    clone = copy.deepcopy(model)
    other = GuardedAdamW(param_groups(clone, cfg), cfg)
    other.load_state_dict(opt.state_dict())
    assert other.nonfinite_total.item() == 5
    assert torch.equal(other.optimizer.state[other.params[0]]["exp_avg"], opt.optimizer.state[opt.params[0]]["exp_avg"])
