"""The guarded fused AdamW step: clipping and NaN/Inf skipping from one global-norm pass.

The usual recipe (`clip_grad_norm_`, then `if not torch.isfinite(norm).item()`, then
`optimizer.step()`) reads the gradients twice more, writes them once more and stops the
host every step. Here one `_foreach_norm` pass yields both the clip factor and the
non-finite flag; they go to PyTorch's fused AdamW kernel as `grad_scale` (gradients are
divided by it) and `found_inf` (the kernel returns without touching parameters, moments
or step counts when it is non-zero), the hooks `torch.amp.GradScaler` uses. Nothing is
read back to the host: the skip counters live on the device and the trainer reads them
at log intervals.

fp16 dynamic loss scaling folds into the same path: the loss is multiplied by the scale,
the norm of the scaled gradients is divided by it, and `grad_scale` carries
`loss_scale * clip_factor`; the scale is halved on an overflow and doubled after
`growth_interval` clean steps (`torch._amp_update_scale_`, on the device).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import OptimizerConfig

# clip_grad_norm_ divides by (norm + 1e-6); use the same so the two agree.
_CLIP_EPS = 1e-6


class GuardedAdamW:
    """Fused AdamW whose step clips and skips non-finite gradients without a host sync."""

    def __init__(
        self,
        groups: list[dict],
        cfg: OptimizerConfig,
        *,
        loss_scaling: bool = False,
        init_loss_scale: float = 2.0**16,
        growth_interval: int = 2000,
    ):
        self.optimizer = torch.optim.AdamW(
            groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=True
        )
        self.params: list[nn.Parameter] = [p for g in self.optimizer.param_groups for p in g["params"]]
        if not self.params:
            raise ValueError("the model has no trainable parameters (all have requires_grad=False)")
        # The config owns each group's hyperparameters; a checkpoint owns only the moments
        # (load_state_dict would otherwise bring back the decay and lr scale it was saved with).
        self._group_settings = [
            {k: g[k] for k in ("weight_decay", "lr_scale", "name") if k in g} for g in self.optimizer.param_groups
        ]
        device = self.params[0].device
        self.set_lr(cfg.lr)  # groups start at their scaled rate; the trainer sets it every step
        self.clip_norm = cfg.grad_clip_norm
        self.loss_scaling = loss_scaling
        self.growth_interval = growth_interval
        # Device-side state; read by the host only at log intervals.
        self.loss_scale = torch.full((), init_loss_scale if loss_scaling else 1.0, device=device)
        self.growth_tracker = torch.zeros((), dtype=torch.int32, device=device)
        self.nonfinite_total = torch.zeros((), device=device)
        self.consecutive_nonfinite = torch.zeros((), device=device)
        self.last_grad_norm = torch.zeros((), device=device)

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss to call backward() on (multiplied by the loss scale under fp16)."""
        return loss * self.loss_scale if self.loss_scaling else loss

    def set_lr(self, lr: float) -> None:
        """Set the scheduled learning rate; each group runs at `lr * lr_scale` (its own rule's)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    @torch.no_grad()
    def step(self) -> None:
        """Clip, detect NaN/Inf, and update, all on the device; then drop the gradients."""
        grads = [p.grad for p in self.params if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        # A sum of squares is non-finite exactly when some element is: no isfinite() pass.
        found_inf = (~torch.isfinite(norm)).to(torch.float32)
        if self.loss_scaling:
            norm = norm / self.loss_scale
        self.last_grad_norm.copy_(norm)

        grad_scale = None
        if self.clip_norm > 0:
            clip_factor = ((norm + _CLIP_EPS) / self.clip_norm).clamp_(min=1.0)
            grad_scale = clip_factor * self.loss_scale if self.loss_scaling else clip_factor
        elif self.loss_scaling:
            grad_scale = self.loss_scale.clone()
        opt = self.optimizer
        opt.grad_scale, opt.found_inf = grad_scale, found_inf
        try:
            opt.step()
        finally:
            opt.grad_scale = opt.found_inf = None

        self.nonfinite_total.add_(found_inf)
        # consecutive = (consecutive + 1) if skipped else 0
        self.consecutive_nonfinite.add_(1.0).mul_(found_inf)
        if self.loss_scaling:
            torch._amp_update_scale_(
                self.loss_scale, self.growth_tracker, found_inf, 2.0, 0.5, self.growth_interval
            )
        opt.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        """Optimizer state plus the guard's device state (for checkpoints)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "loss_scale": self.loss_scale.detach().cpu(),
            "growth_tracker": self.growth_tracker.detach().cpu(),
            "nonfinite_total": self.nonfinite_total.detach().cpu(),
            "consecutive_nonfinite": self.consecutive_nonfinite.detach().cpu(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        for group, settings in zip(self.optimizer.param_groups, self._group_settings, strict=True):
            group.update(settings)
        for name in ("loss_scale", "growth_tracker", "nonfinite_total", "consecutive_nonfinite"):
            if name in state:
                getattr(self, name).copy_(state[name])

