"""Token cache: build throughput (MB/s of text) and its cost against training steps.

The corpus is the Python standard library's own .py files, one document per file, written
as jsonl (offline, realistic text). The tokenizer is a byte-level BPE trained here on part
of it (`tokenizers`) and saved as a `PreTrainedTokenizerFast`, as a user's would be. Each
round builds the cache from scratch (into a fresh folder), then opens it again (the
reuse path every later start takes). Against it: the raw tokenizer on the same documents
(what the cache adds: EOS joining, the split, writing, fsync), and the seconds per
optimizer step of the quickstart-sized GPT trained on batches from this cache, so the
build reads as "the cost of N training steps".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from .common import describe_machine, md_table, median


def _corpus(root: Path, max_bytes: int) -> tuple[Path, int, int]:
    from adamw_trainer.data import stdlib_files

    out, n, total = root / "stdlib.jsonl", 0, 0
    with open(out, "w") as f:
        for path in stdlib_files():
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            f.write(json.dumps({"text": text}) + "\n")
            n += 1
            total += len(text.encode())
            if total >= max_bytes:
                break
    return out, n, total


def _tokenizer(corpus: Path, out: Path, vocab: int) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    with open(corpus) as f:
        texts = [json.loads(line)["text"] for line, _ in zip(f, range(300), strict=False)]
    tok.train_from_iterator(texts, trainer=trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(out)


def run(args: argparse.Namespace) -> str:
    from adamw_trainer.config import TrainerConfig
    from adamw_trainer.data import BatchSource
    from adamw_trainer.data.documents import read_batches
    from adamw_trainer.data.tokenize import load_tokenizer
    from adamw_trainer.model import GPT
    from adamw_trainer.optim import GuardedAdamW, param_groups

    rounds, max_bytes, steps = (1, 2_000_000, 5) if args.quick else (2, 6_000_000, 10)
    root = Path(tempfile.mkdtemp(prefix="bench-token-cache-"))
    try:
        corpus, docs, nbytes = _corpus(root, max_bytes)
        vocab = 4096
        _tokenizer(corpus, root / "tokenizer", vocab)
        cfg = TrainerConfig.model_validate({
            "model": {"layers": 2, "heads": 4, "width": 128, "contextLength": 128, "vocabSize": vocab},
            "data": {"source": "jsonl", "path": str(corpus), "tokenizer": {"path": str(root / "tokenizer")}},
            "training": {"batchSize": 16},
        })
        device = torch.device("cpu")

        def source(cache_dir: Path) -> BatchSource:
            return BatchSource(cfg.data, vocab_size=vocab, context_length=cfg.model.context_length,
                               batch_size=cfg.training.batch_size, seed=1, device=device, cache_dir=cache_dir)

        tok = load_tokenizer(root / "tokenizer")
        build, reuse, raw = [], [], []
        for r in range(rounds):
            t0 = time.perf_counter()
            for batch in read_batches(cfg.data):
                tok.encode(batch)
            raw.append(time.perf_counter() - t0)
            cache_dir = root / f"cache-{r}"
            t0 = time.perf_counter()
            src = source(cache_dir)
            build.append(time.perf_counter() - t0)
            assert src.cache is not None and src.cache.built
            t0 = time.perf_counter()
            again = source(cache_dir)
            reuse.append(time.perf_counter() - t0)
            assert again.cache is not None and not again.cache.built
        tokens = len(src.splits.train) + (0 if src.splits.val is None else len(src.splits.val))

        torch.manual_seed(0)
        model = GPT(cfg.model)
        opt = GuardedAdamW(param_groups(model, cfg.optimizer), cfg.optimizer)

        def train(n: int, offset: int) -> float:
            t0 = time.perf_counter()
            for step in range(offset, offset + n):
                x, y = src.train_batch(step, 0, 0)
                model(x, y).backward()
                opt.step()
            return (time.perf_counter() - t0) / n

        train(2, 0)  # warm-up
        step_s = median([train(steps, 100 * (i + 1)) for i in range(rounds)])
    finally:
        shutil.rmtree(root, ignore_errors=True)

    mb = nbytes / 1e6
    b, re_, rw = min(build), min(reuse), min(raw)
    m = cfg.model
    rows = [
        ["cache build (tokenize, EOS-join, split, write, fsync, rename)", f"{b:.2f}", f"{mb / b:.1f}",
         f"{b / step_s:.0f}"],
        ["raw tokenizer only (same documents, nothing written)", f"{rw:.2f}", f"{mb / rw:.1f}", f"{rw / step_s:.0f}"],
        ["reuse (open + memory-map a built cache)", f"{re_:.3f}", "-", f"{re_ / step_s:.2f}"],
        ["one training step (for scale)", f"{step_s:.3f}", "-", "1"],
    ]
    threads = os.environ.get("RAYON_NUM_THREADS") or f"{os.cpu_count()} (tokenizers' default)"
    return "\n".join([
        f"Machine: {describe_machine()}; tokenizer threads {threads}.",
        f"Corpus: {docs:,} stdlib .py files as jsonl documents, {mb:.1f} MB of text, "
        f"{tokens:,} tokens with a {vocab}-token byte-level BPE ({nbytes / tokens:.2f} bytes/token). "
        f"Training: the quickstart-sized GPT ({m.layers} layers, width {m.width}, context "
        f"{m.context_length}, batch {cfg.training.batch_size}), fp32, {torch.get_num_threads()} torch thread(s). "
        f"Best of {rounds} rounds (median for the step time).",
        "",
        md_table(["what", "seconds", "MB/s of text", "= training steps"], rows),
        "",
        f"- Building the cache once costs about **{b / step_s:.0f} training steps** of this small model "
        f"({b / (step_s * 400):.1%} of the 400-step quickstart run); every later start pays only the "
        f"reuse row. Tokenization is {rw / b:.0%} of the build time.",
        f"- At {mb / b:.1f} MB/s, 10 GB of text would build in about {10_000 / (mb / b) / 60:.0f} minutes on "
        "this machine, once per node (ranks on a node share it; the lock makes the others wait).",
    ])
