"""Tokenized document data: jsonl, parquet and hfDisk sources, the token cache, prompt masking."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from adamw_trainer.config import ConfigError, DataConfig, parse_config
from adamw_trainer.data import IGNORE_INDEX, BatchSource, DataError
from adamw_trainer.data.cache import is_validation_document
from adamw_trainer.progress import RunLog
from data_fixtures import instruction, texts, write_hf_disk, write_jsonl, write_parquet
from hf_models import hf_models_fixture  # noqa: F401  (session fixture `hf_models`: the BPE tokenizer)

torch.set_num_threads(1)
VOCAB = 320  # covers the test tokenizer (<= 300 tokens)
T = 16


def data_cfg(hf_models, path, **kw) -> DataConfig:
    fields = {"source": "jsonl", "path": str(path), "tokenizer": {"path": str(hf_models.tokenizer)},
              "validationFraction": 0.1}
    fields.update(kw)
    return DataConfig.model_validate(fields)


def open_source(cfg: DataConfig, cache_dir, *, t: int = T, vocab: int = VOCAB, log=None, **kw) -> BatchSource:
    args = dict(vocab_size=vocab, context_length=t, batch_size=4, seed=7, device=torch.device("cpu"))
    args.update(kw)
    return BatchSource(cfg, cache_dir=cache_dir, log=log, **args)


def json_log() -> tuple[RunLog, io.StringIO]:
    stream = io.StringIO()
    return RunLog(enabled=True, stream=stream, tty=False), stream


def events(stream: io.StringIO, name: str) -> list[dict]:
    return [r for r in map(json.loads, stream.getvalue().splitlines()) if r["event"] == name]


def tokenizer(hf_models):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(hf_models.tokenizer), local_files_only=True)


def split_documents(stream: np.ndarray, eos: int) -> list[list[int]]:
    docs, cur = [], []
    for t in stream.tolist():
        cur.append(t)
        if t == eos:
            docs.append(cur)
            cur = []
    assert not cur, "the stream must end with EOS"
    return docs


def test_jsonl_parquet_and_hf_disk_give_the_same_batches(hf_models, tmp_path):
    records = [{"text": t, "id": i} for i, t in enumerate(texts(300))]
    sources = {
        "jsonl": write_jsonl(tmp_path / "jsonl" / "part-0.jsonl", records),
        "parquet": write_parquet(tmp_path / "parquet" / "part-0.parquet", records),
        "hfDisk": write_hf_disk(tmp_path / "hf", records),
    }
    batches = {}
    for source, path in sources.items():
        src = open_source(data_cfg(hf_models, path, source=source), tmp_path / "cache")
        batches[source] = (src.train_batch(3, 0, 1), src.val_batch(0, 0))
        x, y = batches[source][0]
        assert x.shape == y.shape == (4, T) and x.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])  # plain text: every target is the next token
    for source in ("parquet", "hfDisk"):
        for a, b in zip(batches["jsonl"], batches[source], strict=True):
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), source


def test_documents_are_joined_with_eos_and_split_by_document(hf_models, tmp_path):
    docs = texts(400)
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in docs])
    src = open_source(data_cfg(hf_models, path, validationFraction=0.2), tmp_path / "cache")
    tok = tokenizer(hf_models)
    decoded = {}
    for split, stream in (("train", src.splits.train), ("val", src.splits.val)):
        decoded[split] = [tok.decode(d[:-1]) for d in split_documents(np.asarray(stream), tok.eos_token_id)]
    # Whole documents on each side, none on both, none lost; the split is by a hash of the index.
    assert set(decoded["train"]).isdisjoint(decoded["val"])
    assert sorted(decoded["train"] + decoded["val"]) == sorted(docs)
    expected_val = [d for i, d in enumerate(docs) if is_validation_document(i, 0.2)]
    assert decoded["val"] == expected_val and 40 <= len(expected_val) <= 120
    meta = src.cache.meta
    assert meta["documents"] == {"train": 400 - len(expected_val), "validation": len(expected_val)}


def test_batches_are_a_pure_function_of_seed_step_micro_rank(hf_models, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in texts(200)])
    cfg = data_cfg(hf_models, path)
    first, again = open_source(cfg, tmp_path / "cache"), open_source(cfg, tmp_path / "cache")
    x1, y1 = first.train_batch(5, 1, 0)
    x2, y2 = again.train_batch(5, 1, 0)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    for other in (first.train_batch(6, 1, 0), first.train_batch(5, 0, 0), first.train_batch(5, 1, 1)):
        assert not torch.equal(x1, other[0])
    assert not torch.equal(x1, open_source(cfg, tmp_path / "cache", seed=8).train_batch(5, 1, 0)[0])
    assert torch.equal(first.val_batch(2, 0)[0], again.val_batch(2, 0)[0])
    # Rows are whole packed blocks: block b is tokens [b*T, b*T + T] of the stream.
    stream = np.asarray(first.splits.train)
    blocks = {tuple(stream[b * T : b * T + T]) for b in range((len(stream) - 1) // T)}
    assert all(tuple(row) in blocks for row in x1.tolist())


def test_prompt_tokens_are_masked_and_completion_tokens_are_learned(hf_models, tmp_path):
    records = [instruction(i) for i in range(300)]
    path = write_jsonl(tmp_path / "sft.jsonl", records)
    cfg = data_cfg(hf_models, path, promptField="question", completionField="answer", validationFraction=0.0)
    src = open_source(cfg, tmp_path / "cache")
    tok = tokenizer(hf_models)
    stream, mask = np.asarray(src.splits.train), np.asarray(src.splits.train_mask)
    # Per document: the masked part is the prompt, the learned part the completion and EOS.
    start = 0
    for record, doc in zip(records, split_documents(stream, tok.eos_token_id), strict=True):
        m = mask[start : start + len(doc)]
        start += len(doc)
        assert tok.decode([t for t, k in zip(doc, m, strict=True) if not k]) == record["question"]
        assert tok.decode([t for t, k in zip(doc, m, strict=True) if k]) == record["answer"] + "</s>"
    # In a batch, target j is token j + 1 of the block, or -100 where that token is a prompt token.
    x, y = src.train_batch(0, 0, 0)
    starts = {tuple(stream[b * T : b * T + T]): b * T for b in range((len(stream) - 1) // T)}
    for row_x, row_y in zip(x.numpy(), y.numpy(), strict=True):
        s = starts[tuple(row_x)]
        expected = np.where(mask[s + 1 : s + T + 1] == 1, stream[s + 1 : s + T + 1].astype(np.int64), IGNORE_INDEX)
        assert np.array_equal(row_y, expected)
    assert (y == IGNORE_INDEX).any() and (y != IGNORE_INDEX).any()


def test_blocks_with_nothing_to_learn_are_never_drawn(hf_models, tmp_path):
    # Long prompts, one-word answers: most 16-token blocks hold prompt targets only.
    records = [{"question": " ".join(texts(3)[i % 3] for _ in range(3)), "answer": " yes"} for i in range(200)]
    path = write_jsonl(tmp_path / "sft.jsonl", records)
    cfg = data_cfg(hf_models, path, promptField="question", completionField="answer", validationFraction=0.0)
    src = open_source(cfg, tmp_path / "cache")
    mask = np.asarray(src.splits.train_mask)
    n = (len(mask) - 1) // T
    learnable = [b for b in range(n) if mask[b * T + 1 : b * T + T + 1].any()]
    assert 0 < len(learnable) < n / 2  # the case this guards against is common here
    for step in range(20):
        _, y = src.train_batch(step, 0, 0)
        assert (y != IGNORE_INDEX).any(dim=1).all(), "a row with no target would make a batch's loss NaN"


def test_the_gpt_ignores_masked_targets():
    from adamw_trainer.config import ModelConfig
    from adamw_trainer.model import GPT

    torch.manual_seed(0)
    model = GPT(ModelConfig(layers=1, heads=2, width=16, context_length=8, vocab_size=32))
    x = torch.randint(0, 32, (2, 8))
    y = torch.randint(0, 32, (2, 8))
    masked = y.clone()
    masked[:, :5] = IGNORE_INDEX
    logits = model(x)
    expected = torch.nn.functional.cross_entropy(logits[:, 5:].reshape(-1, 32), y[:, 5:].reshape(-1))
    torch.testing.assert_close(model(x, masked), expected)


def test_cache_is_built_once_then_reused_and_rebuilt_when_its_inputs_change(hf_models, tmp_path):
    records = [{"text": t, "other": t.upper()} for t in texts(200)]
    path = write_jsonl(tmp_path / "data" / "a.jsonl", records)
    cache = tmp_path / "cache"
    log, out = json_log()
    first = open_source(data_cfg(hf_models, tmp_path / "data"), cache, log=log)
    assert first.cache.built and len(events(out, "token-cache-built")) == 1
    built = events(out, "token-cache-built")[0]
    assert built["documents"] == 200 and built["trainTokens"] > 0 and built["mbPerSecond"] > 0
    meta_mtime = (first.cache.path / "meta.json").stat().st_mtime_ns

    log, out = json_log()
    again = open_source(data_cfg(hf_models, tmp_path / "data"), cache, log=log, t=8)  # contextLength: a view
    assert not again.cache.built and again.cache.path == first.cache.path
    assert events(out, "token-cache-reused") and not events(out, "token-cache-built")
    assert (first.cache.path / "meta.json").stat().st_mtime_ns == meta_mtime

    other_field = open_source(data_cfg(hf_models, tmp_path / "data", textField="other"), cache)
    assert other_field.cache.built and other_field.cache.path != first.cache.path
    fraction = open_source(data_cfg(hf_models, tmp_path / "data", validationFraction=0.3), cache)
    assert fraction.cache.built and fraction.cache.path != first.cache.path

    time.sleep(0.01)
    write_jsonl(path, records + [{"text": "one more document", "other": "x"}])  # data changed
    changed = open_source(data_cfg(hf_models, tmp_path / "data"), cache)
    assert changed.cache.built and changed.cache.path != first.cache.path
    assert changed.cache.meta["documents"]["train"] + changed.cache.meta["documents"]["validation"] == 201
    assert not list(cache.glob("*.tmp-*")), "a temporary build folder was left behind"


RACE = """
import sys, time, json
from pathlib import Path
import torch
from adamw_trainer.config import DataConfig
from adamw_trainer.data import BatchSource
from adamw_trainer.progress import RunLog
go = Path(sys.argv[3])
while not go.exists():
    time.sleep(0.005)
src = BatchSource(DataConfig.model_validate(json.loads(sys.argv[1])), vocab_size=320, context_length=16,
                  batch_size=4, seed=1, device=torch.device("cpu"), cache_dir=sys.argv[2],
                  log=RunLog(enabled=True, tty=False))
x, y = src.train_batch(0, 0, 0)
print(json.dumps({"event": "result", "built": src.cache.built, "x": x.tolist()}))
"""


def test_two_processes_on_one_node_build_the_cache_once(hf_models, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in texts(6000)])
    cfg = data_cfg(hf_models, path).model_dump(by_alias=True, mode="json")
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", RACE, json.dumps(cfg), str(tmp_path / "cache"), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    time.sleep(1.0)  # both past their imports, polling for the start signal
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    logs = [[json.loads(line) for line in o[0].splitlines() if line.startswith("{")] for o in outs]
    results = [next(e for e in log if e["event"] == "result") for log in logs]
    assert sorted(r["built"] for r in results) == [False, True]
    assert results[0]["x"] == results[1]["x"]
    waiter = logs[[r["built"] for r in results].index(False)]
    assert [e["event"] for e in waiter if e["event"].startswith("token-cache")] == ["token-cache-wait",
                                                                                     "token-cache-reused"]
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 1  # one cache folder


def test_bad_inputs_are_data_errors_naming_the_field(hf_models, tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", [{"text": t} for t in texts(50)])
    with pytest.raises(DataError, match=r"data\.path: .*nope does not exist"):
        open_source(data_cfg(hf_models, tmp_path / "nope"), tmp_path / "cache")
    with pytest.raises(DataError, match=r"data\.tokenizer\.path: .*missing does not exist"):
        open_source(data_cfg(hf_models, good, tokenizer={"path": str(tmp_path / "missing")}), tmp_path / "cache")
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "fine"}, {"text": "fine too"}, {"body": "no text"}])
    with pytest.raises(DataError, match=r"bad\.jsonl:3: record has no text field 'text' \(data\.textField; "
                                        r"the record has: body\)"):
        open_source(data_cfg(hf_models, bad), tmp_path / "cache")
    pq = write_parquet(tmp_path / "p.parquet", [{"body": "x"}])
    with pytest.raises(DataError, match=r"no column 'text' \(data\.textField; columns: body\)"):
        open_source(data_cfg(hf_models, pq, source="parquet"), tmp_path / "cache")
    size = len(tokenizer(hf_models))
    with pytest.raises(DataError, match=rf"has {size} tokens but the model's vocabulary holds {size - 1} "
                                        rf"\(model\.vocabSize\); set model\.vocabSize to at least {size}"):
        open_source(data_cfg(hf_models, good), tmp_path / "cache", vocab=size - 1)
    assert not list((tmp_path / "cache").glob("*.tmp-*"))
    with pytest.raises(ConfigError, match=r"data: data\.promptField and data\.completionField go together"):
        parse_config({"data": {"source": "jsonl", "path": str(good), "tokenizer": {"path": "t"},
                               "promptField": "question"}})
    with pytest.raises(ConfigError, match=r"data\.tokenizer\.path is required"):
        parse_config({"data": {"source": "parquet", "path": str(pq)}})


def test_build_progress_on_a_terminal_and_as_json_lines(hf_models, tmp_path, monkeypatch):
    from adamw_trainer.data import cache as cache_module

    path = write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in texts(2500)])  # three read batches
    stream = io.StringIO()
    open_source(data_cfg(hf_models, path), tmp_path / "tty-cache", log=RunLog(enabled=True, stream=stream, tty=True))
    line = stream.getvalue()
    assert "\rtoken cache: 1,024 documents" in line and "tokens" in line and "MB/s" in line
    assert "[token-cache-built]" in line

    monkeypatch.setattr(cache_module, "PROGRESS_SECONDS", 0.0)  # a JSON line per read batch
    log, out = json_log()
    open_source(data_cfg(hf_models, path), tmp_path / "json-cache", log=log)
    progress = events(out, "token-cache-progress")
    assert [p["documents"] for p in progress] == [1024, 2048, 2500]
    assert all(p["tokens"] > 0 and p["mbPerSecond"] > 0 and p["megabytes"] > 0 for p in progress)
