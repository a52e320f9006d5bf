"""`trainer.finetune`: starting weights (`initFrom`) and LoRA adapters (`lora`, through peft).

    finetune:
      initFrom: /models/base              # a Hugging Face directory (safetensors), or
      # initFrom: /checkpoints/pretrain/step-20000   this trainer's checkpoint (or its dir, or
      #                                            its dir + /best: lowest validation loss)
      lora: {rank: 16, alpha: 32, dropout: 0.05, targetModules: [q_proj, v_proj]}

`prepare(built, cfg)` runs at every start, before a resume: `initFrom` weights are loaded
into the freshly built model, then LoRA adapters are added and everything else frozen
(`requires_grad=False`, so the frozen base never enters the optimizer). A resumed LoRA
run rebuilds the same frozen base this way and takes only the adapters (and their AdamW
moments) from its checkpoint (`checkpoint/payload.py`). Nothing here unpickles: weights
come from safetensors or `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from .checkpoint.payload import MODEL_FILE, load_model_file
from .checkpoint.store import BEST_ALIAS, MANIFEST, CheckpointError, CheckpointStore
from .config import LoraConfig, TrainerConfig
from .models import BuiltModel, ModelError

INIT_FIELD = "finetune.initFrom"


def prepare(built: BuiltModel, cfg: TrainerConfig) -> None:
    """Apply `cfg.finetune` to a freshly built model, in place."""
    ft = cfg.finetune
    if ft.init_from:
        load_init_weights(built, Path(ft.init_from))
    if ft.lora is not None:
        apply_lora(built, ft.lora)


def lora_host(built: BuiltModel) -> nn.Module:
    """The module whose layers get adapters (and whose parameter names a HF directory uses)."""
    return built.module.lm if built.source == "huggingface" else built.module


# ----- initFrom -----------------------------------------------------------------------


def checkpoint_step_dir(path: Path) -> Path | None:
    """A `step-N` folder for `path` (itself, the newest valid one under it, or for `<dir>/best`
    the best one of `<dir>`); None if not a checkpoint."""
    if (path / MANIFEST).is_file():
        return path
    if path.name == BEST_ALIAS and not path.exists() and CheckpointStore(path.parent).steps():
        best = CheckpointStore(path.parent).best()
        if best is None:
            raise ModelError(
                f"{INIT_FIELD}: {path.parent} has no best checkpoint (none was saved at an "
                "evaluation with a finite validation loss); name a step-N folder instead"
            )
        return best.path
    store = CheckpointStore(path)
    if not store.steps():
        return None
    info = store.newest_valid()
    if info is None:
        raise ModelError(f"{INIT_FIELD}: {path} holds step-N folders but none verifies against its manifest")
    return info.path


def read_checkpoint_model(step_dir: Path) -> dict[str, torch.Tensor]:
    """model.pt of a verified checkpoint folder (sha256 checked, loaded with weights_only)."""
    try:
        step = int(step_dir.name.removeprefix("step-"))
        info = CheckpointStore(step_dir.parent).verify(step)
        return load_model_file(info)
    except (ValueError, CheckpointError) as err:
        raise ModelError(f"{INIT_FIELD}: {step_dir} cannot be used: {err}") from None


def read_safetensors_dir(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        state.update(load_file(file))
    return state


def load_weights(target: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Copy `state` into `target`; every parameter must be covered (tied copies count)."""
    try:
        missing, unexpected = target.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ModelError(f"{INIT_FIELD}: {where} does not fit the model: {err}") from None
    params = dict(target.named_parameters(remove_duplicate=False))
    loaded = {id(params[k]) for k in state if k in params}
    missing = [k for k in missing if not (k in params and id(params[k]) in loaded)]
    if unexpected or missing:
        raise ModelError(
            f"{INIT_FIELD}: {where} does not fit the model: missing {missing[:5]}, unexpected "
            f"{list(unexpected)[:5]}; it must hold weights of the same architecture as model.*"
        )


def load_init_weights(built: BuiltModel, path: Path) -> None:
    if not path.exists():
        raise ModelError(f"{INIT_FIELD}: {path} does not exist; mount the volume that holds it or fix the path")
    step_dir = checkpoint_step_dir(path) if path.is_dir() else None
    if step_dir is not None:
        state = read_checkpoint_model(step_dir)
        own = set(built.module.state_dict())
        if set(state) < own:
            raise ModelError(
                f"{INIT_FIELD}: {step_dir} holds only trainable (LoRA adapter) weights; start from "
                f"`adamw-train export --merge` of it instead"
            )
        load_weights(built.module, state, str(step_dir / MODEL_FILE))
    elif path.is_dir() and any(path.glob("*.safetensors")):
        load_weights(lora_host(built), read_safetensors_dir(path), str(path))
    else:
        raise ModelError(
            f"{INIT_FIELD}: {path} is neither a Hugging Face directory (*.safetensors) nor a checkpoint "
            f"(step-N folders with {MANIFEST}); point it at one"
        )


# ----- LoRA ---------------------------------------------------------------------------


def peft_config(lora: LoraConfig, *, causal_lm: bool):
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules) if lora.target_modules else None,
        bias="none",
        task_type="CAUSAL_LM" if causal_lm else None,
    )


def apply_lora(built: BuiltModel, lora: LoraConfig) -> None:
    """Add adapters; freeze every other parameter."""
    field = "finetune.lora.targetModules"
    with warnings.catch_warnings():
        # peft asks transformers a deprecated question on every wrap (a FutureWarning per start).
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        _inject(built, lora, field)
    for name, p in built.module.named_parameters():
        p.requires_grad_("lora_" in name)
    if not any(p.requires_grad for p in built.module.parameters()):
        raise ModelError(f"{field}: no layer got an adapter; name layers the model has")


def _inject(built: BuiltModel, lora: LoraConfig, field: str) -> None:
    from peft import get_peft_model, inject_adapter_in_model

    try:
        if built.source == "huggingface":
            built.module.lm = get_peft_model(built.module.lm, peft_config(lora, causal_lm=True))
        else:
            if not lora.target_modules:
                raise ModelError(
                    f"{field} is required for model.source {built.source!r}: name the linear layers "
                    f"that get adapters (e.g. [qkv, proj])"
                )
            inject_adapter_in_model(peft_config(lora, causal_lm=False), built.module)
    except ValueError as err:
        if isinstance(err, ModelError):
            raise
        raise ModelError(f"{field}: {err}") from None
