"""`model.source: huggingface`: a transformers causal LM, read offline, trained on (x, y).

    model:
      source: huggingface
      contextLength: 512
      huggingface: {path: /models/llama-1b, dtype: bfloat16}      # weights from a volume
      # or: huggingface: {config: {model_type: llama, hidden_size: 256, ...}}  (random init)

The hub is never contacted: HF_HUB_OFFLINE is set before transformers is imported and
every load passes `local_files_only=True`. Only safetensors weights are read (a pickled
`pytorch_model.bin` could run code when loaded). `CausalLMWithLoss` keeps the trainer's
contract: `forward(x, y)` runs the model on `x` and takes the cross-entropy against the
already-shifted targets `y` (ignoring -100), instead of the model's own loss, which would
shift the labels a second time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import HuggingFaceModelConfig, TrainerConfig
from . import IGNORE_INDEX, BuiltModel, ModelError, count_parameters, estimate_flops_per_token

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def offline() -> None:
    """Never reach for the hub (set before transformers reads its settings)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars would garble the JSON log


class CausalLMWithLoss(nn.Module):
    """A causal LM under the trainer's protocol: `loss = m(x, y)`, `logits = m(x)`."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm  # a PreTrainedModel, or a peft PeftModel around one under LoRA

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.lm(input_ids=input_ids, use_cache=False).logits
        if labels is None:
            return logits
        return F.cross_entropy(
            logits.float().view(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE_INDEX
        )


def max_positions(config: Any) -> int | None:
    """The longest sequence the architecture supports (None if it does not say)."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_model_dir(path: Path, field: str) -> None:
    """A local transformers directory with a config.json and safetensors weights."""
    if not path.exists():
        raise ModelError(
            f"{field}: {path} does not exist; mount the volume that holds the model there or fix the path"
        )
    if not (path / "config.json").is_file():
        raise ModelError(f"{field}: {path} has no config.json; point it at a save_pretrained() directory")
    if not any(path.glob("*.safetensors")):
        found = sorted(p.name for p in path.glob("*.bin"))
        extra = f" (found {', '.join(found)}: pickled weights are never loaded)" if found else ""
        raise ModelError(
            f"{field}: {path} has no *.safetensors weights{extra}; convert it with "
            f"save_pretrained(..., safe_serialization=True)"
        )


def load_config(hf: HuggingFaceModelConfig) -> Any:
    """The transformers config named by `path` or built from `config`."""
    offline()
    from transformers import AutoConfig

    if hf.path:
        path = Path(hf.path)
        check_model_dir(path, "model.huggingface.path")
        try:
            return AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=hf.trust_remote_code)
        except (OSError, ValueError, KeyError) as err:
            raise ModelError(f"model.huggingface.path: {path}/config.json cannot be used: {err}") from None
    fields = dict(hf.config or {})
    model_type = fields.pop("model_type")
    try:
        return AutoConfig.for_model(model_type, **fields)
    except (ValueError, KeyError, TypeError) as err:
        raise ModelError(
            f"model.huggingface.config: {err}; model_type must be an architecture this transformers "
            f"knows (llama, gpt2, mistral, qwen2, ...)"
        ) from None


def build(cfg: TrainerConfig) -> BuiltModel:
    hf = cfg.model.huggingface
    assert hf is not None  # the config validator requires it for this source
    config = load_config(hf)
    limit = max_positions(config)
    if limit is not None and cfg.model.context_length > limit:
        raise ModelError(
            f"model.contextLength is {cfg.model.context_length} but the model supports at most {limit} "
            f"positions (max_position_embeddings); set model.contextLength to {limit} or less"
        )
    from transformers import AutoModelForCausalLM

    kwargs = dict(dtype=DTYPES[hf.dtype], attn_implementation=hf.attn_implementation,
                  trust_remote_code=hf.trust_remote_code)
    try:
        if hf.path:
            lm = AutoModelForCausalLM.from_pretrained(
                hf.path, config=config, local_files_only=True, use_safetensors=True, **kwargs
            )
        else:
            lm = AutoModelForCausalLM.from_config(config, **kwargs)
    except (OSError, ValueError, ImportError) as err:
        field = "model.huggingface.path" if hf.path else "model.huggingface.config"
        raise ModelError(f"{field}: cannot build the model: {err}") from None
    lm.config.use_cache = False  # training never reuses past keys/values
    module = CausalLMWithLoss(lm)
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 0)
    width = getattr(config, "hidden_size", None) or getattr(config, "n_embd", 0)
    return BuiltModel(
        module=module,
        source="huggingface",
        vocab_size=int(config.vocab_size),
        flops_per_token=estimate_flops_per_token(
            count_parameters(module), layers, width, cfg.model.context_length
        ),
        hf_config=config,
    )
