"""`adamw-train export`: the Hugging Face directory it writes loads offline with
`AutoModelForCausalLM.from_pretrained(out, local_files_only=True)` (or peft's
`PeftModel.from_pretrained` for an adapter) and gives the training model's logits.

Tolerances (float32, CPU): a full export and an adapter compute exactly what training
computed, up to kernel choice: atol 1e-5. Merging folds B A into W, which rounds
differently from W x + B (A x): atol 1e-4.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from hf_models import (  # noqa: F401
    EXAMPLE_MODELS,
    GPT2_CONFIG,
    hf_models_fixture,
    hf_trainer_config,
    train_in_process,
)
from trainer_process import small_config, trainer_env

TIGHT = dict(atol=1e-5, rtol=0)
MERGED = dict(atol=1e-4, rtol=0)


def training_logits(trainer, x):
    trainer.raw_model.eval()
    with torch.no_grad():
        return trainer.raw_model(x)


def hf_logits(out, x):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    with torch.no_grad():
        return model(input_ids=x).logits


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, hf_models):
    """A LoRA run on the tiny llama directory (adapters on q/v: peft's llama default)."""
    tmp = tmp_path_factory.mktemp("lora")
    cfg = hf_trainer_config(tmp, {"source": "huggingface", "huggingface": {"path": str(hf_models.llama)}},
                            finetune={"lora": {"rank": 4, "alpha": 8}}, training={"maxSteps": 10})
    code, _, trainer = train_in_process(cfg)
    assert code == 0
    return tmp / "checkpoints" / "step-10", trainer


def test_full_model_export_round_trips_with_the_tokenizer(tmp_path, hf_models):
    from adamw_trainer.export import export
    from transformers import AutoTokenizer

    cfg = hf_trainer_config(tmp_path, {"source": "huggingface", "huggingface": {"path": str(hf_models.llama)}},
                            training={"maxSteps": 10})
    code, _, trainer = train_in_process(cfg)
    assert code == 0
    out = tmp_path / "exported"
    written = export(tmp_path / "checkpoints", out)  # the directory: its newest step
    assert written["format"] == "full" and written["checkpoint"].endswith("step-10")
    x = torch.randint(0, 300, (2, 32))
    assert torch.allclose(hf_logits(out, x), training_logits(trainer, x), **TIGHT)
    assert not torch.allclose(hf_logits(hf_models.llama, x), training_logits(trainer, x), **TIGHT)  # it trained
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert tok.eos_token == "</s>" and tok.decode(tok("moments")["input_ids"]) == "moments"


def test_lora_merged_export_by_the_cli(tmp_path, lora_run):
    step_dir, trainer = lora_run
    out = tmp_path / "merged"
    done = subprocess.run(
        [sys.executable, "-m", "adamw_trainer", "export", "--checkpoint", str(step_dir), "--out", str(out), "--merge"],
        env=trainer_env(), capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1])["format"] == "merged"
    assert not (out / "adapter_config.json").exists()
    x = torch.randint(0, 300, (2, 32))
    assert torch.allclose(hf_logits(out, x), training_logits(trainer, x), **MERGED)


def test_lora_adapter_export_is_peft_format(tmp_path, lora_run, hf_models):
    from adamw_trainer.export import export
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    step_dir, trainer = lora_run
    out = tmp_path / "adapter"
    written = export(step_dir, out)
    assert written["format"] == "peft-adapter" and written["baseModel"] == str(hf_models.llama)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8 and set(config["target_modules"]) == {"q_proj", "v_proj"}
    assert not (out / "model.safetensors").exists()  # the adapter only
    base = AutoModelForCausalLM.from_pretrained(hf_models.llama, local_files_only=True)
    model = PeftModel.from_pretrained(base, out).eval()
    x = torch.randint(0, 300, (2, 32))
    with torch.no_grad():
        logits = model(input_ids=x).logits
    assert torch.allclose(logits, training_logits(trainer, x), **TIGHT)


def test_lora_on_a_random_init_base_exports_the_base_too(tmp_path):
    from adamw_trainer.export import export
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = hf_trainer_config(tmp_path, {"source": "huggingface", "huggingface": {"config": GPT2_CONFIG}},
                            finetune={"lora": {"rank": 2}}, training={"maxSteps": 5})
    code, _, trainer = train_in_process(cfg)
    assert code == 0
    written = export(tmp_path / "checkpoints", tmp_path / "adapter")
    assert written["base"] == str(tmp_path / "adapter" / "base")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "adapter" / "base", local_files_only=True)
    model = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    x = torch.randint(0, 300, (2, 32))
    with torch.no_grad():
        assert torch.allclose(model(input_ids=x).logits, training_logits(trainer, x), **TIGHT)


def test_the_built_in_gpt_exports_as_gpt2(tmp_path):
    from adamw_trainer.export import ExportError, export

    cfg = small_config(tmp_path, model={"layers": 2, "heads": 2, "width": 32, "contextLength": 32},
                       training={"maxSteps": 5, "batchSize": 4, "logIntervalSteps": 5, "threads": 1})
    code, _, trainer = train_in_process(cfg)
    assert code == 0
    out = tmp_path / "gpt2"
    assert export(tmp_path / "checkpoints", out)["format"] == "gpt2"
    with pytest.raises(ExportError, match="no finetune.lora"):
        export(tmp_path / "checkpoints", tmp_path / "merged", merge=True)
    assert json.loads((out / "config.json").read_text())["model_type"] == "gpt2"
    x = torch.randint(0, 256, (2, 32))
    assert torch.allclose(hf_logits(out, x), training_logits(trainer, x), **TIGHT)


def test_python_models_are_refused(tmp_path, monkeypatch):
    from adamw_trainer.export import ExportError, export

    monkeypatch.syspath_prepend(str(EXAMPLE_MODELS))
    cfg = hf_trainer_config(
        tmp_path, {"source": "python", "vocabSize": 256, "python": {"entrypoint": "tiny_lm:build",
                                                                   "options": {"width": 32}}},
        training={"maxSteps": 2},
    )
    assert train_in_process(cfg)[0] == 0
    with pytest.raises(ExportError, match="model.source python"):
        export(tmp_path / "checkpoints", tmp_path / "out")
