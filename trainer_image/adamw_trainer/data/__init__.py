"""Training data: sources, tokenization and the token cache, and the batches drawn from them.

- `sources.py`: byte-level text (`stdlib`, `text`), nanoGPT token files (`tokens`), `synthetic`;
- `documents.py`: records of `jsonl`, `parquet` and `hfDisk` data;
- `tokenize.py`: the Hugging Face tokenizer (offline);
- `cache.py`: documents tokenized, EOS-joined and split by document once, memory-mapped;
- `batches.py`: `BatchSource`, batches as a pure function of (seed, step, micro-step, rank).
"""

from .batches import IGNORE_INDEX, BatchSource
from .cache import TokenCache, open_token_cache
from .sources import (
    DataError,
    Splits,
    load_splits,
    mix_seed,
    read_text_bytes,
    stdlib_files,
    text_files,
)

__all__ = [
    "IGNORE_INDEX",
    "BatchSource",
    "DataError",
    "Splits",
    "TokenCache",
    "load_splits",
    "mix_seed",
    "open_token_cache",
    "read_text_bytes",
    "stdlib_files",
    "text_files",
]
