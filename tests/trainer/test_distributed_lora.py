"""Two ranks (gloo, DDP) fine-tune a Hugging Face model with LoRA: DDP all-reduces only the
adapters' gradients (the frozen base has none), both ranks finish, and rank 0's checkpoint
holds the adapters only."""

from __future__ import annotations

import subprocess

import pytest
import torch
from adamw_trainer.checkpoint.store import CheckpointStore
from hf_models import hf_models_fixture, hf_trainer_config  # noqa: F401
from trainer_process import free_port, json_events, trainer_cmd, trainer_env, write_config

WORLD = 2


@pytest.mark.slow
def test_two_ranks_train_lora_adapters_together(tmp_path, hf_models):
    master = str(free_port())
    procs = []
    for rank in range(WORLD):
        cfg = hf_trainer_config(
            tmp_path, {"source": "huggingface", "huggingface": {"path": str(hf_models.llama)}},
            finetune={"lora": {"rank": 4, "alpha": 8}}, training={"maxSteps": 20},
            terminationMessagePath=str(tmp_path / f"termination-log-{rank}"),
        )
        env = trainer_env(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=master)
        procs.append(subprocess.Popen(trainer_cmd(write_config(tmp_path, cfg, name=f"rank{rank}.yaml")),
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=180)
        finally:
            p.kill()
        results.append((p.returncode, out, err))
    assert [code for code, _, _ in results] == [0, 0], [err[-2000:] for _, _, err in results]
    start = json_events(results[0][1], "start")[0]
    assert start["worldSize"] == 2 and start["trainableParameters"] < start["parameters"] / 5
    info = CheckpointStore(tmp_path / "checkpoints").verify(20)
    saved = torch.load(info.path / "model.pt", weights_only=True)
    assert saved and all("lora_" in k for k in saved)
    assert info.meta.world_size == 2
