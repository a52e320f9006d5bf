"""A model that cannot be built as configured is a permanent config error: `adamw-train`
exits 2 (InvalidConfig, never restarted) naming the camelCase field and the fix.

The cases in SUBPROCESS run the real `adamw-train` (each pays the torch and transformers
imports, ~5 s here); IN_PROCESS ones check the same ModelError without a process."""

from __future__ import annotations

import json

import pytest
from hf_models import EXAMPLE_MODELS, hf_models_fixture, hf_trainer_config  # noqa: F401
from trainer_process import run_trainer, write_config

SUBPROCESS = {
    "missing-path": (
        lambda m, tmp: {"model": {"source": "huggingface", "huggingface": {"path": str(tmp / "no-such-model")}}},
        ["model.huggingface.path", "does not exist", "mount the volume"],
    ),
    "context-too-long": (
        lambda m, tmp: {"model": {"source": "huggingface", "contextLength": 128,
                                  "huggingface": {"path": str(m.llama)}}},
        ["model.contextLength is 128", "at most 64", "set model.contextLength to 64 or less"],
    ),
    "entry-point-does-not-import": (
        lambda m, tmp: {"model": {"source": "python", "python": {"entrypoint": "no_such_package.models:build"}}},
        ["model.python.entrypoint", "cannot import 'no_such_package.models'", "PYTHONPATH"],
    ),
    "bfloat16-weights-without-lora": (  # refused by the config, before torch is imported
        lambda m, tmp: {"model": {"source": "huggingface", "huggingface": {"path": str(m.llama), "dtype": "bfloat16"}}},
        ["model.huggingface.dtype 'bfloat16'", "finetune.lora"],
    ),
    "lora-on-the-gpt": (
        lambda m, tmp: {"finetune": {"lora": {"rank": 4}}},
        ["finetune.lora needs model.source 'huggingface' or 'python'"],
    ),
}


IN_PROCESS = {
    "pickled-weights-only": (
        lambda m, tmp: {"model": {"source": "huggingface", "huggingface": {"path": str(pickled_dir(m, tmp))}}},
        ["model.huggingface.path", "no *.safetensors", "pytorch_model.bin"],
    ),
    "entry-point-has-no-function": (
        lambda m, tmp: {"model": {"source": "python", "python": {"entrypoint": "tiny_lm:nope"}}},
        ["model.python.entrypoint", "has no function 'nope'"],
    ),
    "byte-data-for-a-small-vocabulary": (
        lambda m, tmp: {"model": {"source": "huggingface", "huggingface": {"config": {
            "model_type": "gpt2", "n_layer": 1, "n_embd": 16, "n_head": 2, "vocab_size": 100}}},
            "data": {"source": "stdlib"}},
        ["vocabulary has 100 tokens", "byte-level"],
    ),
    "entry-point-raises": (
        lambda m, tmp: {"model": {"source": "python", "python": {"entrypoint": "tiny_lm:build",
                                                                 "options": {"width": "wide"}}}},
        ["model.python.entrypoint", "tiny_lm:build raised ValueError", "model.python.options"],
    ),
    "init-from-missing": (
        lambda m, tmp: {"finetune": {"initFrom": str(tmp / "gone")}},
        ["finetune.initFrom", "does not exist"],
    ),
}


def pickled_dir(models, tmp):
    """A model directory with a config.json and only pickled weights."""
    d = tmp / "pickled"
    d.mkdir()
    (d / "config.json").write_text((models.llama / "config.json").read_text())
    (d / "pytorch_model.bin").write_bytes(b"not loaded")
    return d


@pytest.mark.parametrize("case", list(SUBPROCESS))
def test_model_problems_exit_2_naming_the_field(tmp_path, hf_models, case):
    make, expected = SUBPROCESS[case]
    groups = make(hf_models, tmp_path)
    cfg = hf_trainer_config(tmp_path, groups.pop("model", {}), **groups)
    done = run_trainer(write_config(tmp_path, cfg), timeout=120, PYTHONPATH=str(EXAMPLE_MODELS))
    assert done.returncode == 2, done.stderr[-2000:]
    for text in expected:
        assert text in done.stderr, done.stderr[-2000:]
    msg = json.loads((tmp_path / "termination-log").read_text())
    assert msg["reason"] == "InvalidConfig" and msg["exitCode"] == 2 and expected[0] in msg["message"]


@pytest.mark.parametrize("case", list(IN_PROCESS))
def test_model_problems_are_model_errors(tmp_path, hf_models, case, monkeypatch):
    from adamw_trainer.config import TrainerConfig
    from adamw_trainer.finetune import prepare
    from adamw_trainer.models import ModelError, build_model

    monkeypatch.syspath_prepend(str(EXAMPLE_MODELS))
    make, expected = IN_PROCESS[case]
    groups = make(hf_models, tmp_path)
    cfg = TrainerConfig.model_validate(hf_trainer_config(tmp_path, groups.pop("model", {}), **groups))
    with pytest.raises(ModelError) as err:
        prepare(build_model(cfg), cfg)
    for text in expected:
        assert text in str(err.value)
