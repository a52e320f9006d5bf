"""A custom model for `model.source: python`: the smallest useful example of the protocol.

    model:
      source: python
      contextLength: 128
      vocabSize: 256
      python:
        entrypoint: tiny_lm:build
        options: {width: 128, layers: 2}

`build(model)` receives the whole `trainer.model` section (camelCase keys) and returns an
`nn.Module` whose `forward(input_ids, labels)` returns the mean next-token loss. `labels`
are already shifted by one (labels[:, i] is the token after input_ids[:, i]); positions
where labels == -100 do not count. `forward(input_ids)` alone returns logits. The layers
named `qkv`, `proj`, `up` and `down` are plain nn.Linear, so `finetune.lora.targetModules`
can name them. See docs/models.md; Dockerfile (next to this package) adds it to the
trainer image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.RMSNorm(width)
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)
        self.norm2 = nn.RMSNorm(width)
        self.up = nn.Linear(width, 4 * width, bias=False)
        self.down = nn.Linear(4 * width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.down(F.silu(self.up(self.norm2(x))))


class TinyLM(nn.Module):
    def __init__(self, vocab_size: int, context_length: int, width: int, layers: int, heads: int):
        super().__init__()
        self.vocab_size = vocab_size  # the trainer reads it to bound token ids
        self.embed = nn.Embedding(vocab_size, width)
        self.pos = nn.Embedding(context_length, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.norm = nn.RMSNorm(width)
        self.head = nn.Linear(width, vocab_size, bias=False)
        for p in self.parameters():  # the trainer seeded torch: every rank builds the same weights
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.embed(input_ids) + self.pos(pos)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.norm(x))
        if labels is None:
            return logits
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)


def build(model: dict) -> nn.Module:
    """The entry point: `trainer.model` as a dict in, the module out."""
    options = model["python"].get("options", {})
    return TinyLM(
        vocab_size=model["vocabSize"],
        context_length=model["contextLength"],
        width=int(options.get("width", 128)),
        layers=int(options.get("layers", 2)),
        heads=int(options.get("heads", 4)),
    )
