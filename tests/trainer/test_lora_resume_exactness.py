"""Exact resume under LoRA: a fine-tune SIGKILLed at random moments (one mid-checkpoint-
write) and restarted each time ends bit-identical to one never interrupted. The frozen
base is not in the checkpoints: every start rebuilds it from the model directory, and
the adapters, their AdamW moments and the RNG streams (LoRA dropout draws from them)
come from the checkpoint."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest
import torch
from hf_models import hf_models_fixture, hf_trainer_config  # noqa: F401
from test_resume_exactness import (
    assert_bit_identical,
    final_state,
    progress,
    tmp_dirs,
    wait_for_write,
)
from trainer_process import (
    free_port,
    json_events,
    run_trainer,
    trainer_cmd,
    trainer_env,
    wait_for_status,
    write_config,
)

MAX_STEPS = 300


def config(tmp_path: Path, model_dir: Path, port: int = 0) -> Path:
    cfg = hf_trainer_config(
        tmp_path, {"source": "huggingface", "huggingface": {"path": str(model_dir)}},
        finetune={"lora": {"rank": 4, "alpha": 8, "dropout": 0.1}},
        training={"maxSteps": MAX_STEPS, "logIntervalSteps": 10, "batchSize": 4},
        metrics={"port": port, "host": "127.0.0.1"},
        checkpoint={"intervalSteps": 20, "keepLatest": 2},
    )
    return write_config(tmp_path, cfg, name=f"trainer-{port}.yaml")


@pytest.mark.slow
def test_lora_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path, hf_models):
    ref_dir, run_dir = tmp_path / "reference", tmp_path / "interrupted"
    ref_dir.mkdir()
    run_dir.mkdir()
    ref = run_trainer(config(ref_dir, hf_models.llama))
    assert ref.returncode == 0, ref.stderr[-2000:]

    rng = random.Random(20261202)
    ckpt_dir = run_dir / "checkpoints"
    log = []
    for moment in ["training", "checkpoint-write", "training"]:
        port = free_port()
        env = {"ADAMW_FAULT_CHECKPOINT_WRITE_DELAY_SECONDS": "0.2"} if moment == "checkpoint-write" else {}
        proc = subprocess.Popen(
            trainer_cmd(config(run_dir, hf_models.llama, port)), env=trainer_env(**env),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        try:
            start = wait_for_status(port, proc, timeout=120).get("step") or 0
            if moment == "training":
                # Past the next checkpoint (every 20 steps), so the restart has one to resume.
                progress(port, proc, beyond=start + rng.randint(25, 70))
            else:
                progress(port, proc, beyond=start)
                wait_for_write(ckpt_dir, proc)
            assert proc.poll() is None, f"trainer exited ({proc.returncode}) before the {moment} kill"
            proc.kill()
            out, _ = proc.communicate(timeout=30)
        finally:
            proc.kill()
        assert proc.returncode == -9
        resumed = json_events(out, "resumed")
        log.append((moment, resumed[0]["step"] if resumed else None, tmp_dirs(ckpt_dir)))

    final = run_trainer(config(run_dir, hf_models.llama))
    assert final.returncode == 0, final.stderr[-2000:]
    resumed_steps = [s for _, s, _ in log if s is not None] + [json_events(final.stdout, "resumed")[0]["step"]]
    print("kills (moment, resumed-from, leftovers):", log)
    assert len(resumed_steps) >= 3 and resumed_steps == sorted(resumed_steps) and resumed_steps[-1] < MAX_STEPS, log

    ref_state, run_state = final_state(ref_dir / "checkpoints", MAX_STEPS), final_state(ckpt_dir, MAX_STEPS)
    assert all("lora_" in name for name in run_state["model.pt"])  # adapters only
    assert_bit_identical(ref_state, run_state)
    assert not torch.equal(  # and they trained (B starts at zero)
        next(v for k, v in run_state["model.pt"].items() if "lora_B" in k), torch.zeros(1)
    )
