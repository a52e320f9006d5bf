"""LoRA fine-tuning: only the adapters train, the frozen base stays bit-identical and never
enters the optimizer, and checkpoints hold just the adapters and their AdamW state."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hf_models import EXAMPLE_MODELS, hf_models_fixture, hf_trainer_config, train_in_process  # noqa: F401

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, hf_models):
    """A full fine-tune of the tiny llama: a base that knows the task a little (and the
    full checkpoint to compare sizes with)."""
    tmp = tmp_path_factory.mktemp("pretrained")
    cfg = hf_trainer_config(tmp, {"source": "huggingface", "huggingface": {"path": str(hf_models.llama)}},
                            training={"maxSteps": 30})
    code, _, _ = train_in_process(cfg)
    assert code == 0
    return tmp / "checkpoints"


def checkpoint_bytes(step_dir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in step_dir.iterdir() if p.suffix == ".pt"}


def test_lora_trains_adapters_only_and_checkpoints_only_them(tmp_path, hf_models, pretrained):
    from adamw_trainer.checkpoint.store import CheckpointStore
    from adamw_trainer.config import TrainerConfig
    from adamw_trainer.finetune import prepare
    from adamw_trainer.models import build_model

    cfg = hf_trainer_config(
        tmp_path, {"source": "huggingface", "huggingface": {"path": str(hf_models.llama)}},
        finetune={"initFrom": str(pretrained), "lora": {"rank": 4, "alpha": 8, "targetModules": ALL_LINEAR}},
        optimizer={"lr": 3e-2, "weightDecay": 0.1}, schedule={"warmupSteps": 2},
    )
    # What the base is before training: built the same way, outside the trainer.
    torch.manual_seed(cfg["training"].get("seed", 1337))
    reference = build_model(TrainerConfig.model_validate(cfg))
    prepare(reference, TrainerConfig.model_validate(cfg))
    before = {k: v.clone() for k, v in reference.module.state_dict().items()}
    del reference

    code, events, trainer = train_in_process(cfg)
    assert code == 0
    model = trainer.raw_model
    after = model.state_dict()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert all("lora_" not in n for n in frozen)
    # The frozen base is bit-identical after training (weight decay is on: it would show).
    assert all(torch.equal(after[n], before[n]) for n in frozen)
    assert all(not torch.equal(after[n], before[n]) for n in trainable if "lora_B" in n)  # B starts at 0
    # Frozen parameters never enter the optimizer.
    in_optimizer = {id(p) for g in trainer.optimizer.optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in model.parameters() if p.requires_grad}
    start = next(e for e in events if e["event"] == "start")
    assert start["trainableParameters"] == sum(p.numel() for p in model.parameters() if p.requires_grad)

    # Held-out loss falls (the adapters learn; the base alone is where it started).
    batches = [trainer.data.train_batch(10_000 + i, 0, 0) for i in range(8)]
    with torch.no_grad():
        tuned = sum(model(x, y).item() for x, y in batches)
        with model.lm.disable_adapter():
            base = sum(model(x, y).item() for x, y in batches)
    assert tuned < base - 0.05, (tuned, base)

    # The checkpoint holds the adapters and their AdamW state only.
    info = CheckpointStore(tmp_path / "checkpoints").verify(40)
    saved = torch.load(info.path / "model.pt", weights_only=True)
    assert set(saved) == trainable
    opt = torch.load(info.path / "optimizer.pt", weights_only=True)["optimizer"]
    assert len(opt["state"]) == len(trainable)
    lora_bytes = checkpoint_bytes(info.path)
    full_bytes = checkpoint_bytes(CheckpointStore(pretrained).newest_valid().path)
    ratio = (lora_bytes["model.pt"] + lora_bytes["optimizer.pt"]) / (full_bytes["model.pt"] + full_bytes["optimizer.pt"])
    print(f"LoRA checkpoint (model+optimizer) {lora_bytes} vs full {full_bytes}: ratio {ratio:.3f}")
    # 2 layers of width 32: adapters of rank 4 on all 7 linears are ~22% of the weights
    # (embeddings excluded); on a real model the ratio is far below 1%.
    assert ratio < 0.35


def test_lora_on_a_python_model(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE_MODELS))
    cfg = hf_trainer_config(
        tmp_path,
        {"source": "python", "vocabSize": 256, "python": {"entrypoint": "tiny_lm:build", "options": {"width": 32}}},
        finetune={"lora": {"rank": 4, "targetModules": ["qkv", "proj"]}},
        training={"maxSteps": 10},
    )
    code, _, trainer = train_in_process(cfg)
    assert code == 0
    trainable = [n for n, p in trainer.raw_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and (".qkv." in n or ".proj." in n) for n in trainable)
    assert len(trainable) == 2 * 2 * 2  # 2 blocks x (qkv, proj) x (A, B)


def test_the_finetune_lora_example_runs_with_local_paths(tmp_path, hf_models):
    """examples/finetune-lora.yaml's trainer section, with its volume paths pointed at the
    tiny llama and a jsonl file written here, CPU-sized: the LoRA run trains on the
    completion tokens and checkpoints only the adapters."""
    import json
    import math

    import yaml
    from adamw_trainer.checkpoint.store import CheckpointStore

    docs = yaml.safe_load_all((EXAMPLE_MODELS.parent / "finetune-lora.yaml").read_text())
    trainer = next(d for d in docs if d.get("kind") == "AdamWTrainingJob")["spec"]["trainer"]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(
        json.dumps({"prompt": f"Which moment decays in step {i}?", "completion": f" The moment {i % 7}."}) + "\n"
        for i in range(300)
    ))
    trainer["device"] = "cpu"
    trainer["model"]["contextLength"] = 32
    trainer["model"]["huggingface"].update(path=str(hf_models.llama), dtype="float32")
    trainer["data"].update(path=str(data), tokenizer={"path": str(hf_models.llama)},
                           cacheDir=str(tmp_path / "cache"), evalIntervalSteps=0)
    trainer["optimizer"]["lr"] = 3e-2
    trainer["schedule"]["warmupSteps"] = 2
    trainer["training"] = {"maxSteps": 30, "batchSize": 4, "gradAccumulationSteps": 1,
                           "logIntervalSteps": 10, "threads": 1}
    trainer["checkpoint"]["dir"] = str(tmp_path / "checkpoints")
    trainer.update(metrics={"port": 0}, terminationMessagePath=str(tmp_path / "termination-log"))
    code, events, run = train_in_process(trainer)
    assert code == 0
    curve = [e["loss"] for e in events if e["event"] == "train"]
    assert all(math.isfinite(v) for v in curve) and curve[-1] < curve[0], curve
    saved = torch.load(CheckpointStore(tmp_path / "checkpoints").verify(30).path / "model.pt", weights_only=True)
    assert saved and all("lora_" in k for k in saved)


def test_a_diverging_lora_run_rolls_back_to_its_last_good_adapters(tmp_path, hf_models, monkeypatch):
    """NaN steps under LoRA: skipped, then an in-process rollback to the last known-good
    adapter checkpoint, and training finishes; the frozen base is untouched throughout."""
    from safetensors.torch import load_file

    monkeypatch.setenv("ADAMW_FAULT_NAN_GRAD_STEPS", "22-40")
    monkeypatch.setenv("ADAMW_FAULT_NAN_GRAD_UNTIL_ROLLBACKS", "1")
    cfg = hf_trainer_config(
        tmp_path, {"source": "huggingface", "huggingface": {"path": str(hf_models.llama)}},
        finetune={"lora": {"rank": 4}}, training={"maxSteps": 40},
        checkpoint={"intervalSteps": 5, "keepLatest": 1},
        divergence={"maxConsecutiveNonfiniteSteps": 3, "action": "Rollback", "maxRollbacks": 2},
    )
    code, events, trainer = train_in_process(cfg)
    assert code == 0
    rollbacks = [e for e in events if e["event"] == "rollback"]
    assert len(rollbacks) == 1 and rollbacks[0]["toStep"] == 20, rollbacks
    base = load_file(hf_models.llama / "model.safetensors")
    state = trainer.raw_model.lm.get_base_model().state_dict()
    for name, tensor in base.items():
        key = name.replace(".q_proj.weight", ".q_proj.base_layer.weight").replace(".v_proj.weight", ".v_proj.base_layer.weight")
        assert torch.equal(state[key], tensor), name
