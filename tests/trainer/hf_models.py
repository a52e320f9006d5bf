"""Tiny Hugging Face models and a BPE tokenizer built offline, once per test session.

    from hf_models import hf_models_fixture  # noqa: F401  (the session fixture `hf_models`)

    def test_x(hf_models): hf_models.llama  # a save_pretrained directory

Models come from `config` (random init, seeded) and are saved with `save_pretrained`
(safetensors); the tokenizer is a byte-level BPE trained with `tokenizers` on text held
here, wrapped in `PreTrainedTokenizerFast` and saved next to each model. Everything is
tiny (2 layers, width 32, vocab 300, 64 positions) so the whole session pays ~5 s.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

EXAMPLE_MODELS = Path(__file__).resolve().parents[2] / "examples" / "custom-model"  # tiny_lm
VOCAB = 300
CONTEXT = 32
MAX_POSITIONS = 64

LLAMA_CONFIG: dict[str, Any] = {
    "model_type": "llama", "num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64,
    "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": VOCAB,
    "max_position_embeddings": MAX_POSITIONS, "tie_word_embeddings": False,
    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
}
GPT2_CONFIG: dict[str, Any] = {
    "model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 2, "vocab_size": VOCAB,
    "n_positions": MAX_POSITIONS, "bos_token_id": 1, "eos_token_id": 2,
    "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
}

TEXT = """The optimizer keeps two moments for every parameter and decays the weights apart from
the gradient step. A checkpoint holds the weights, the moments and the step count, so a
resumed run continues where it stopped. Low-rank adapters train a small update next to a
frozen weight matrix; only the adapters and their moments need saving. The tokenizer
splits text into pieces, and the model predicts the next piece from the ones before it.
"""


@dataclass(frozen=True)
class HFModels:
    root: Path
    llama: Path  # LlamaForCausalLM, save_pretrained + tokenizer
    gpt2: Path  # GPT2LMHeadModel, save_pretrained + tokenizer
    tokenizer: Path  # the tokenizer alone


def train_tokenizer(out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(io.StringIO(TEXT * 4).readlines(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.save_pretrained(out)


def save_model(fields: dict[str, Any], out: Path, tokenizer: Path, seed: int) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    fields = dict(fields)
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer, local_files_only=True).save_pretrained(out)


def build(root: Path) -> HFModels:
    """Build (or reuse) the models under `root`."""
    models = HFModels(root=root, llama=root / "llama", gpt2=root / "gpt2", tokenizer=root / "tokenizer")
    done = root / "done.json"
    if done.exists():
        return models
    root.mkdir(parents=True, exist_ok=True)
    train_tokenizer(models.tokenizer)
    save_model(LLAMA_CONFIG, models.llama, models.tokenizer, seed=1)
    save_model(GPT2_CONFIG, models.gpt2, models.tokenizer, seed=2)
    done.write_text(json.dumps({"vocab": VOCAB}))
    return models


@pytest.fixture(scope="session", name="hf_models")
def hf_models_fixture(tmp_path_factory) -> HFModels:
    # Modules that import this fixture each register it; the directory makes it one build.
    return build(tmp_path_factory.getbasetemp() / "hf-models")


def hf_trainer_config(tmp_path: Path, model: dict[str, Any], **groups: Any) -> dict[str, Any]:
    """A small trainer config for a Hugging Face (or python) model on synthetic tokens."""
    from trainer_process import override, small_config

    cfg = small_config(
        tmp_path,
        model={"contextLength": CONTEXT, **model},
        data={"source": "synthetic", "evalIntervalSteps": 0},
        optimizer={"lr": 1e-2, "weightDecay": 0.0},
        schedule={"warmupSteps": 5},
        training={"maxSteps": 40, "batchSize": 8, "logIntervalSteps": 10, "threads": 1},
    )
    return override(cfg, groups)


def train_in_process(cfg: dict[str, Any]):
    """Run the real Trainer in this process; returns (exit code, JSON events, trainer)."""
    from adamw_trainer.config import TrainerConfig
    from adamw_trainer.distributed import DistEnv
    from adamw_trainer.progress import RunLog
    from adamw_trainer.train import Trainer

    stream = io.StringIO()
    trainer = Trainer(
        TrainerConfig.model_validate(cfg), env=DistEnv(), log=RunLog(enabled=True, stream=stream, tty=False)
    )
    try:
        code = trainer.run()
    finally:
        trainer.close()
    events = [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]
    return code, events, trainer


def losses(events: list[dict]) -> list[float]:
    return [e["loss"] for e in events if e["event"] == "train"]
