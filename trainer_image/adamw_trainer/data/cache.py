"""The token cache: documents tokenized, joined with EOS and split by document, once.

Layout: `<cacheDir>/<source>-<key>/` holds `train.bin` and `val.bin` (flat token ids,
uint16 or uint32), `train.mask` / `val.mask` for instruction data (uint8: 1 where a
token is a loss target) and `meta.json`, written last. Batches memory-map the files, so
ranks on one node share one copy in the page cache.

The key is a sha256 over the data files' paths, sizes and modification times (not their
contents: hashing a terabyte corpus would read it all once more at every start; a file
rewritten in place with the same size and mtime is not noticed, so touch it or delete
the cache folder), the tokenizer's own files (contents), the record fields, the
validation fraction and the packing format. `model.contextLength` is not in it: blocks
are fixed-stride views of the stream (`batches.py`), so another context length reuses
the cache.

Building is race-free: every process takes an exclusive `flock` on `<name>.lock`; the
holder builds if the folder is missing (into a temporary folder: files fsynced, then
`meta.json`, then one atomic rename), and the others, once they get the lock, find it
built. On a volume shared by several nodes the lock also serialises them (NFS locks);
where it would not, the rename still guarantees a reader sees a complete cache or none.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DataConfig
from ..progress import RunLog
from .documents import data_files, read_batches
from .sources import DataError, mix_seed
from .tokenize import (
    Tokenizer,
    check_vocabulary,
    load_tokenizer,
    tokenizer_dir,
    tokenizer_fingerprint,
)

FORMAT = 1
PROGRESS_SECONDS = 10.0  # JSON progress lines while building (a terminal redraws at 10 Hz)
_VALIDATION_SALT = 0x76616C  # "val": which documents are held out does not depend on the run's seed


def is_validation_document(index: int, fraction: float) -> bool:
    """Whether document `index` (0-based, in reading order) is held out; a hash, not the tail."""
    return mix_seed(_VALIDATION_SALT, index) < fraction * 2**63


@dataclass
class TokenCache:
    path: Path
    meta: dict[str, Any]
    train: np.ndarray
    val: np.ndarray | None
    train_mask: np.ndarray | None
    val_mask: np.ndarray | None
    built: bool  # built by this process (False: reused)


def cache_key(cfg: DataConfig, tokenizer_path: Path) -> tuple[str, dict[str, Any]]:
    """The cache folder's name and the facts it is a hash of."""
    root = Path(cfg.path or "").resolve()
    files = []
    for f in data_files(cfg):
        st = f.stat()
        files.append([str(f.resolve().relative_to(root)) if f.resolve() != root else f.name,
                      st.st_size, st.st_mtime_ns])
    material = {
        "format": FORMAT,
        "source": cfg.source,
        "root": str(root),
        "files": files,
        "tokenizer": tokenizer_fingerprint(tokenizer_path),
        "fields": ({"prompt": cfg.prompt_field, "completion": cfg.completion_field}
                   if cfg.prompt_field is not None else {"text": cfg.text_field}),
        "validationFraction": cfg.validation_fraction,
        "packing": "documents joined by EOS; validation split by document",
    }
    digest = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]
    return f"{cfg.source}-{digest}", material


def open_token_cache(
    cfg: DataConfig, *, cache_dir: Path, model_vocab: int, log: RunLog | None = None
) -> TokenCache:
    """Open the cache for `cfg`, building it first if no process has (one builder per key)."""
    tok_path = tokenizer_dir(cfg.tokenizer.path)
    name, material = cache_key(cfg, tok_path)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"data.cacheDir: cannot create {cache_dir} ({err.strerror}); "
                        "set data.cacheDir to a writable directory") from None
    final = cache_dir / name
    with _locked(cache_dir / f"{name}.lock", log, final):
        cache = _open(final)
        if cache is None:
            _build(cfg, tok_path, final, material, model_vocab, log)
            cache = _open(final)
            assert cache is not None
            cache.built = True
        elif log is not None:
            log.event("token-cache-reused", path=str(final), trainTokens=len(cache.train),
                      validationTokens=0 if cache.val is None else len(cache.val))
    check_vocabulary(int(cache.meta["vocabSize"]), model_vocab, tok_path)
    return cache


@contextlib.contextmanager
def _locked(lock_path: Path, log: RunLog | None, final: Path) -> Iterator[None]:
    with open(lock_path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if log is not None:
                log.event("token-cache-wait", path=str(final), reason="another process is building it")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _memmap(path: Path, dtype: Any) -> np.ndarray | None:
    if not path.exists() or path.stat().st_size == 0:
        return None  # np.memmap refuses empty files
    return np.memmap(path, dtype=dtype, mode="r")


def _open(final: Path) -> TokenCache | None:
    """The complete cache at `final`, or None (absent, or not what its meta.json says)."""
    try:
        meta = json.loads((final / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    dtype = np.dtype(meta["dtype"])
    arrays = {}
    for split, key in (("train", "train"), ("val", "validation")):
        tokens = _memmap(final / f"{split}.bin", dtype)
        mask = _memmap(final / f"{split}.mask", np.uint8) if meta["masked"] else None
        n = meta["tokens"][key]
        if (0 if tokens is None else len(tokens)) != n or (meta["masked"] and n and (mask is None or len(mask) != n)):
            return None
        arrays[split], arrays[f"{split}_mask"] = tokens, mask
    if arrays["train"] is None:
        return None
    return TokenCache(path=final, meta=meta, built=False, **arrays)


class _Progress:
    """Documents, tokens and MB/s while building: a live line on a terminal, JSON lines otherwise."""

    def __init__(self, log: RunLog | None, path: Path):
        self.log, self.path = log, path
        self.start = self.last = time.monotonic()
        self.docs = self.tokens = self.bytes = 0

    def add(self, docs: int, tokens: int, nbytes: int) -> None:
        self.docs += docs
        self.tokens += tokens
        self.bytes += nbytes
        now = time.monotonic()
        if self.log is None or not self.log.enabled:
            return
        if self.log.tty:
            self.log.status_line(f"token cache: {self.docs:,} documents  {self.tokens:,} tokens  "
                                 f"{self.mb_per_s:.1f} MB/s")
        elif now - self.last >= PROGRESS_SECONDS:
            self.last = now
            self.log.event("token-cache-progress", path=str(self.path), documents=self.docs,
                           tokens=self.tokens, megabytes=round(self.bytes / 1e6, 1),
                           mbPerSecond=round(self.mb_per_s, 2), seconds=round(now - self.start, 1))

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.start

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / max(self.seconds, 1e-9)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _build(cfg: DataConfig, tok_path: Path, final: Path, material: dict, model_vocab: int,
           log: RunLog | None) -> None:
    if log is not None and not log.enabled:
        # Only rank 0 logs, but whichever process holds the lock builds: it reports the build.
        log = RunLog(stream=log.stream, tty=log.tty)
    tokenizer = load_tokenizer(tok_path)
    check_vocabulary(tokenizer.vocab_size, model_vocab, tok_path)  # before spending the build
    masked = cfg.prompt_field is not None
    parent = final.parent
    for stale in itertools.chain(parent.glob(f"{final.name}.tmp-*"), [final]):
        shutil.rmtree(stale, ignore_errors=True)  # a killed build's leftovers (we hold the lock)
    tmp = parent / f"{final.name}.tmp-{socket.gethostname()}-{os.getpid()}"
    tmp.mkdir()
    try:
        _write(cfg, tokenizer, tmp, final, material, masked, log)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write(cfg: DataConfig, tokenizer: Tokenizer, tmp: Path, final: Path, material: dict, masked: bool,
           log: RunLog | None) -> None:
    progress = _Progress(log, final)
    if log is not None:
        log.event("token-cache-build", path=str(final), source=cfg.source, data=cfg.path,
                  files=len(material["files"]), tokenizer=cfg.tokenizer.path)
    counts = {"train": [0, 0], "val": [0, 0]}  # documents, tokens
    files = {s: open(tmp / f"{s}.bin", "wb") for s in counts}
    masks = {s: open(tmp / f"{s}.mask", "wb") for s in counts} if masked else {}
    try:
        index = 0
        for batch in read_batches(cfg):
            docs, doc_masks = tokenizer.encode(batch)
            split_of = ["val" if is_validation_document(index + i, cfg.validation_fraction) else "train"
                        for i in range(len(docs))]
            index += len(docs)
            for split in counts:
                chosen = [i for i, s in enumerate(split_of) if s == split]
                if not chosen:
                    continue
                n = sum(len(docs[i]) for i in chosen)
                ids = np.fromiter(itertools.chain.from_iterable(docs[i] for i in chosen), tokenizer.dtype, n)
                ids.tofile(files[split])
                if doc_masks is not None:
                    m = np.fromiter(itertools.chain.from_iterable(doc_masks[i] for i in chosen), np.uint8, n)
                    m.tofile(masks[split])
                counts[split][0] += len(chosen)
                counts[split][1] += n
            progress.add(len(docs), sum(map(len, docs)), batch.nbytes)
        for f in itertools.chain(files.values(), masks.values()):
            f.flush()
            os.fsync(f.fileno())
    finally:
        for f in itertools.chain(files.values(), masks.values()):
            f.close()
    if log is not None and log.tty:
        log.status_line(None)
    if counts["train"][1] == 0:
        raise DataError(f"data.path: {cfg.path} holds no documents for training (all "
                        f"{counts['val'][0]} held out for validation or none at all); add data")
    seconds = progress.seconds
    meta = {
        "format": FORMAT,
        "key": material,
        "dtype": np.dtype(tokenizer.dtype).name,
        "vocabSize": tokenizer.vocab_size,
        "eosId": tokenizer.eos_id,
        "masked": masked,
        "documents": {"train": counts["train"][0], "validation": counts["val"][0]},
        "tokens": {"train": counts["train"][1], "validation": counts["val"][1]},
        "textBytes": progress.bytes,
        "buildSeconds": round(seconds, 3),
        "builtBy": f"{socket.gethostname()}:{os.getpid()}",
        "time": time.time(),
    }
    with open(tmp / "meta.json", "w") as f:
        json.dump(meta, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    os.rename(tmp, final)  # atomic: readers see all of it or none
    _fsync_dir(final.parent)
    if log is not None:
        log.event("token-cache-built", path=str(final), documents=progress.docs,
                  trainDocuments=counts["train"][0], validationDocuments=counts["val"][0],
                  trainTokens=counts["train"][1], validationTokens=counts["val"][1],
                  megabytes=round(progress.bytes / 1e6, 2), seconds=round(seconds, 2),
                  mbPerSecond=round(progress.mb_per_s, 2))
