"""The real `adamw-train` on jsonl documents with a BPE tokenizer: loss falls, the cache is reused,
bad data exits 2 naming the file and line."""

from __future__ import annotations

import json
import math

import pytest
from data_fixtures import instruction, texts, write_jsonl, write_parquet
from hf_models import hf_models_fixture, hf_trainer_config, losses, train_in_process  # noqa: F401
from trainer_process import json_events, run_trainer, small_config, write_config


def jsonl_config(tmp_path, hf_models, data_path, **groups):
    cfg = small_config(
        tmp_path,
        model={"layers": 2, "heads": 2, "width": 64, "contextLength": 32, "vocabSize": 320},
        data={"source": "jsonl", "path": str(data_path), "tokenizer": {"path": str(hf_models.tokenizer)},
              "cacheDir": str(tmp_path / "token-cache"), "evalIntervalSteps": 60, "evalBatches": 2,
              "validationFraction": 0.1},
        optimizer={"lr": 3e-3, "noDecay": ["embedding"]},
        schedule={"warmupSteps": 5},
        training={"maxSteps": 60, "batchSize": 8, "logIntervalSteps": 10, "threads": 1},
        checkpoint={"dir": str(tmp_path / "checkpoints"), "intervalSteps": 0, "resume": False},
    )
    for group, values in groups.items():
        cfg[group].update(values)
    return cfg


@pytest.mark.slow
def test_gpt_trains_on_jsonl_with_a_tokenizer_and_the_cache_is_reused(tmp_path, hf_models):
    data = write_jsonl(tmp_path / "data" / "corpus.jsonl", [{"text": t} for t in texts(2000)])
    done = run_trainer(write_config(tmp_path, jsonl_config(tmp_path, hf_models, data)))
    assert done.returncode == 0, done.stderr[-3000:]
    built = json_events(done.stdout, "token-cache-built")
    assert len(built) == 1 and built[0]["documents"] == 2000
    groups = json_events(done.stdout, "param-groups")[0]["groups"]
    assert set(groups) == {"no_decay", "decay"} and groups["no_decay"]["weightDecay"] == 0.0
    train = json_events(done.stdout, "train")
    first, last = train[0]["loss"], train[-1]["loss"]
    # Uniform over 320 tokens is ln 320 = 5.8; the templated documents are easy to learn.
    assert first > 4.0 and last < first - 1.5, (first, last)
    assert all(math.isfinite(t["loss"]) and t["nonfiniteSteps"] == 0 for t in train)
    evals = json_events(done.stdout, "eval")
    assert evals and evals[-1]["validationLoss"] < first - 1.0

    # A second start (another run, same data and cache) reuses the cache.
    cfg = jsonl_config(tmp_path, hf_models, data, training={"maxSteps": 2})
    cfg["checkpoint"]["dir"] = str(tmp_path / "checkpoints-2")
    again = run_trainer(write_config(tmp_path, cfg, "again.yaml"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert json_events(again.stdout, "token-cache-reused") and not json_events(again.stdout, "token-cache-built")


@pytest.mark.slow
def test_a_record_without_the_text_field_exits_2_naming_file_and_line(tmp_path, hf_models):
    records = [{"text": t} for t in texts(20)] + [{"content": "the wrong field"}]
    data = write_jsonl(tmp_path / "bad.jsonl", records)
    done = run_trainer(write_config(tmp_path, jsonl_config(tmp_path, hf_models, data)))
    assert done.returncode == 2, done.stderr[-3000:]
    message = json.loads((tmp_path / "termination-log").read_text())
    assert message["reason"] == "InvalidConfig"
    assert f"{data}:21: record has no text field 'text' (data.textField" in message["message"]
    assert "bad.jsonl:21" in done.stderr


@pytest.mark.slow
def test_hf_model_on_parquet_instruction_data_with_its_own_tokenizer_and_groups(tmp_path, hf_models):
    data = write_parquet(tmp_path / "sft.parquet", [instruction(i) for i in range(400)])
    cfg = hf_trainer_config(
        tmp_path, {"source": "huggingface", "huggingface": {"path": str(hf_models.llama)}},
        data={"source": "parquet", "path": str(data), "promptField": "question", "completionField": "answer",
              "cacheDir": str(tmp_path / "cache")},
        optimizer={"lr": 1e-2, "weightDecay": 0.1, "noDecay": ["bias", "norm", "embedding"],
                   "groups": [{"name": "attention", "match": r"self_attn\.", "lrScale": 0.5}]},
    )
    code, events, trainer = train_in_process(cfg)
    assert code == 0
    assert trainer.cfg.data.tokenizer.path == str(hf_models.llama)  # defaulted to the model's directory
    assert [e for e in events if e["event"] == "token-cache-built"]
    groups = next(e for e in events if e["event"] == "param-groups")["groups"]
    assert set(groups) == {"attention", "no_decay", "decay"}, groups
    assert groups["attention"]["lrScale"] == 0.5 and groups["no_decay"]["weightDecay"] == 0.0
    lrs = {g["name"]: g["lr"] for g in trainer.optimizer.optimizer.param_groups}
    assert lrs["attention"] == pytest.approx(lrs["decay"] * 0.5)
    curve = losses(events)
    assert all(math.isfinite(v) for v in curve) and curve[-1] < curve[0] - 0.5, curve
