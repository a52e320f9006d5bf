"""`model.source: python`: a model built by your own code, named by an entry point.

    model:
      source: python
      contextLength: 256
      python:
        entrypoint: my_models.tiny:build      # importable in the trainer image
        options: {layers: 4}                  # anything your function wants

The protocol (see docs/models.md):

    def build(model: dict) -> torch.nn.Module

`model` is the whole `trainer.model` section as plain data with camelCase keys
(`model["contextLength"]`, `model["python"]["options"]`, ...). The returned module's
`forward(input_ids, labels)` returns the mean loss as a 0-dim tensor: `input_ids` and
`labels` are int64 (batch, contextLength); `labels` are already the next tokens (shifted
by one), and positions where `labels == -100` must not count. Optionally
`forward(input_ids)` (labels omitted) returns logits, and a `vocab_size` attribute bounds
the token ids (else `model.vocabSize`). Initialise parameters in `__init__` from torch's
global generator: the trainer seeds it first, so every rank (and a resumed run) builds
the same weights. For LoRA, name the adapted linear layers in
`finetune.lora.targetModules`.
"""

from __future__ import annotations

import importlib
import sys
import traceback

from torch import nn

from ..config import TrainerConfig
from . import BuiltModel, ModelError, count_parameters

FIELD = "model.python.entrypoint"


def resolve(entrypoint: str):
    """The function `package.module:function` names; ModelError when it cannot be imported."""
    module_name, _, func_name = entrypoint.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # ImportError, or whatever the module raises while importing
        where = traceback.extract_tb(sys.exc_info()[2])[-1]
        raise ModelError(
            f"{FIELD}: cannot import {module_name!r}: {type(err).__name__}: {err} "
            f"(at {where.filename}:{where.lineno}); install the module in the trainer image or "
            f"put its directory on PYTHONPATH"
        ) from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ModelError(
            f"{FIELD}: module {module_name!r} has no function {func_name!r}; "
            f"name a function defined in {getattr(module, '__file__', module_name)}"
        )
    return func


def build(cfg: TrainerConfig) -> BuiltModel:
    assert cfg.model.python is not None  # the config validator requires it for this source
    entrypoint = cfg.model.python.entrypoint
    func = resolve(entrypoint)
    try:
        module = func(cfg.to_dict()["model"])
    except Exception as err:  # building is deterministic: a restart would fail the same way
        where = traceback.extract_tb(sys.exc_info()[2])[-1]
        raise ModelError(
            f"{FIELD}: {entrypoint} raised {type(err).__name__}: {err} (at {where.filename}:"
            f"{where.lineno}); fix the function or the model section it reads (model.python.options)"
        ) from None
    if not isinstance(module, nn.Module):
        raise ModelError(
            f"{FIELD}: {entrypoint} returned {type(module).__name__}, not a "
            f"torch.nn.Module whose forward(input_ids, labels) returns the loss"
        )
    vocab = getattr(module, "vocab_size", None)
    n = count_parameters(module)
    return BuiltModel(
        module=module,
        source="python",
        vocab_size=int(vocab) if isinstance(vocab, int) else cfg.model.vocab_size,
        flops_per_token=6.0 * n,  # no architecture to read the attention term from
    )
