"""AdamW parameter groups from `optimizer` config: who decays, and at what learning rate.

Each trainable parameter joins the first rule that claims it, in this order:

1. `optimizer.groups`, in order: `match` is a regular expression searched in the
   parameter's name (as `model.named_parameters()` spells it);
2. the LoRA preset: names containing `lora_` (group `lora`, `optimizer.loraGroup`);
3. the `optimizer.noDecay` presets `bias`, `norm`, `embedding` (group `no_decay`);
4. the default rule, `optimizer.decay`: `matrices` puts 2+-D tensors in `decay` and the
   rest (biases, norm gains) in `no_decay`; `all` puts everything in `decay`; `none` in
   `no_decay`.

Frozen parameters (`requires_grad=False`) never enter the optimizer: AdamW would keep
moments for them and decay would still move them.

`optimizer.layerwiseLrDecay` (factor f < 1) splits every group by depth for models with
numbered layers (`layers.N.`, `h.N.`, `blocks.N.`). With L numbered layers, depth is 0 for
embeddings, N + 1 for layer N, and L + 1 for everything else (final norm, output head);
the group's learning rate is multiplied by f ** (L + 1 - depth): the output side trains at
the full rate, each layer below it at f times the one above. Such groups are named
`<rule>.depth<d>`. A rule's own `lrScale` multiplies in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import nn

from ..config import OptimizerConfig

# `model.layers.3.`, `transformer.h.3.`, `blocks.3.` (and the same under peft's wrappers).
_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")


@dataclass
class ParamGroup:
    """One AdamW group as resolved from the config (before it becomes a torch param group)."""

    name: str
    weight_decay: float
    lr_scale: float
    params: list[nn.Parameter] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.params)

    def torch_group(self) -> dict:
        # Extra keys ride along in torch's param groups (and its state_dict).
        return {"params": self.params, "weight_decay": self.weight_decay, "lr_scale": self.lr_scale,
                "name": self.name}


def _is_norm(module: nn.Module) -> bool:
    norm_types = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase, nn.RMSNorm)
    # Hugging Face norms (LlamaRMSNorm, ...) are their own classes: go by the class name.
    return isinstance(module, norm_types) or type(module).__name__.endswith("Norm")


def _is_embedding(module: nn.Module) -> bool:
    return isinstance(module, nn.Embedding) or type(module).__name__.endswith("Embedding")


def _named_trainable(model: nn.Module) -> list[tuple[str, nn.Parameter, nn.Module]]:
    """(name, parameter, owning module) once per parameter (a tied weight under its first name)."""
    owner: dict[int, nn.Module] = {}
    for _, module in model.named_modules():
        for _, p in module.named_parameters(recurse=False):
            owner.setdefault(id(p), module)
    return [(n, p, owner[id(p)]) for n, p in model.named_parameters() if p.requires_grad]


def _preset(name: str, p: nn.Parameter, module: nn.Module, cfg: OptimizerConfig) -> str | None:
    """Which built-in preset (`lora` or `no_decay`) claims a parameter, if any."""
    if "lora_" in name:
        return "lora"
    presets = set(cfg.no_decay)
    if "bias" in presets and name.rsplit(".", 1)[-1].endswith("bias"):
        return "no_decay"
    if "norm" in presets and _is_norm(module):
        return "no_decay"
    if "embedding" in presets and _is_embedding(module):
        return "no_decay"
    return None


def _depths(named: list[tuple[str, nn.Parameter, nn.Module]]) -> tuple[dict[str, int], int]:
    """Depth per parameter name for layer-wise lr decay, and L (the number of numbered layers)."""
    layer_of = {n: int(m.group(1)) for n, _, _ in named if (m := _LAYER.search(n))}
    layers = max(layer_of.values()) + 1 if layer_of else 0
    depth = {}
    for n, _, module in named:
        if n in layer_of:
            depth[n] = layer_of[n] + 1
        elif _is_embedding(module):
            depth[n] = 0
        else:
            depth[n] = layers + 1
    return depth, layers


def resolve_groups(model: nn.Module, cfg: OptimizerConfig) -> list[ParamGroup]:
    """The non-empty AdamW groups for `model`'s trainable parameters, in a stable order."""
    rules = [(r.name, re.compile(r.match), cfg.weight_decay if r.weight_decay is None else r.weight_decay,
              r.lr_scale) for r in cfg.groups]
    base = {
        "lora": (cfg.lora_group.weight_decay, cfg.lora_group.lr_scale),
        "no_decay": (0.0, 1.0),
        "decay": (cfg.weight_decay, 1.0),
    }
    named = _named_trainable(model)
    layerwise = cfg.layerwise_lr_decay != 1.0
    depth, layers = _depths(named) if layerwise else ({}, 0)
    groups: dict[str, ParamGroup] = {}
    for name, p, module in named:
        claimed = next((r for r in rules if r[1].search(name)), None)  # first match wins
        if claimed is not None:
            rule, _, wd, scale = claimed
        else:
            rule = _preset(name, p, module, cfg)
            if rule is None:
                decays = cfg.decay == "all" or (cfg.decay == "matrices" and p.dim() >= 2)
                rule = "decay" if decays else "no_decay"
            wd, scale = base[rule]
        if layerwise and layers:
            d = depth[name]
            key = f"{rule}.depth{d}"
            scale = scale * cfg.layerwise_lr_decay ** (layers + 1 - d)
        else:
            key = rule
        group = groups.setdefault(key, ParamGroup(key, wd, scale))
        group.params.append(p)
        group.names.append(name)
    # Rules in config order, then the presets, then the default rule; depths ascending.
    order = [r.name for r in cfg.groups] + ["lora", "no_decay", "decay"]

    def sort_key(g: ParamGroup) -> tuple[int, int]:
        rule, _, d = g.name.partition(".depth")
        return order.index(rule), int(d or 0)

    return sorted(groups.values(), key=sort_key)


def param_groups(model: nn.Module, cfg: OptimizerConfig) -> list[dict]:
    """torch param groups (`params`, `weight_decay`, `lr_scale`, `name`) for `GuardedAdamW`."""
    return [g.torch_group() for g in resolve_groups(model, cfg)]


def describe_groups(groups: list[dict], cfg: OptimizerConfig | None = None) -> dict[str, dict]:
    """The resolved groups for the start log: tensors, parameters, weight decay, lr scale.

    With `cfg`, user rules that matched no parameter are listed too (tensors 0), so a typo
    in a `match` shows in the log instead of silently training with the default rule.
    """
    out = {
        g["name"]: {
            "tensors": len(g["params"]),
            "parameters": sum(p.numel() for p in g["params"]),
            "weightDecay": g["weight_decay"],
            "lrScale": g["lr_scale"],
        }
        for g in groups
    }
    if cfg is not None:
        claimed = {g["name"].partition(".depth")[0] for g in groups}
        for rule in cfg.groups:
            if rule.name not in claimed:
                out[rule.name] = {"tensors": 0, "parameters": 0, "weightDecay": rule.weight_decay,
                                  "lrScale": rule.lr_scale, "warning": f"match {rule.match!r} found no parameter"}
    return out
