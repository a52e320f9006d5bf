"""The trainer's typed configuration: one source of truth for the trainer, the CRD and the docs.

This module imports neither torch nor kopf: the operator embeds `TrainerConfig` in the
AdamWTrainingJob `spec.trainer` and generates the CRD's OpenAPI schema from it.

Field names are snake_case in Python and camelCase in YAML/JSON (Kubernetes style):

    model: {layers: 4, heads: 4, width: 256, contextLength: 128}
    optimizer: {lr: 3.0e-4, weightDecay: 0.1}

`load_config(path)` reads YAML or JSON and raises `ConfigError` with one line per
problem, each naming the field (camelCase path) and how to fix it.

Version skew (docs/operator.md, "Version skew"): `CONFIG_SCHEMA_VERSION` is the config schema
this trainer reads (the image label `io.adamw.trainer.config-schema` and `/status` carry it);
every field added after version 1 is listed in `FIELD_SCHEMA_VERSIONS` with the version that
introduced it, so an operator can tell which fields an older image cannot read. A field
added later defaults to the behaviour from before it existed, and an existing field's
default never changes (the operator leaves defaults to the trainer).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

CONFIG_SCHEMA_VERSION = 1
"""The trainer config schema this trainer reads. Adding a field: bump it, and list the field
in FIELD_SCHEMA_VERSIONS with the new number (tests/trainer/test_config_skew.py checks both)."""

FIELD_SCHEMA_VERSIONS: dict[str, int] = {}
"""camelCase path of each field added after schema 1 -> the schema version that added it.

A whole new section is listed by its own path (`profiling`); a field in a list of models
without the index (`optimizer.groups.fooBar`). Fields not listed are in schema 1."""


def introduced_in(path: str, registry: dict[str, int] | None = None) -> int:
    """The config schema that added the field at `path` (`training.fooBar`, `a.b[0].c`), or
    the section above it, whichever is newest; 1 for fields every trainer reads."""
    registry = FIELD_SCHEMA_VERSIONS if registry is None else registry
    parts = re.sub(r"\[\d+\]", "", path).split(".")
    return max([1, *(registry.get(".".join(parts[:n]), 1) for n in range(1, len(parts) + 1))])


class CamelModel(BaseModel):
    """Base for config groups and the job spec's models: camelCase aliases, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_assignment=True,
    )


class HuggingFaceModelConfig(CamelModel):
    """A `transformers` causal LM (`AutoModelForCausalLM`), read offline: never from the hub."""

    path: str | None = Field(
        None,
        description="Local directory holding the model's `config.json` and `*.safetensors` weights "
        "(on a cluster, a mounted volume). Read with `local_files_only`; pickled `.bin` weights are "
        "refused.",
    )
    config: dict[str, Any] | None = Field(
        None,
        description="Instead of `path`: config fields of a known architecture, `model_type` included "
        "(e.g. {model_type: llama, hidden_size: 512, ...}), for a randomly initialised model (seeded "
        "by `training.seed`).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32",
        description="Dtype the weights are held in. `float32` to train them (mixed precision comes "
        "from `training.precision` autocast); `bfloat16`/`float16` only under `finetune.lora`, for the "
        "frozen base (half the memory; the adapters stay float32).",
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        "sdpa",
        description="Attention kernel: `sdpa` (torch scaled_dot_product_attention), `eager`, or "
        "`flash_attention_2` (needs the flash-attn package in the image).",
    )
    trust_remote_code: bool = Field(
        False,
        description="Run Python code shipped inside the model directory (custom architectures). Only "
        "for directories you trust.",
    )

    @model_validator(mode="after")
    def _path_or_config(self) -> HuggingFaceModelConfig:
        if not self.path and not self.config:
            raise ValueError(
                "model.huggingface needs `path` (a local model directory) or `config` (fields of a "
                "known architecture, with model_type); set one"
            )
        if self.path and self.config:
            raise ValueError("model.huggingface: set either `path` or `config`, not both")
        if self.config is not None and not isinstance(self.config.get("model_type"), str):
            raise ValueError(
                "model.huggingface.config needs `model_type` (e.g. llama, gpt2) to pick the architecture"
            )
        return self


_ENTRYPOINT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


class PythonModelConfig(CamelModel):
    """A model from the user's own Python code (see docs/models.md for the protocol)."""

    entrypoint: str = Field(
        ...,
        json_schema_extra={"pattern": _ENTRYPOINT.pattern},
        description="`package.module:function`, importable in the trainer image. The function gets "
        "the whole `model` section as a dict (camelCase keys) and returns a torch `nn.Module` whose "
        "`forward(input_ids, labels)` returns the mean loss (labels equal to -100 ignored).",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Free-form settings passed to the entry point as `model['python']['options']`.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )

    @field_validator("entrypoint")
    @classmethod
    def _entrypoint_form(cls, value: str) -> str:
        if not _ENTRYPOINT.match(value):
            raise ValueError(
                "must be `package.module:function` (a dotted module path, a colon, a function "
                "name), e.g. my_models.tiny:build"
            )
        return value


class ModelConfig(CamelModel):
    """The model to train: the built-in GPT (default), a Hugging Face model, or your own code.

    `layers`, `heads`, `width`, `vocabSize`, `dropout` and `bias` shape the built-in GPT only;
    `contextLength` is the training sequence length for every source.
    """

    source: Literal["gpt", "huggingface", "python"] = Field(
        "gpt",
        description="`gpt`: the built-in GPT-style decoder shaped by the fields below; "
        "`huggingface`: a transformers causal LM (`model.huggingface`); `python`: a module built by "
        "your own entry point (`model.python`).",
    )
    huggingface: HuggingFaceModelConfig | None = Field(
        None, description="The Hugging Face model, for `source: huggingface`."
    )
    python: PythonModelConfig | None = Field(
        None, description="The Python entry point, for `source: python`."
    )
    layers: int = Field(4, ge=1, le=256, description="Number of transformer blocks (built-in GPT).")
    heads: int = Field(
        4, ge=1, le=256, description="Attention heads per block; must divide `width` (built-in GPT)."
    )
    width: int = Field(256, ge=8, le=65536, description="Embedding width, d_model (built-in GPT).")
    context_length: int = Field(
        128,
        ge=2,
        le=131072,
        description="Tokens per training sequence, for every source (for Hugging Face models at most "
        "the model's maximum positions).",
    )
    vocab_size: int = Field(
        256,
        ge=2,
        le=1_048_576,
        description="Vocabulary size of the built-in GPT (Hugging Face models bring their own). "
        "Byte-level text sources need 256; `tokens` sources must cover every token id in the files.",
    )
    dropout: float = Field(
        0.0, ge=0.0, lt=1.0, description="Dropout probability (0 disables it; built-in GPT)."
    )
    bias: bool = Field(False, description="Use bias terms in linear and LayerNorm layers (built-in GPT).")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelConfig:
        if self.width % self.heads != 0:
            raise ValueError(
                f"width ({self.width}) must be divisible by heads ({self.heads}); "
                f"pick width as a multiple of heads, e.g. {self.heads * -(-self.width // self.heads)}"
            )
        return self

    @model_validator(mode="after")
    def _source_section(self) -> ModelConfig:
        if self.source == "huggingface" and self.huggingface is None:
            raise ValueError(
                "model.huggingface is required when model.source is 'huggingface'; give it a `path` "
                "or a `config`"
            )
        if self.source == "python" and self.python is None:
            raise ValueError(
                "model.python is required when model.source is 'python'; give it an `entrypoint` "
                "(package.module:function)"
            )
        return self


class LoraConfig(CamelModel):
    """Low-rank adapters (LoRA, through `peft`): the base weights stay frozen."""

    rank: int = Field(8, ge=1, le=4096, description="Rank r of each adapter's A (r x in) and B (out x r).")
    alpha: float = Field(
        16.0, gt=0.0, le=1_000_000.0, description="Scaling numerator: updates are scaled by alpha / rank."
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the adapters' input.")
    target_modules: list[str] | None = Field(
        None,
        min_length=1,
        description="Names (or name suffixes) of the linear layers that get adapters, e.g. [q_proj, "
        "v_proj]. Omitted: peft's default for the Hugging Face architecture; required for `python` "
        "models.",
    )


class FinetuneConfig(CamelModel):
    """Start from existing weights, and optionally train only LoRA adapters."""

    init_from: str | None = Field(
        None,
        description="Starting weights: a Hugging Face model directory (safetensors) or one of this "
        "trainer's checkpoints (a `step-N` folder, or a checkpoint directory: its newest valid "
        "step). Unlike resume it starts a new run: loaded at every start, before the run's own "
        "newest checkpoint (if any) is resumed on top (under LoRA it is the frozen base).",
    )
    lora: LoraConfig | None = Field(
        None,
        description="Train LoRA adapters only; checkpoints then hold just the adapters and their AdamW "
        "state. Needs `model.source` huggingface or python.",
    )


TOKENIZED_SOURCES = ("jsonl", "parquet", "hfDisk")
"""Data sources read as documents and tokenized with a Hugging Face tokenizer (the token cache)."""


class TokenizerConfig(CamelModel):
    """The Hugging Face tokenizer for `jsonl`, `parquet` and `hfDisk` data, loaded offline."""

    path: str | None = Field(
        None,
        description="A Hugging Face tokenizer directory (what `save_pretrained` writes, e.g. "
        "tokenizer.json and tokenizer_config.json), read offline with no hub access. Needed by "
        "the `jsonl`, `parquet` and `hfDisk` sources; defaults to `model.huggingface.path`.",
    )


class DataConfig(CamelModel):
    """Where training batches come from. Batches are a pure function of (seed, step, rank)."""

    source: Literal["stdlib", "text", "tokens", "synthetic", "jsonl", "parquet", "hfDisk"] = Field(
        "stdlib",
        description="`stdlib`: the Python standard library's own .py files as bytes (offline "
        "quickstart corpus); `text`: a text file or directory of text files, tokenized as bytes; "
        "`tokens`: nanoGPT-format uint16 .bin files; `synthetic`: generated arithmetic sequences "
        "(learnable, no files) for smoke tests; `jsonl`, `parquet`: a file or a directory of "
        "*.jsonl / *.parquet files, one document per record; `hfDisk`: a directory written by "
        "`datasets.Dataset.save_to_disk` (its `train` split if it holds several). The last three "
        "are tokenized with `tokenizer`, joined with EOS and packed into `model.contextLength` "
        "blocks, once, into the token cache (see `cacheDir`).",
    )
    path: str | None = Field(
        None,
        description="File or directory for the `text`, `tokens`, `jsonl`, `parquet` and `hfDisk` "
        "sources.",
    )
    text_field: str = Field(
        "text",
        min_length=1,
        description="Record field holding a document's text (`jsonl`, `parquet`, `hfDisk`).",
    )
    prompt_field: str | None = Field(
        None,
        min_length=1,
        description="Instruction data: the record field holding the prompt. With "
        "`completionField`, each document is prompt + completion and the loss covers only the "
        "completion tokens (and the EOS after them); `textField` is then not read.",
    )
    completion_field: str | None = Field(
        None,
        min_length=1,
        description="Instruction data: the record field holding the completion (the tokens the "
        "loss is computed on). Set together with `promptField`.",
    )
    tokenizer: TokenizerConfig = Field(
        default_factory=TokenizerConfig,
        description="The Hugging Face tokenizer for the `jsonl`, `parquet` and `hfDisk` sources.",
    )
    cache_dir: str | None = Field(
        None,
        description="Directory of the token cache (memory-mapped token files, one folder per "
        "hash of the data files' paths, sizes and modification times, the tokenizer and the "
        "packing settings; built once by one process per node while the others wait). Unset: "
        "`token-cache` under `checkpoint.dir`, so a restarted job finds it again.",
    )
    validation_fraction: float = Field(
        0.05,
        ge=0.0,
        le=0.5,
        description="Fraction held out for validation loss: the corpus's tail for `stdlib`, "
        "`text` and `tokens`; whole documents (picked by a hash of their index) for `jsonl`, "
        "`parquet` and `hfDisk`.",
    )
    eval_interval_steps: int = Field(
        100, ge=0, description="Evaluate validation loss every N steps (0 disables evaluation)."
    )
    eval_batches: int = Field(
        4, ge=1, le=10000, description="Batches averaged for one validation-loss measurement."
    )
    max_bytes: int = Field(
        32_000_000,
        ge=1024,
        description="Upper bound on bytes read from `text`/`stdlib` sources (keeps memory bounded).",
    )

    @model_validator(mode="after")
    def _path_needed(self) -> DataConfig:
        if self.source in ("text", "tokens", *TOKENIZED_SOURCES) and not self.path:
            raise ValueError(f"data.path is required when data.source is '{self.source}'")
        if (self.prompt_field is None) != (self.completion_field is None):
            raise ValueError(
                "data.promptField and data.completionField go together: set both for instruction "
                "data (loss on the completion only), or neither and use data.textField"
            )
        return self


RESERVED_GROUP_NAMES = ("decay", "no_decay", "lora")
"""Names of the built-in parameter groups (the default rule's two groups and the LoRA preset)."""


class ParamGroupRule(CamelModel):
    """One AdamW parameter-group rule: parameters whose name matches get its decay and lr scale."""

    name: str = Field(
        ...,
        pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,39}$",
        max_length=40,  # the API server prices CEL rules by string bounds, not by pattern
        description="Group name, shown in the start log and as the `group` label of the "
        "`adamw_param_group_*` metrics (a letter, then letters, digits, `_` or `-`; at most 40).",
    )
    match: str = Field(
        ...,
        min_length=1,
        max_length=1000,
        description="Python regular expression searched (`re.search`) in each parameter's "
        "name as `model.named_parameters()` spells it, e.g. `\\.bias$` or "
        "`(^|\\.)(wte|embed_tokens)\\.`. The first rule that matches a parameter wins.",
    )
    weight_decay: float | None = Field(
        None,
        ge=0.0,
        le=10.0,
        description="Decoupled weight decay of this group (unset: `optimizer.weightDecay`).",
    )
    lr_scale: float = Field(
        1.0,
        gt=0.0,
        le=100.0,
        description="Multiplier on the scheduled learning rate for this group (with "
        "`layerwiseLrDecay`, multiplied by the layer's factor too).",
    )

    @field_validator("match")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as err:
            raise ValueError(
                f"not a valid regular expression ({err}); escape literal dots as `\\.`"
            ) from None
        return pattern


class LoraGroupConfig(CamelModel):
    """The AdamW group of LoRA adapter parameters (names containing `lora_`)."""

    weight_decay: float = Field(
        0.0, ge=0.0, le=10.0, description="Decoupled weight decay of the LoRA adapter parameters."
    )
    lr_scale: float = Field(
        1.0, gt=0.0, le=100.0, description="Learning-rate multiplier of the LoRA adapter parameters."
    )


class OptimizerConfig(CamelModel):
    """AdamW with decoupled weight decay (Loshchilov & Hutter) on PyTorch's fused kernel.

    Each trainable parameter joins the first group that claims it: `groups` in order, then
    the LoRA adapters (`loraGroup`), then `noDecay`, then the default rule (`decay`).
    Frozen parameters (`requires_grad=False`) never enter the optimizer.
    """

    lr: float = Field(1e-3, gt=0.0, le=10.0, description="Peak learning rate.")
    betas: tuple[float, float] = Field(
        (0.9, 0.95), description="Adam moment decay rates (beta1, beta2), each in [0, 1)."
    )
    eps: float = Field(1e-8, gt=0.0, le=1.0, description="Adam epsilon (numerical floor).")
    weight_decay: float = Field(0.1, ge=0.0, le=10.0, description="Decoupled weight decay.")
    decay: Literal["matrices", "all", "none"] = Field(
        "matrices",
        description="Which parameters decay: `matrices` (tensors with 2+ dimensions, as in "
        "nanoGPT; biases, norms are exempt), `all`, or `none`.",
    )
    grad_clip_norm: float = Field(
        1.0, ge=0.0, description="Clip the global gradient L2 norm to this value (0 disables)."
    )
    groups: list[ParamGroupRule] = Field(
        default_factory=list,
        max_length=32,
        description="Ordered parameter-group rules `{name, match, weightDecay, lrScale}`; the "
        "first rule whose `match` finds a parameter's name wins; parameters no rule matches "
        "fall to `loraGroup`, `noDecay` and then the default rule (`decay`).",
    )
    no_decay: list[Literal["bias", "norm", "embedding"]] = Field(
        default_factory=list,
        description="Presets exempt from weight decay (group `no_decay`): `bias` (names ending "
        "in `bias`), `norm` (parameters of LayerNorm/RMSNorm-like modules), `embedding` "
        "(nn.Embedding weights, and a tied output head with them).",
    )
    lora_group: LoraGroupConfig = Field(
        default_factory=LoraGroupConfig,
        description="LoRA adapter parameters (names containing `lora_`) form their own group "
        "`lora` with this weight decay and learning-rate scale.",
    )
    layerwise_lr_decay: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="Layer-wise learning-rate decay for models with numbered layers "
        "(`layers.N.`, `h.N.`, `blocks.N.`): with L numbered layers, layer N's lr is scaled by "
        "factor^(L - N), embeddings by factor^(L + 1), and everything after the last layer "
        "(final norm, output head) by 1. 1.0 disables it.",
    )

    @field_validator("groups")
    @classmethod
    def _unique_group_names(cls, groups: list[ParamGroupRule]) -> list[ParamGroupRule]:
        seen: set[str] = set()
        for i, g in enumerate(groups):
            if g.name in seen or g.name in RESERVED_GROUP_NAMES:
                raise ValueError(
                    f"groups[{i}].name '{g.name}' is already taken (names must be unique and not "
                    f"one of {', '.join(RESERVED_GROUP_NAMES)}); rename it"
                )
            seen.add(g.name)
        return groups

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        for i, b in enumerate(betas):
            if not (0.0 <= b < 1.0):
                raise ValueError(f"betas[{i}] = {b} is outside [0, 1); typical values are 0.9, 0.95")
        return betas


class ScheduleConfig(CamelModel):
    """Linear warmup, then cosine decay to a floor at `training.maxSteps`."""

    warmup_steps: int = Field(100, ge=0, description="Steps of linear warmup from 0 to `optimizer.lr`.")
    min_lr_ratio: float = Field(
        0.1, ge=0.0, le=1.0, description="Cosine floor as a fraction of `optimizer.lr`."
    )


class EarlyStoppingConfig(CamelModel):
    """Stop, successfully, when validation loss no longer improves (reason EarlyStopped)."""

    patience: int = Field(
        ...,
        ge=1,
        le=100000,
        description="Evaluations (every `data.evalIntervalSteps` steps) in a row without an "
        "improvement of at least `minDelta` before training stops.",
    )
    min_delta: float = Field(
        0.0,
        ge=0.0,
        le=1000.0,
        description="How much lower than the best so far a validation loss must be to count as an "
        "improvement.",
    )


class TrainingConfig(CamelModel):
    max_steps: int = Field(1000, ge=1, description="Optimizer steps to train for.")
    batch_size: int = Field(16, ge=1, le=65536, description="Sequences per micro-batch per rank.")
    grad_accumulation_steps: int = Field(
        1, ge=1, le=4096, description="Micro-batches accumulated per optimizer step."
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="`bf16` autocast (CUDA), `fp16` autocast with dynamic loss scaling (CUDA), "
        "or `fp32`. On CPU anything but fp32 falls back to fp32 with a warning.",
    )
    seed: int = Field(1337, ge=0, le=2**31 - 1, description="Seed for init and data order.")
    log_interval_steps: int = Field(
        10, ge=1, description="Read device counters, log and update metrics every N steps."
    )
    threads: int = Field(
        0, ge=0, le=1024, description="torch CPU threads (0 keeps torch's default)."
    )
    target_validation_loss: float | None = Field(
        None,
        gt=0.0,
        le=1_000_000.0,
        description="Stop, successfully, at the first evaluation whose validation loss is at or "
        "below this (a checkpoint is saved; reason TargetReached). Needs `data.evalIntervalSteps`.",
    )
    early_stopping: EarlyStoppingConfig | None = Field(
        None,
        description="Stop, successfully, when validation loss stopped improving (reason "
        "EarlyStopped). Needs `data.evalIntervalSteps`.",
    )


class MetricsConfig(CamelModel):
    port: int = Field(
        9090,
        ge=0,
        le=65535,
        description="Port for Prometheus `/metrics` and JSON `/status` (0 disables the server). "
        "Rank r on a node listens on port + local rank.",
    )
    host: str = Field("0.0.0.0", description="Address the metrics server binds.")


class CheckpointConfig(CamelModel):
    dir: str = Field(
        "checkpoints", description="Directory for `step-N` checkpoints (mount a volume here)."
    )
    interval_steps: int = Field(200, ge=0, description="Save every N steps (0: not by step).")
    interval_seconds: float = Field(
        0.0, ge=0.0, description="Also save when this many seconds passed since the last save (0: off)."
    )
    keep_latest: int = Field(
        3, ge=1, le=1000, description="Checkpoints kept; the last known-good one is never deleted."
    )
    async_save: bool = Field(
        True, description="Snapshot to host memory and write in a background thread."
    )
    resume: bool = Field(True, description="Resume from the newest valid checkpoint on start.")
    save_best: bool = Field(
        True,
        description="Save a checkpoint at each evaluation that lowers the best validation loss, so "
        "the best checkpoint (`<dir>/best`) holds the evaluated weights; kept by keepLatest pruning. "
        "Costs a save per improvement (asynchronous, a host snapshot on the step).",
    )
    preemption_save_timeout_seconds: float = Field(
        60.0,
        gt=0.0,
        description="Time budget for the checkpoint saved on SIGTERM; if the save fails or runs "
        "over, the trainer exits 1 (a crash: work was lost) instead of 143.",
    )


class DivergenceConfig(CamelModel):
    max_consecutive_nonfinite_steps: int = Field(
        20, ge=1, description="Consecutive skipped (NaN/Inf) steps tolerated before acting."
    )
    action: Literal["Rollback", "Fail"] = Field(
        "Rollback",
        description="`Rollback`: reload the last known-good checkpoint in-process and lower the "
        "learning rate; `Fail`: exit with the diverged code (3).",
    )
    lr_factor: float = Field(
        0.5, gt=0.0, le=1.0, description="Learning-rate multiplier applied at each rollback."
    )
    max_rollbacks: int = Field(
        3, ge=0, description="Rollbacks allowed before the trainer exits as diverged (code 3)."
    )


class MlflowConfig(CamelModel):
    """Record the run in an MLflow tracking server (rank 0 only, off the training thread).

    Credentials come from the environment, never from the spec: `MLFLOW_TRACKING_TOKEN`, or
    `MLFLOW_TRACKING_USERNAME` and `MLFLOW_TRACKING_PASSWORD`, set through `pod.env` from a
    Secret (`valueFrom.secretKeyRef`).
    """

    tracking_uri: str = Field(
        ...,
        min_length=1,
        max_length=2000,
        description="The tracking server, e.g. http://mlflow.mlflow.svc:5000.",
    )
    experiment: str = Field(
        "adamw",
        min_length=1,
        max_length=500,
        description="Experiment the run is recorded in (created when missing).",
    )
    run_name: str | None = Field(
        None,
        min_length=1,
        max_length=250,
        description="Name of the run. Unset: `<namespace>/<job name>` (just the config hash outside "
        "a job).",
    )
    log_checkpoints: bool = Field(
        False,
        description="Upload each checkpoint's files as run artifacts (rank 0). Off: only a "
        "reference (path, step, sha256, known-good) is recorded.",
    )
    close_timeout_seconds: float = Field(
        10.0,
        ge=0.0,
        le=600.0,
        description="At exit, how long the trainer waits for queued records to reach a slow or "
        "down server before it gives up on them (counted as dropped).",
    )
    queue_size: int = Field(
        1000,
        ge=10,
        le=1_000_000,
        description="Pending records kept while the server is slow or down; beyond it metric points "
        "are dropped (and counted in adamw_tracking_dropped_total), never a training step.",
    )


class TrackingConfig(CamelModel):
    """Experiment tracking: where each run, its parameters and its metrics are recorded."""

    mlflow: MlflowConfig | None = Field(None, description="An MLflow tracking server.")


class TrainerConfig(CamelModel):
    """Everything the trainer needs, grouped by concern. Every field has a default."""

    model: ModelConfig = Field(default_factory=ModelConfig, description="Model architecture.")
    finetune: FinetuneConfig = Field(
        default_factory=FinetuneConfig, description="Starting weights and LoRA fine-tuning."
    )
    data: DataConfig = Field(default_factory=DataConfig, description="Training data.")
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig, description="AdamW.")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig, description="LR schedule.")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="Loop settings.")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="Metrics server.")
    checkpoint: CheckpointConfig = Field(
        default_factory=CheckpointConfig, description="Checkpointing and resume."
    )
    divergence: DivergenceConfig = Field(
        default_factory=DivergenceConfig, description="What to do when steps keep going NaN."
    )
    tracking: TrackingConfig = Field(
        default_factory=TrackingConfig, description="Experiment tracking (MLflow)."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="`auto` picks CUDA when available, else CPU."
    )
    termination_message_path: str = Field(
        "/dev/termination-log",
        description="Where the trainer writes its JSON exit reason (Kubernetes shows it in the "
        "pod status). Missing or unwritable paths are skipped.",
    )

    @model_validator(mode="after")
    def _cross_field(self) -> TrainerConfig:
        if self.finetune.lora is not None and self.model.source == "gpt":
            raise ValueError(
                "finetune.lora needs model.source 'huggingface' or 'python' (the built-in GPT is "
                "trained in full); set model.source or remove finetune.lora"
            )
        hf = self.model.huggingface
        if self.model.source == "huggingface" and hf is not None and hf.dtype != "float32" and self.finetune.lora is None:
            # The fused AdamW step updates float32 weights only; low-precision weights are for
            # a frozen LoRA base (the adapters stay float32). Mixed precision is autocast.
            raise ValueError(
                f"model.huggingface.dtype '{hf.dtype}' holds weights the optimizer cannot update; "
                "train in full with dtype float32 and training.precision bf16 (autocast), or add "
                "finetune.lora (the frozen base may be bfloat16)"
            )
        if self.data.source in TOKENIZED_SOURCES and not self.data.tokenizer.path:
            hf = self.model.huggingface if self.model.source == "huggingface" else None
            if hf is None or not hf.path:
                raise ValueError(
                    f"data.tokenizer.path is required when data.source is '{self.data.source}' (it "
                    "defaults to model.huggingface.path only for a Hugging Face model read from a "
                    "path); point it at a Hugging Face tokenizer directory"
                )
            self.data.tokenizer.path = hf.path  # the model's own tokenizer, shown in the resolved config
        t = self.training
        wants = [name for name, on in (("targetValidationLoss", t.target_validation_loss is not None),
                                       ("earlyStopping", t.early_stopping is not None)) if on]
        no_split = self.data.validation_fraction == 0 and self.data.source != "synthetic"
        if wants and (self.data.eval_interval_steps == 0 or no_split):
            raise ValueError(
                f"training.{wants[0]} acts on validation loss, but data.evalIntervalSteps is "
                f"{self.data.eval_interval_steps} and data.validationFraction is "
                f"{self.data.validation_fraction}; set both above 0, or remove training.{wants[0]}"
            )
        if self.data.source in ("stdlib", "text") and self.model.vocab_size < 256:
            raise ValueError(
                f"model.vocabSize is {self.model.vocab_size} but data.source "
                f"'{self.data.source}' is byte-level; set model.vocabSize to 256 or more"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as camelCase JSON-able data (what YAML files contain)."""
        return self.model_dump(mode="json", by_alias=True)

    def config_hash(self) -> str:
        """Short stable hash of the resolved config, logged and exported to tell runs apart."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]


class ConfigError(ValueError):
    """Invalid configuration. `str()` is one line per problem, naming field and fix."""

    def __init__(self, problems: list[str], source: str = "config", unknown_fields: list[str] | None = None):
        self.problems = problems
        self.source = source
        # Fields this trainer does not know (camelCase paths): a typo, or a field of a newer
        # config schema than CONFIG_SCHEMA_VERSION (the termination message carries them).
        self.unknown_fields = list(unknown_fields or [])
        super().__init__(f"invalid {source}:\n" + "\n".join(f"  - {p}" for p in problems))


def _field_path(loc: tuple[Any, ...], prefix: str) -> str:
    parts: list[str] = [prefix] if prefix else []
    for item in loc:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
        else:
            parts.append(to_camel(str(item)) if "_" in str(item) else str(item))
    return ".".join(parts) or "<root>"


def format_validation_error(err: ValidationError, prefix: str = "") -> list[str]:
    """Turn pydantic errors into `field.path: problem (got X)` lines a user can act on."""
    lines = []
    for e in err.errors(include_url=False):
        loc = tuple(x for x in e["loc"] if x not in ("function-after",))
        path = _field_path(loc, prefix)
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if e["type"] == "extra_forbidden":
            msg = "unknown field; remove it or check its spelling (names are camelCase)"
        got = e.get("input")
        if e["type"] != "extra_forbidden" and not isinstance(got, dict) and got is not None:
            msg += f" (got {got!r})"
        lines.append(f"{path}: {msg}")
    return lines


def parse_config(data: Any, source: str = "config", prefix: str = "") -> TrainerConfig:
    """Validate already-parsed data; raise ConfigError naming each bad field."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{prefix or '<root>'}: expected a mapping, got {type(data).__name__}"], source)
    try:
        return TrainerConfig.model_validate(data)
    except ValidationError as err:
        problems = format_validation_error(err, prefix)
        unknown = [_field_path(tuple(x for x in e["loc"] if x != "function-after"), "")
                   for e in err.errors(include_url=False) if e["type"] == "extra_forbidden"]
        if unknown:
            problems.append(
                f"this trainer reads config schema {CONFIG_SCHEMA_VERSION}: a field from a newer "
                "schema needs a newer trainer image"
            )
        raise ConfigError(problems, source, unknown_fields=unknown) from None


def load_config(path: str | Path) -> TrainerConfig:
    """Read a YAML or JSON config file (JSON is YAML) and validate it."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as err:
        raise ConfigError([f"cannot read config file: {err.strerror}"], str(p)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError([f"not valid YAML/JSON: {err}"], str(p)) from None
    return parse_config(data, source=str(p))

