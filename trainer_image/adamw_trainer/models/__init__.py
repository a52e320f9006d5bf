"""Model sources behind one small protocol: `loss = model(input_ids, labels)`.

    built = build_model(cfg)          # cfg: TrainerConfig; picks the module for model.source
    loss = built.module(x, y)         # mean cross-entropy; a 0-dim tensor the trainer backprops
    logits = built.module(x)          # (b, t, vocab), for the gpt and huggingface sources

`x` are token ids (b, t), `y` the next-token targets already shifted by one (`y[:, i]` is
the token after `x[:, i]`), so a source never shifts again. Targets equal to -100
(`IGNORE_INDEX`: masked prompt tokens, padding) are left out of the mean.

One module per source, each with a `build(cfg) -> BuiltModel`:

    gpt.py          model.source: gpt          the built-in GPT-style decoder
    huggingface.py  model.source: huggingface  transformers AutoModelForCausalLM, read offline
    python.py       model.source: python       your entry point `package.module:function`

A source that cannot be built as configured (a path that does not exist, an entry point
that does not import, `contextLength` beyond the model's positions) raises `ModelError`,
which `adamw-train` turns into exit 2 (InvalidConfig): restarting cannot fix it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..config import TrainerConfig

IGNORE_INDEX = -100


class ModelError(ValueError):
    """The model cannot be built as configured; the message names the field and the fix."""


@dataclass
class BuiltModel:
    """What a source hands the trainer."""

    module: nn.Module  # loss = module(input_ids, labels)
    source: str
    vocab_size: int  # token ids must stay below it (the data sources check)
    flops_per_token: float  # training FLOPs per token, for MFU (an estimate)
    hf_config: Any = None  # the transformers config, for the huggingface source (export)


def build_model(cfg: TrainerConfig) -> BuiltModel:
    """Build `cfg.model` with the current torch seed (call `torch.manual_seed` first)."""
    source = importlib.import_module(f".{cfg.model.source}", __name__)
    built = source.build(cfg)
    if not isinstance(built.module, nn.Module):
        raise ModelError(f"model.source {cfg.model.source!r} did not produce an nn.Module")
    if cfg.data.source in ("stdlib", "text") and built.vocab_size < 256:
        # Byte-level data would index past the embedding (on CUDA an unrecoverable assert).
        raise ModelError(
            f"the model's vocabulary has {built.vocab_size} tokens but data.source "
            f"'{cfg.data.source}' is byte-level (ids up to 255); use a tokenized data source"
        )
    return built


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Unique parameters (tied weights counted once); `trainable_only`: requires_grad ones."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def estimate_flops_per_token(n_params: int, layers: int, width: int, context_length: int) -> float:
    """Training FLOPs per token (forward + backward), PaLM appendix B / nanoGPT's estimate."""
    return 6.0 * n_params + 12.0 * layers * width * context_length
