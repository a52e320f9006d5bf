"""AdamW parameter groups: each rule's effect shown through the real fused step."""

from __future__ import annotations

import pytest
import torch
from adamw_trainer.config import ConfigError, ModelConfig, OptimizerConfig, parse_config
from adamw_trainer.metrics import TrainerMetrics
from adamw_trainer.optim import GuardedAdamW, describe_groups, param_groups, resolve_groups
from torch import nn

torch.set_num_threads(1)

LR = 0.1


class Tiny(nn.Module):
    """Named like a real decoder: an embedding, numbered layers with norms and biases, LoRA adapters."""

    def __init__(self, layers: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(11, 4)
        self.layers = nn.ModuleList(
            nn.ModuleDict({"norm": nn.LayerNorm(4), "proj": nn.Linear(4, 4)}) for _ in range(layers)
        )
        self.lora_A = nn.Linear(4, 2, bias=False)  # what peft names `...lora_A.default.weight`
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)
        self.head = nn.Linear(4, 11, bias=False)
        with torch.no_grad():  # no zeros or ones: a decayed 0 or an unmoved 1 would hide a bug
            for p in self.parameters():
                p.copy_(torch.rand_like(p) + 0.5)


def zero_grad_step(model: nn.Module, cfg: OptimizerConfig) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """One real GuardedAdamW step with all-zero gradients; (before, after) per parameter name.

    With a zero gradient Adam's update is 0 / (0 + eps) = 0, so only decoupled weight
    decay moves a parameter: p <- p * (1 - lr * lrScale * weightDecay).
    """
    opt = GuardedAdamW(param_groups(model, cfg), cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in opt.params:
        p.grad = torch.zeros_like(p)
    opt.step()
    return {n: (before[n], p.detach()) for n, p in model.named_parameters()}


def shrink(before: torch.Tensor, after: torch.Tensor) -> float:
    return float(1.0 - (after / before).mean())


def groups_by_param(model: nn.Module, cfg: OptimizerConfig) -> dict[str, str]:
    return {n: g.name for g in resolve_groups(model, cfg) for n in g.names}


def test_each_group_shrinks_by_exactly_lr_times_its_weight_decay():
    cfg = OptimizerConfig(
        lr=LR, weight_decay=0.3, grad_clip_norm=0.0,
        groups=[{"name": "embeddings", "match": r"^embed\.", "weightDecay": 0.05},
                {"name": "head", "match": r"^head\.", "weightDecay": 0.7}],
        no_decay=["bias", "norm"], lora_group={"weightDecay": 0.2},
    )
    moved = zero_grad_step(Tiny(), cfg)
    expected = {"embed.weight": 0.05, "head.weight": 0.7, "lora_A.weight": 0.2,
                "layers.0.proj.weight": 0.3, "layers.2.proj.weight": 0.3,
                "layers.0.proj.bias": 0.0, "layers.1.norm.weight": 0.0, "layers.1.norm.bias": 0.0}
    for name, wd in expected.items():
        before, after = moved[name]
        torch.testing.assert_close(after, before * (1 - LR * wd), rtol=0, atol=1e-7, msg=name)
    for name in ("frozen.weight", "frozen.bias"):
        assert torch.equal(*moved[name]), f"{name} is frozen but moved"


def test_lr_scale_scales_the_update():
    # A real gradient: the first Adam step moves each element by about lr * lrScale
    # (m_hat / sqrt(v_hat) = sign(g) at step 1), decay off.
    cfg = OptimizerConfig(lr=1e-2, weight_decay=0.0, grad_clip_norm=0.0,
                          groups=[{"name": "slow", "match": r"^layers\.0\.", "lrScale": 0.25}])
    model = Tiny()
    opt = GuardedAdamW(param_groups(model, cfg), cfg)
    opt.set_lr(1e-2)  # what the trainer does every step
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in opt.params:
        p.grad = torch.ones_like(p)
    opt.step()
    after = dict(model.named_parameters())
    slow = (before["layers.0.proj.weight"] - after["layers.0.proj.weight"]).mean().item()
    full = (before["layers.1.proj.weight"] - after["layers.1.proj.weight"]).mean().item()
    assert full == pytest.approx(1e-2, rel=1e-4)
    assert slow == pytest.approx(0.25e-2, rel=1e-4)
    lrs = {g["name"]: g["lr"] for g in opt.optimizer.param_groups}
    assert lrs["slow"] == pytest.approx(0.25e-2) and lrs["decay"] == pytest.approx(1e-2)


def test_frozen_parameters_never_enter_the_optimizer():
    model = Tiny()
    opt = GuardedAdamW(param_groups(model, OptimizerConfig()), OptimizerConfig())
    in_opt = {id(p) for g in opt.optimizer.param_groups for p in g["params"]}
    assert id(model.frozen.weight) not in in_opt and id(model.frozen.bias) not in in_opt
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert in_opt == {id(p) for p in trainable} and len(opt.params) == len(trainable)


def test_first_matching_rule_wins_and_the_rest_fall_to_the_default():
    cfg = OptimizerConfig(groups=[{"name": "first", "match": r"proj"}, {"name": "second", "match": r"layers\.1"}])
    where = groups_by_param(Tiny(), cfg)
    assert where["layers.1.proj.weight"] == "first"  # both match: the earlier rule
    assert where["layers.1.norm.weight"] == "second"
    # Default rule (decay: matrices): 2+-D decays, 1-D does not; LoRA has its own group.
    assert where["embed.weight"] == "decay" and where["head.weight"] == "decay"
    assert where["layers.0.norm.bias"] == "no_decay"
    assert where["lora_A.weight"] == "lora"
    assert "frozen.weight" not in where


def test_no_decay_embedding_preset_and_tied_weights():
    from adamw_trainer.model import GPT

    model = GPT(ModelConfig(layers=2, heads=2, width=16, context_length=8))
    groups = resolve_groups(model, OptimizerConfig(no_decay=["embedding"]))
    where = {n: g.name for g in groups for n in g.names}
    assert where["tok_emb.weight"] == "no_decay" and where["pos_emb.weight"] == "no_decay"
    assert where["blocks.0.attn.qkv.weight"] == "decay"
    # The head is tied to the token embedding: one parameter, in one group, once.
    ids = [id(p) for g in groups for p in g.params]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))


def test_layerwise_lr_decay_scales_by_depth():
    f = 0.5
    groups = resolve_groups(Tiny(layers=3), OptimizerConfig(layerwise_lr_decay=f))
    scale = {n: g.lr_scale for g in groups for n in g.names}
    # L = 3 layers: layer N gets f^(3 - N), embeddings f^4, the head (after the layers) 1.
    assert scale["layers.2.proj.weight"] == f
    assert scale["layers.1.proj.weight"] == f**2
    assert scale["layers.0.norm.bias"] == f**3
    assert scale["embed.weight"] == f**4
    assert scale["head.weight"] == 1.0
    names = [g.name for g in groups]
    assert "decay.depth1" in names and "no_decay.depth3" in names
    assert len(names) == len(set(names))


def test_bad_regex_is_a_config_error_naming_the_field():
    with pytest.raises(ConfigError, match=r"optimizer\.groups\[1\]\.match: not a valid regular expression"):
        parse_config({"optimizer": {"groups": [{"name": "ok", "match": "a"}, {"name": "bad", "match": "(["}]}})
    with pytest.raises(ConfigError, match=r"optimizer\.groups.*already taken"):
        parse_config({"optimizer": {"groups": [{"name": "decay", "match": "a"}]}})


def test_resolved_groups_are_described_and_exported():
    cfg = OptimizerConfig(lr=LR, groups=[{"name": "head", "match": "^head", "lrScale": 2.0},
                                         {"name": "typo", "match": "^nothing"}])
    model = Tiny()
    opt = GuardedAdamW(param_groups(model, cfg), cfg)
    groups = opt.optimizer.param_groups
    described = describe_groups(groups, cfg)
    assert described["head"] == {"tensors": 1, "parameters": 44, "weightDecay": 0.1, "lrScale": 2.0}
    assert described["typo"]["tensors"] == 0 and "found no parameter" in described["typo"]["warning"]
    metrics = TrainerMetrics(rank=0)
    metrics.set_param_groups(groups)
    opt.set_lr(0.01)
    metrics.set_group_learning_rates(groups)
    text = metrics.exposition().decode()
    assert 'adamw_param_group_parameters{group="head",rank="0"} 44.0' in text
    assert 'adamw_param_group_learning_rate{group="head",rank="0"} 0.02' in text
    assert 'adamw_param_group_learning_rate{group="decay",rank="0"} 0.01' in text


def test_checkpointed_state_keeps_the_configs_group_settings():
    cfg = OptimizerConfig(groups=[{"name": "head", "match": "^head", "weightDecay": 0.5}])
    model = Tiny()
    saved = GuardedAdamW(param_groups(model, cfg), cfg).state_dict()
    changed = cfg.model_copy(update={"groups": [cfg.groups[0].model_copy(update={"weight_decay": 0.9})]})
    opt = GuardedAdamW(param_groups(model, changed), changed)
    opt.load_state_dict(saved)
    assert {g["name"]: g["weight_decay"] for g in opt.optimizer.param_groups}["head"] == 0.9
