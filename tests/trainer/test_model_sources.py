"""model.source: huggingface (from a directory and from a config) and python (the example
entry point) train with falling loss under the real Trainer; the -100 label contract;
finetune.initFrom from a Hugging Face directory and from a trainer checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hf_models import (  # noqa: F401  (hf_models_fixture: the `hf_models` fixture)
    EXAMPLE_MODELS,
    GPT2_CONFIG,
    LLAMA_CONFIG,
    hf_models_fixture,
    hf_trainer_config,
    losses,
    train_in_process,
)


def test_llama_from_a_directory_trains_with_falling_loss(tmp_path, hf_models):
    cfg = hf_trainer_config(tmp_path, {"source": "huggingface", "huggingface": {"path": str(hf_models.llama)}})
    code, events, trainer = train_in_process(cfg)
    assert code == 0
    loss = losses(events)
    assert loss[-1] < loss[0] - 1.0, loss  # ln 300 = 5.7 at the start
    start = next(e for e in events if e["event"] == "start")
    assert start["modelSource"] == "huggingface" and start["trainableParameters"] == start["parameters"]
    assert trainer.data.vocab_size == 300  # from the model's config, not model.vocabSize


def test_gpt2_from_a_config_trains_with_falling_loss(tmp_path):
    cfg = hf_trainer_config(tmp_path, {"source": "huggingface", "huggingface": {"config": GPT2_CONFIG}})
    code, events, trainer = train_in_process(cfg)
    assert code == 0
    loss = losses(events)
    assert loss[-1] < loss[0] - 1.0, loss
    assert type(trainer.raw_model.lm).__name__ == "GPT2LMHeadModel"


def test_the_python_entry_point_example_trains(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE_MODELS))
    cfg = hf_trainer_config(
        tmp_path,
        {"source": "python", "vocabSize": 256, "python": {"entrypoint": "tiny_lm:build",
                                                         "options": {"width": 32, "layers": 2}}},
    )
    code, events, trainer = train_in_process(cfg)
    assert code == 0
    loss = losses(events)
    assert loss[-1] < loss[0] - 1.0, loss
    assert type(trainer.raw_model).__name__ == "TinyLM"
    assert trainer.raw_model.embed.embedding_dim == 32  # options reached the entry point


def test_hf_loss_ignores_targets_of_minus_100(hf_models):
    from adamw_trainer.config import HuggingFaceModelConfig, TrainerConfig
    from adamw_trainer.models import build_model

    cfg = TrainerConfig(model={"source": "huggingface", "contextLength": 16,
                               "huggingface": HuggingFaceModelConfig(path=str(hf_models.llama))})
    model = build_model(cfg).module
    x = torch.randint(0, 300, (2, 16))
    y = torch.randint(0, 300, (2, 16))
    masked = y.clone()
    masked[:, :10] = -100  # e.g. prompt tokens
    with torch.no_grad():
        logits = model(x)
        want = torch.nn.functional.cross_entropy(logits[:, 10:].reshape(-1, 300), y[:, 10:].reshape(-1))
        # The targets are used as given (already shifted): no second shift inside.
        assert torch.allclose(model(x, masked), want, atol=1e-6)
        assert not torch.allclose(model(x, y), want, atol=1e-3)


def test_init_from_a_hugging_face_directory_and_a_checkpoint(tmp_path, hf_models):
    from adamw_trainer.config import TrainerConfig
    from adamw_trainer.finetune import prepare
    from adamw_trainer.models import build_model
    from safetensors.torch import load_file

    saved = load_file(hf_models.llama / "model.safetensors")
    # A random-init llama of the same shape, starting from the directory's weights.
    cfg = TrainerConfig(model={"source": "huggingface", "contextLength": 32,
                               "huggingface": {"config": LLAMA_CONFIG}},
                        finetune={"initFrom": str(hf_models.llama)})
    torch.manual_seed(0)
    built = build_model(cfg)
    assert not torch.equal(built.module.lm.state_dict()["model.embed_tokens.weight"], saved["model.embed_tokens.weight"])
    prepare(built, cfg)
    state = built.module.lm.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items())

    # A run's checkpoint as the start of another run (which then trains on from there).
    run = hf_trainer_config(tmp_path / "a", {"source": "huggingface", "huggingface": {"config": LLAMA_CONFIG}},
                            training={"maxSteps": 5})
    (tmp_path / "a").mkdir()
    code, _, first = train_in_process(run)
    assert code == 0
    trained = {k: v.clone() for k, v in first.raw_model.state_dict().items()}
    cfg = TrainerConfig.model_validate({
        **run, "checkpoint": {"dir": str(tmp_path / "b")},
        "finetune": {"initFrom": str(tmp_path / "a" / "checkpoints")},
    })
    built = build_model(cfg)
    prepare(built, cfg)
    assert all(torch.equal(built.module.state_dict()[k], v) for k, v in trained.items())


@pytest.mark.parametrize("source", ["huggingface", "python"])
def test_a_missing_lora_target_is_a_model_error(hf_models, source, monkeypatch):
    from adamw_trainer.config import TrainerConfig
    from adamw_trainer.finetune import prepare
    from adamw_trainer.models import ModelError, build_model

    monkeypatch.syspath_prepend(str(EXAMPLE_MODELS))
    model = ({"source": "huggingface", "huggingface": {"path": str(hf_models.llama)}} if source == "huggingface"
             else {"source": "python", "python": {"entrypoint": "tiny_lm:build", "options": {"width": 32}}})
    cfg = TrainerConfig.model_validate({"model": {**model, "contextLength": 32},
                                        "finetune": {"lora": {"targetModules": ["no_such_layer"]}}})
    built = build_model(cfg)
    with pytest.raises(ModelError, match="finetune.lora.targetModules"):
        prepare(built, cfg)


def test_the_custom_model_dockerfile_is_hadolint_clean():
    import shutil
    import subprocess
    import sys

    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    dockerfile = EXAMPLE_MODELS / "Dockerfile"
    done = subprocess.run([hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "COPY tiny_lm" in dockerfile.read_text()


def test_validating_model_and_finetune_sections_imports_no_ml_library():
    """The operator validates these sections too; its image has no torch or transformers."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from adamw_trainer.config import parse_config\n"
        "parse_config({'model': {'source': 'huggingface', 'huggingface': {'path': '/m'}},\n"
        "              'finetune': {'initFrom': '/c', 'lora': {'rank': 4}}})\n"
        "parse_config({'model': {'source': 'python', 'python': {'entrypoint': 'a.b:c'}}})\n"
        "print(sorted(m for m in ('torch', 'transformers', 'peft', 'safetensors') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
