"""The GPT: causal, tied embeddings, and the expected loss at initialisation."""

from __future__ import annotations

import math

import torch
from adamw_trainer.config import ModelConfig
from adamw_trainer.model import GPT, count_parameters

torch.set_num_threads(1)


def test_attention_is_causal():
    torch.manual_seed(0)
    model = GPT(ModelConfig(layers=2, heads=2, width=32, context_length=16)).eval()
    x = torch.randint(0, 256, (1, 16))
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 1) % 256  # change only the future
    with torch.no_grad():
        a, b = model(x), model(y)
    assert torch.allclose(a[0, :10], b[0, :10], atol=1e-6)
    assert not torch.allclose(a[0, 10:], b[0, 10:])


def test_embeddings_are_tied_and_counted_once():
    cfg = ModelConfig(layers=1, heads=2, width=32, context_length=16)
    model = GPT(cfg)
    assert model.head.weight is model.tok_emb.weight
    untied = sum(p.numel() for p in model.state_dict().values())
    assert count_parameters(model) == untied - 256 * 32


def test_initial_loss_is_near_uniform():
    torch.manual_seed(0)
    model = GPT(ModelConfig(layers=2, heads=2, width=64, context_length=32))
    x = torch.randint(0, 256, (8, 32))
    targets = torch.randint(0, 256, (8, 32))
    loss = model(x, targets).item()
    assert abs(loss - math.log(256)) < 0.3
