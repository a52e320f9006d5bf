"""`adamw-train --config FILE`: validate the config, train, exit with the contract's code.

    adamw-train --config examples/quickstart-trainer.yaml
    python -m adamw_trainer --config job.yaml
    torchrun --nproc_per_node 2 -m adamw_trainer --config job.yaml
    adamw-train export --checkpoint DIR --out DIR [--merge]    # a Hugging Face directory

Environment overrides (for several "pods" sharing one host, and the operator):
ADAMW_METRICS_HOST → metrics.host, ADAMW_METRICS_PORT → metrics.port,
ADAMW_CHECKPOINT_DIR → checkpoint.dir. The config hash is taken before overrides, so
every rank of a job reports the same hash.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from .config import (
    CONFIG_SCHEMA_VERSION,
    ConfigError,
    TrainerConfig,
    format_validation_error,
    load_config,
)
from .exit_codes import ExitCode, ExitReason, TerminationMessage, reason_for_exit_code

# env var -> (config group, field)
ENV_OVERRIDES = {
    "ADAMW_METRICS_HOST": ("metrics", "host"),
    "ADAMW_METRICS_PORT": ("metrics", "port"),
    "ADAMW_CHECKPOINT_DIR": ("checkpoint", "dir"),
}


def apply_env_overrides(
    cfg: TrainerConfig, environ: Mapping[str, str] | None = None
) -> tuple[TrainerConfig, dict[str, str]]:
    """A copy of `cfg` with the ADAMW_* overrides applied, and what was applied."""
    from pydantic import ValidationError

    env = os.environ if environ is None else environ
    data = cfg.to_dict()
    applied: dict[str, str] = {}
    for var, (group, field) in ENV_OVERRIDES.items():
        if env.get(var):
            data[group][field] = env[var]
            applied[var] = env[var]
    if not applied:
        return cfg, applied
    try:
        return TrainerConfig.model_validate(data), applied
    except ValidationError as err:
        problems = [f"{line} (from environment {', '.join(applied)})" for line in format_validation_error(err)]
        raise ConfigError(problems, "environment overrides") from None


def _raw_termination_path(config_path: str, default: str) -> str:
    """The termination-message path from a config that failed validation (best effort)."""
    import yaml

    try:
        data = yaml.safe_load(Path(config_path).read_text())
        path = data.get("terminationMessagePath") if isinstance(data, dict) else None
    except (OSError, yaml.YAMLError):
        return default
    return path if isinstance(path, str) and path else default


def _invalid_config(message: str, termination_path: str, unknown_fields: list[str] | None = None) -> int:
    """Say why the config cannot run where Kubernetes shows it; restarting cannot help.

    `unknown_fields`: fields this trainer does not know, with the config schema it reads, so
    the operator can tell a job written for a newer image (docs/operator.md, Version skew)."""
    TerminationMessage(
        reason=ExitReason.INVALID_CONFIG.value,
        exit_code=int(ExitCode.INVALID_CONFIG),
        message=message,
        unknown_fields=list(unknown_fields or []),
        config_schema=CONFIG_SCHEMA_VERSION,
    ).write(termination_path)
    return int(ExitCode.INVALID_CONFIG)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="adamw-train",
        description="Train a model (the built-in GPT, a Hugging Face model or your own) with guarded "
        "fused AdamW and Prometheus metrics. `adamw-train export --help`: checkpoint -> Hugging Face directory.",
    )
    p.add_argument("--config", required=True, help="YAML or JSON trainer config file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["export"]:
        from .export import main as export_main

        return export_main(argv[1:])
    args = _parse_args(argv)
    termination_path = "/dev/termination-log"
    try:
        cfg = load_config(args.config)
        termination_path = cfg.termination_message_path
        config_hash = cfg.config_hash()
        cfg, applied = apply_env_overrides(cfg)
    except ConfigError as err:
        print(f"adamw-train: {err}", file=sys.stderr)
        if termination_path == "/dev/termination-log":
            termination_path = _raw_termination_path(args.config, termination_path)
        return _invalid_config(str(err), termination_path, err.unknown_fields)

    # torch is imported only after the config is known to be valid: a bad file fails fast.
    from .data import DataError
    from .distributed import DistEnv, destroy_process_group
    from .models import ModelError
    from .train import Trainer

    env = DistEnv.from_env()
    trainer = None
    outcome: str | None = None  # recorded in experiment tracking when the trainer closes
    try:
        trainer = Trainer(cfg, env=env, config_hash=config_hash)
        if applied:
            trainer.log.event("env-overrides", **applied)
        trainer.log.event(
            "effective",
            metricsHost=cfg.metrics.host,
            metricsPort=(cfg.metrics.port + env.local_rank) if cfg.metrics.port else 0,
            checkpointDir=cfg.checkpoint.dir,
            rank=env.rank,
            localRank=env.local_rank,
            worldSize=env.world_size,
        )
        code = trainer.run()
        reason = trainer.exit_reason if code == ExitCode.SUCCEEDED and trainer.exit_reason else reason_for_exit_code(code)
        outcome = reason.value
    except DataError as err:
        # A data problem is a configuration problem: restarting cannot fix it.
        print(f"adamw-train: invalid data: {err}", file=sys.stderr)
        outcome = ExitReason.INVALID_CONFIG.value
        return _invalid_config(str(err), termination_path)
    except ModelError as err:
        # So is a model that cannot be built (missing path, entry point that does not import).
        print(f"adamw-train: invalid model: {err}", file=sys.stderr)
        outcome = ExitReason.INVALID_CONFIG.value
        return _invalid_config(str(err), termination_path)
    except Exception as err:
        outcome = ExitReason.CRASHED.value
        # A crash is retryable; say what happened where `kubectl describe pod` shows it.
        TerminationMessage(
            reason=ExitReason.CRASHED.value,
            exit_code=1,
            step=trainer.step if trainer is not None else 0,
            last_good_checkpoint_step=trainer.last_good_checkpoint_step if trainer is not None else None,
            message=f"{type(err).__name__}: {err}",
        ).write(termination_path)
        raise
    finally:
        if trainer is not None:
            trainer.close(outcome)
        destroy_process_group()

    convergence = trainer.convergence
    TerminationMessage(
        reason=reason.value,
        exit_code=int(code),
        step=trainer.step,
        last_good_checkpoint_step=trainer.last_good_checkpoint_step,
        message=trainer.exit_message or f"stopped at step {trainer.step} of {cfg.training.max_steps}",
        validation_loss=convergence.last_loss,
        best_validation_loss=convergence.best_loss,
        best_checkpoint_step=trainer.checkpoints.best_step,
        loss=trainer.last_loss,
    ).write(termination_path)
    return int(code)


def entry() -> None:
    """Console entry point: run, then leave without tearing the interpreter down politely.

    With gloo, C++ worker threads of torch.distributed can still be joinable when the
    interpreter finalizes; their destructors then abort the process ("terminate called
    without an active exception", SIGABRT) after training succeeded, about 1 run in 6 here,
    and an exit code of 134 would read as a crash. Everything that matters (checkpoints
    fsynced, termination message, logs) is written before this point, so after flushing
    the streams a distributed run exits with `os._exit`.
    """
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
