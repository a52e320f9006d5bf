"""`adamw-train export`: a checkpoint as a Hugging Face directory, loadable offline.

    adamw-train export --checkpoint checkpoints/step-400 --out exported/
    adamw-train export --checkpoint checkpoints --out merged/ --merge     # newest valid step
    adamw-train export --checkpoint checkpoints/best --out best/             # lowest validation loss

The checkpoint's `config.json` (the resolved trainer config) says how to rebuild the
model; the model is rebuilt exactly as the trainer built it (same seed, `initFrom`, LoRA)
and the checkpoint's weights loaded into it (`torch.load(weights_only=True)`, after the
manifest's sha256 check). What is written:

    model.source huggingface    config.json + model.safetensors (save_pretrained)
      under LoRA, --merge       the same, with the adapters merged into the base weights
      under LoRA, no --merge    peft's adapter_config.json + adapter_model.safetensors; a base
                                with no directory of its own (random init, or initFrom a
                                checkpoint) is written to OUT/base and named by the adapter
    model.source gpt            a GPT-2 directory (GPT2LMHeadModel, exact GELU, zero biases
                                where the GPT has none): the same function, same logits
    model.source python         not exportable (your module has no Hugging Face class)

plus the tokenizer (`data.tokenizer.path`, else `model.huggingface.path`, else a Hugging
Face `finetune.initFrom`) when one is found. `AutoModelForCausalLM.from_pretrained(OUT,
local_files_only=True)` then gives the training model's logits (tests/trainer/test_export.py:
within 1e-5 in float32; merged LoRA weights round differently from W x + B A x, within 1e-4).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint.payload import CONFIG_FILE, load_model_file, load_model_state
from .checkpoint.store import BEST_ALIAS, CheckpointError, CheckpointStore
from .config import ConfigError, TrainerConfig, load_config, parse_config
from .exit_codes import ExitCode
from .finetune import checkpoint_step_dir
from .finetune import prepare as prepare_finetune
from .models import BuiltModel, ModelError, build_model
from .models.huggingface import offline

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


class ExportError(ValueError):
    """The checkpoint cannot be exported; the message says why and what to do."""


def rebuild(step_dir: Path, cfg: TrainerConfig) -> BuiltModel:
    """The training model of `cfg` on CPU, holding the weights of the checkpoint at `step_dir`."""
    t = cfg.training
    torch.manual_seed(t.seed)  # the trainer's order: seeds, build, initFrom, LoRA
    random.seed(t.seed)
    np.random.seed(t.seed)
    built = build_model(cfg)
    prepare_finetune(built, cfg)
    info = CheckpointStore(step_dir.parent).verify(int(step_dir.name.removeprefix("step-")))
    load_model_state(built.module, load_model_file(info))
    built.module.eval()
    return built


def checkpoint_config(step_dir: Path, override: Path | None) -> TrainerConfig:
    if override is not None:
        return load_config(override)
    path = step_dir / CONFIG_FILE
    if not path.is_file():
        raise ExportError(
            f"{step_dir} has no {CONFIG_FILE} (saved by an older trainer); pass the run's "
            f"config with --config FILE"
        )
    return parse_config(json.loads(path.read_text()), source=str(path))


def gpt_to_gpt2(built: BuiltModel, cfg: TrainerConfig):
    """The built-in GPT as a transformers GPT2LMHeadModel computing the same function."""
    from transformers import GPT2Config, GPT2LMHeadModel

    m = cfg.model
    hf_cfg = GPT2Config(
        vocab_size=m.vocab_size, n_positions=m.context_length, n_embd=m.width, n_layer=m.layers,
        n_head=m.heads, activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        layer_norm_epsilon=1e-5, tie_word_embeddings=True, bos_token_id=None, eos_token_id=None,
    )
    gpt2 = GPT2LMHeadModel(hf_cfg)
    src = built.module.state_dict()

    def bias(name: str, size: int) -> torch.Tensor:
        return src.get(name, torch.zeros(size))

    dst: dict[str, torch.Tensor] = {
        "transformer.wte.weight": src["tok_emb.weight"],
        "transformer.wpe.weight": src["pos_emb.weight"],
        "transformer.ln_f.weight": src["ln_f.weight"],
        "transformer.ln_f.bias": bias("ln_f.bias", m.width),
        "lm_head.weight": src["tok_emb.weight"],
    }
    # GPT-2's Conv1D holds weights as (in, out): nn.Linear's transposed.
    pairs = {"ln1": "ln_1", "ln2": "ln_2", "attn.qkv": "attn.c_attn", "attn.proj": "attn.c_proj",
             "mlp.fc": "mlp.c_fc", "mlp.proj": "mlp.c_proj"}
    for i in range(m.layers):
        for ours, theirs in pairs.items():
            w = src[f"blocks.{i}.{ours}.weight"]
            dst[f"transformer.h.{i}.{theirs}.weight"] = w if ours.startswith("ln") else w.t().contiguous()
            out_size = w.shape[0]
            dst[f"transformer.h.{i}.{theirs}.bias"] = bias(f"blocks.{i}.{ours}.bias", out_size)
    missing, unexpected = gpt2.load_state_dict(dst, strict=False)
    missing = [k for k in missing if not k.endswith(".attn.bias") and not k.endswith(".attn.masked_bias")]
    if missing or unexpected:
        raise ExportError(f"GPT -> GPT-2 mapping incomplete: missing {missing}, unexpected {unexpected}")
    return gpt2


def tokenizer_dir(cfg: TrainerConfig) -> Path | None:
    """The tokenizer the run used, when one is known and on disk."""
    candidates = []
    tok = getattr(cfg.data, "tokenizer", None)
    if tok is not None and getattr(tok, "path", None):
        candidates.append(Path(tok.path))
    if cfg.model.huggingface is not None and cfg.model.huggingface.path:
        candidates.append(Path(cfg.model.huggingface.path))
    if cfg.finetune.init_from:
        candidates.append(Path(cfg.finetune.init_from))
    for path in candidates:
        if any((path / name).is_file() for name in TOKENIZER_FILES):
            return path
    return None


def export(checkpoint: Path, out: Path, *, merge: bool = False, config: Path | None = None) -> dict[str, Any]:
    """Write the Hugging Face directory; returns what was written (for the log line)."""
    offline()
    if not checkpoint.exists() and not (checkpoint.name == BEST_ALIAS and checkpoint.parent.is_dir()):
        raise ExportError(f"--checkpoint {checkpoint} does not exist")
    step_dir = checkpoint_step_dir(checkpoint)
    if step_dir is None:
        raise ExportError(f"--checkpoint {checkpoint} is neither a step-N folder nor a directory of them")
    cfg = checkpoint_config(step_dir, config)
    lora = cfg.finetune.lora is not None
    if cfg.model.source == "python":
        raise ExportError(
            "model.source python has no Hugging Face class to export to; its weights are "
            f"{step_dir}/model.pt (torch.load(..., weights_only=True))"
        )
    if merge and not lora:
        raise ExportError("--merge merges LoRA adapters, and this run has no finetune.lora; drop --merge")
    built = rebuild(step_dir, cfg)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Any] = {"checkpoint": str(step_dir), "out": str(out), "source": cfg.model.source}
    if cfg.model.source == "gpt":
        gpt_to_gpt2(built, cfg).save_pretrained(out)
        written["format"] = "gpt2"
    elif lora and merge:
        built.module.lm.merge_and_unload().save_pretrained(out)
        written["format"] = "merged"
    elif lora:
        peft_model = built.module.lm
        base = base_model_dir(cfg)
        base_dir = out / "base"
        peft_model.peft_config["default"].base_model_name_or_path = str(base or base_dir.resolve())
        if base is None:
            peft_model.get_base_model().config.save_pretrained(base_dir)  # peft reads it while saving
        peft_model.save_pretrained(out)
        if base is None:  # no directory holds the frozen base: write it next to the adapter
            peft_model.unload().save_pretrained(base_dir)
            written["base"] = str(base_dir)
        written["format"] = "peft-adapter"
        written["baseModel"] = peft_model.peft_config["default"].base_model_name_or_path
    else:
        built.module.lm.save_pretrained(out)
        written["format"] = "full"
    tok = tokenizer_dir(cfg)
    if tok is not None:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(tok, local_files_only=True).save_pretrained(out)
        written["tokenizer"] = str(tok)
    return written


def base_model_dir(cfg: TrainerConfig) -> str | None:
    """A Hugging Face directory holding the frozen base as trained on, if there is one."""
    init = cfg.finetune.init_from
    if init:
        p = Path(init)
        return init if p.is_dir() and checkpoint_step_dir(p) is None else None
    hf = cfg.model.huggingface
    return hf.path if hf is not None and hf.path else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="adamw-train export",
        description="Write a checkpoint as a Hugging Face directory (config, safetensors, tokenizer).",
    )
    p.add_argument("--checkpoint", required=True, type=Path, help="a step-N folder, a checkpoint dir (newest valid), or DIR/best (lowest validation loss)")
    p.add_argument("--out", required=True, type=Path, help="directory to write")
    p.add_argument("--merge", action="store_true", help="merge LoRA adapters into the base weights")
    p.add_argument("--config", type=Path, help="the run's trainer config (when the checkpoint has none)")
    args = p.parse_args(argv)
    try:
        written = export(args.checkpoint, args.out, merge=args.merge, config=args.config)
    except (ExportError, ConfigError, ModelError, CheckpointError) as err:
        print(f"adamw-train export: {err}", file=sys.stderr)
        return int(ExitCode.INVALID_CONFIG)
    print(json.dumps({"event": "exported", **written}), flush=True)
    return 0
