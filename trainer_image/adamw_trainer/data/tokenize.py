"""The Hugging Face tokenizer: found on disk, fingerprinted, and applied to documents.

The tokenizer is loaded only to build the token cache (importing `transformers` costs
seconds and memory on every rank); the cache key uses a hash of the tokenizer's own
files instead, so a restart with a built cache never imports it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .documents import Batch
from .sources import DataError

# What `save_pretrained` writes for a tokenizer (fast and slow ones); model weights and
# configs in the same directory do not change the tokenization and stay out of the key.
_TOKENIZER_FILES = ("tokenizer", "special_tokens_map", "added_tokens", "vocab", "merges", "spiece",
                    "sentencepiece", "chat_template")


def tokenizer_dir(path: str | None) -> Path:
    """The tokenizer directory, or a DataError naming `data.tokenizer.path`."""
    if not path:
        raise DataError("data.tokenizer.path is not set; point it at a Hugging Face tokenizer directory")
    p = Path(path)
    if not p.is_dir():
        raise DataError(
            f"data.tokenizer.path: {p} {'is not a directory' if p.exists() else 'does not exist'}; "
            "point it at a directory a tokenizer was saved to (save_pretrained)"
        )
    return p


def tokenizer_fingerprint(path: Path) -> str:
    """sha256 over the tokenizer's files (names and contents)."""
    files = sorted(
        f for f in path.iterdir()
        if f.is_file() and (f.name.startswith(_TOKENIZER_FILES) or f.suffix in (".model", ".tiktoken"))
    )
    if not files:
        raise DataError(
            f"data.tokenizer.path: {path} holds no tokenizer files (tokenizer.json, "
            "tokenizer_config.json, ...); save one there with tokenizer.save_pretrained"
        )
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


@dataclass
class Tokenizer:
    """A loaded tokenizer and what packing needs of it."""

    hf: Any  # transformers.PreTrainedTokenizerBase
    eos_id: int
    vocab_size: int  # len(tokenizer): base vocabulary plus added tokens

    @property
    def dtype(self) -> type:
        return np.uint16 if self.vocab_size <= 1 << 16 else np.uint32

    def encode(self, batch: Batch) -> tuple[list[list[int]], list[list[int]] | None]:
        """Token ids per document, each ending in EOS; for instruction data also the loss mask.

        Prompt and completion are tokenized separately (the usual SFT practice): the mask
        is 0 over the prompt, 1 over the completion and its EOS.
        """
        tok = self.hf
        if batch.texts:
            ids = tok(batch.texts, add_special_tokens=False)["input_ids"]
            return [d + [self.eos_id] for d in ids], None
        prompts = tok(batch.prompts, add_special_tokens=False)["input_ids"]
        completions = tok(batch.completions, add_special_tokens=False)["input_ids"]
        docs, masks = [], []
        for p, c in zip(prompts, completions, strict=True):
            docs.append(p + c + [self.eos_id])
            masks.append([0] * len(p) + [1] * (len(c) + 1))
        return docs, masks


def load_tokenizer(path: Path) -> Tokenizer:
    """Load offline (`local_files_only`); never from the hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    from transformers import AutoTokenizer

    try:
        hf = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"data.tokenizer.path: cannot load a tokenizer from {path}: {err}") from None
    eos = hf.eos_token_id
    if eos is None:
        raise DataError(
            f"data.tokenizer.path: the tokenizer in {path} has no eos_token, which joins documents; "
            "set eos_token in its tokenizer_config.json"
        )
    return Tokenizer(hf=hf, eos_id=int(eos), vocab_size=len(hf))


def check_vocabulary(tokenizer_vocab: int, model_vocab: int, path: Path) -> None:
    """A token id the model has no embedding row for would crash mid-run (on CUDA: a device assert)."""
    if tokenizer_vocab > model_vocab:
        raise DataError(
            f"data.tokenizer.path: the tokenizer in {path} has {tokenizer_vocab} tokens but the model's "
            f"vocabulary holds {model_vocab} (model.vocabSize); set model.vocabSize to at least "
            f"{tokenizer_vocab}, or use the model's own tokenizer"
        )
