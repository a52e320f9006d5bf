"""The training loop: load, step, log, evaluate, save.

    adamw-train --config examples/quickstart-trainer.yaml
    torchrun --nproc_per_node 2 -m adamw_trainer --config job.yaml

`Trainer` holds every piece of resumable state: `model`, `optimizer` (a `GuardedAdamW`
whose device-side skip counters and loss scale travel with it), `step`, `tokens_seen`
and `lr_scale` (a multiplier on the schedule, lowered by divergence rollbacks). The data
position is implied by `step`: batches are a pure function of (seed, step, micro-step,
rank), so resuming needs nothing else.

The hot loop never reads a device value: losses, skip counts and gradient norms stay on
the device and are read in one batch at each log interval (`_read_interval`), which is
also when the consecutive-non-finite counter is checked against the divergence policy
(`on_interval`). The device counter is exact, so nothing is lost between reads; a policy
limit smaller than `training.logIntervalSteps` is noticed at the next log interval.
"""

from __future__ import annotations

import contextlib
import math
import random
import resource
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from . import __version__
from .checkpoint.agreement import Agreement
from .checkpoint.manager import CheckpointManager
from .checkpoint.metrics import FaultToleranceMetrics, restart_count
from .checkpoint.payload import HostSnapshot, Payload, capture, restore
from .checkpoint.store import CheckpointInfo, CheckpointMeta
from .config import TrainerConfig
from .convergence import Convergence, Verdict
from .data import BatchSource
from .distributed import DistEnv, all_reduce_mean, init_process_group, resolve_device
from .divergence import Action, DivergencePolicy, NanGradFault
from .exit_codes import ExitCode, ExitReason
from .finetune import prepare as prepare_finetune
from .metrics import MetricsServer, Status, TrainerMetrics
from .models import build_model, count_parameters
from .optim import GuardedAdamW, describe_groups, param_groups
from .preemption import PREEMPTION_SAVE_FAILED_EXIT_CODE, PreemptionWatcher
from .progress import RunLog
from .schedule import lr_at
from .tracking import Tracker, make_tracker

# Dense bf16/fp16 tensor-core peaks (FLOP/s) for model-FLOPs utilisation; unknown → no MFU.
PEAK_FLOPS_16BIT = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


def peak_flops(device: torch.device, precision: str) -> float | None:
    if device.type != "cuda" or precision == "fp32":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_FLOPS_16BIT.items():
        if key in name:
            return flops / 2 if key == "H100" and "PCIe" in name else flops
    return None


@dataclass
class IntervalCounters:
    """Device values read once per log interval (one host sync)."""

    step: int
    loss: float  # mean of the finite step losses in the interval (NaN if none were finite)
    grad_norm: float  # of the last step, before clipping
    nonfinite_total: int  # skipped steps since the start of the run
    nonfinite_in_interval: int
    consecutive_nonfinite: int  # skipped steps in a row, up to and including the last one
    loss_scale: float
    steps_in_interval: int
    seconds: float


class Trainer:
    def __init__(
        self,
        cfg: TrainerConfig,
        *,
        env: DistEnv | None = None,
        config_hash: str | None = None,
        log: RunLog | None = None,
    ):
        self.cfg = cfg
        self.env = env or DistEnv.from_env()
        self.config_hash = config_hash or cfg.config_hash()
        self.log = log or RunLog(enabled=self.env.is_main)
        # Recovery-time phases (benchmarks/bench_operator.py): imports done, then rendezvous.
        self.log.event("initializing", rank=self.env.rank, worldSize=self.env.world_size)
        t = cfg.training
        if t.threads:
            torch.set_num_threads(t.threads)
        self.device = resolve_device(cfg.device, self.env)
        init_process_group(self.env, self.device)
        self.log.event("rendezvous", worldSize=self.env.world_size)
        self.precision = t.precision
        if self.device.type != "cuda" and self.precision != "fp32":
            warnings.warn(
                f"training.precision '{self.precision}' needs CUDA; training in fp32 on CPU",
                stacklevel=2,
            )
            self.precision = "fp32"

        # Same seed on every rank: identical initial weights (DDP also broadcasts rank 0's).
        # Python's and NumPy's generators too, so a run is reproducible whatever draws from
        # them (checkpoints carry all three, so a resumed run continues the same streams).
        torch.manual_seed(t.seed)
        random.seed(t.seed)
        np.random.seed(t.seed)
        # models/: the configured source (gpt, huggingface, python); then initFrom weights and
        # LoRA adapters (finetune.py). `loss = raw_model(x, y)` whatever the source.
        self.built = build_model(cfg)
        prepare_finetune(self.built, cfg)
        self.raw_model = self.built.module.to(self.device)
        self.model: torch.nn.Module = self.raw_model
        if self.env.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DDP(self.raw_model, device_ids=ids)
        self.optimizer = GuardedAdamW(
            param_groups(self.raw_model, cfg.optimizer),
            cfg.optimizer,
            loss_scaling=self.precision == "fp16",
        )
        self.data = BatchSource(
            cfg.data,
            vocab_size=self.built.vocab_size,
            context_length=cfg.model.context_length,
            batch_size=t.batch_size,
            seed=t.seed,
            device=self.device,
            # The token cache (tokenized sources) persists beside the checkpoints by default.
            cache_dir=cfg.data.cache_dir or f"{cfg.checkpoint.dir}/token-cache",
            log=self.log,
        )

        # Resumable state (besides model and optimizer).
        self.step = 0
        self.tokens_seen = 0
        self.lr_scale = 1.0

        self.n_params = count_parameters(self.raw_model)
        self.tokens_per_step = t.batch_size * cfg.model.context_length * t.grad_accumulation_steps
        self.n_trainable = count_parameters(self.raw_model, trainable_only=True)
        self.flops_per_token = self.built.flops_per_token
        self.peak_flops = peak_flops(self.device, self.precision)
        self.metrics = TrainerMetrics(self.env.rank)
        self.status = Status(
            step=0,
            maxSteps=t.max_steps,
            loss=None,
            validationLoss=None,
            tokensPerSecond=0.0,
            nonfiniteRate=0.0,
            nonfiniteSteps=0,
            consecutiveNonfiniteSteps=0,
            learningRate=0.0,
            lastStepTimestamp=None,
            rank=self.env.rank,
            worldSize=self.env.world_size,
            configHash=self.config_hash,
            phase="Starting",
        )
        self.server: MetricsServer | None = None

        # Fault tolerance (issue 3): checkpoints, divergence policy, preemption.
        self.ft_metrics = FaultToleranceMetrics(self.metrics.registry, self.env.rank)
        self.agreement = Agreement(self.env.world_size)
        self.checkpoints = CheckpointManager(
            cfg.checkpoint,
            rank=self.env.rank,
            world_size=self.env.world_size,
            agreement=self.agreement,
            metrics=self.ft_metrics,
            status=self.status.update,
            event=self.log.event,
        )
        self.divergence = DivergencePolicy(cfg.divergence)
        self.preemption = PreemptionWatcher()
        self.nan_fault = NanGradFault.from_env()  # fault injection for tests; None normally
        self._snapshot = HostSnapshot()
        self.last_step_loss = torch.full((), math.nan, device=self.device)
        # Longest run of skipped steps since the last log interval (device-side, no sync).
        self._longest_streak = torch.zeros((), device=self.device)
        self.exit_message = ""  # why the run stopped, for the termination message
        self.exit_reason: ExitReason | None = None  # set by a successful early stop
        # Targets, early stopping and the best checkpoint (issue 13); its clock starts at
        # the run's first start and travels in the checkpoints.
        self.convergence = Convergence(t, started_at=time.time())
        self._eval_at: tuple[int, float] | None = None  # (step, validation loss) of the last eval
        # Experiment tracking (MLflow), rank 0 only, off the training thread.
        self.tracker: Tracker = make_tracker(
            cfg, rank=self.env.rank, config_hash=self.config_hash, registry=self.metrics.registry,
            status=self.status.update, event=self.log.event,
        )
        self.log.listeners.append(self.tracker.on_event)
        self.status.update(
            lastCheckpoint=None,
            lastGoodCheckpoint=None,
            checkpointSaveSeconds=None,
            rollbacks=0,
            restarts=restart_count(),
            resumedFromStep=None,
            bestCheckpoint=None,
            bestValidationLoss=None,
            stepsToTarget=None,
            timeToTargetSeconds=None,
            stopReason=None,
            tracking=None,
        )

        # Interval accumulators (device-side).
        self._loss_sum = torch.zeros((), device=self.device)
        self._loss_count = torch.zeros((), device=self.device)
        self._interval_start = time.perf_counter()
        self._interval_steps = 0
        self._nonfinite_read = 0
        self._last_step_end = time.perf_counter()
        self._tokens_per_s = 0.0
        self._last_loss = math.nan

    # ----- setup -------------------------------------------------------------------

    def lr_at(self, step: int) -> float:
        c = self.cfg
        return lr_at(step, c.optimizer, c.schedule, c.training.max_steps) * self.lr_scale

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def start_metrics_server(self) -> None:
        m = self.cfg.metrics
        if m.port == 0:
            return
        self.server = MetricsServer(m.host, m.port + self.env.local_rank, self.metrics, self.status)
        self.server.start()

    def describe(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "parameters": self.n_params,
            "world_size": self.env.world_size,
            "precision": self.precision,
            "device": str(self.device),
            "config_hash": self.config_hash,
        }

    def start(self) -> None:
        """Serve metrics and log the resolved configuration (reproducibility)."""
        self.start_metrics_server()
        self.metrics.set_info(**self.describe())
        groups = self.optimizer.optimizer.param_groups
        self.metrics.set_param_groups(groups)
        self.log.event("param-groups", groups=describe_groups(groups, self.cfg.optimizer))
        self.log.event(
            "start",
            configHash=self.config_hash,
            parameters=self.n_params,
            trainableParameters=self.n_trainable,
            modelSource=self.built.source,
            device=str(self.device),
            precision=self.precision,
            worldSize=self.env.world_size,
            tokensPerStep=self.tokens_per_step * self.env.world_size,
            metricsPort=(self.server.port if self.server else 0),
            config=self.cfg.to_dict(),
        )

    # ----- the loop ----------------------------------------------------------------

    def run(self) -> ExitCode:
        """Train to `training.maxSteps`; returns the exit code for the process."""
        self.start()
        if threading.current_thread() is threading.main_thread():
            self.preemption.install()
        try:
            self.resume()
            self.tracker.begin(self.step)
            self.status.update(phase="Training", step=self.step)
            max_steps = self.cfg.training.max_steps
            self._interval_start = self._last_step_end = time.perf_counter()
            while self.step < max_steps:
                if self._stop_agreed():
                    return self.on_stop_requested()
                self.train_step()
                self._after_step()
                if self.step % self.cfg.training.log_interval_steps == 0 or self.step == max_steps:
                    counters = self._read_interval()
                    self._report_interval(counters)
                    code = self.on_interval(counters)
                    if code is not None:
                        return code
                if self._eval_due() and self.on_evaluation(self.evaluate()).stop is not None:
                    break  # the target was reached, or early stopping: the final save is next
                self.maybe_checkpoint()
            code = self.finish()
            if code is not None:
                return code
            reason = self.exit_reason or ExitReason.SUCCEEDED
            self.status.update(phase="Succeeded", stopReason=reason.value)
            self.log.event("done", step=self.step, tokensSeen=self.tokens_seen, reason=reason.value)
            return ExitCode.SUCCEEDED
        finally:
            self.preemption.uninstall()
            self.log.close()

    def train_step(self) -> None:
        """One optimizer step over `gradAccumulationSteps` micro-batches; no host sync."""
        accum = self.cfg.training.grad_accumulation_steps
        self.optimizer.set_lr(self.lr_at(self.step))
        step_loss = torch.zeros((), device=self.device)
        for micro in range(accum):
            x, y = self.data.train_batch(self.step, micro, self.env.rank)
            # DDP all-reduces gradients only on the last micro-batch.
            last = micro == accum - 1
            sync = contextlib.nullcontext() if last or not self.env.distributed else self.model.no_sync()
            with sync:
                with self.autocast():
                    loss = self.model(x, y) / accum
                if self.nan_fault is not None and self.nan_fault.active(self.step, self.divergence.rollbacks):
                    loss = self.nan_fault.poison(loss)  # injected fault (tests): see divergence.py
                self.optimizer.scale_loss(loss).backward()
            step_loss += loss.detach()
        self.optimizer.step()
        torch.maximum(self._longest_streak, self.optimizer.consecutive_nonfinite, out=self._longest_streak)
        self.last_step_loss = step_loss
        finite = torch.isfinite(step_loss)
        self._loss_sum += torch.where(finite, step_loss, 0.0)
        self._loss_count += finite
        self.step += 1
        self.tokens_seen += self.tokens_per_step * self.env.world_size

    def _after_step(self) -> None:
        """Per-step metrics from host values only (cheap; no device reads)."""
        now = time.perf_counter()
        m = self.metrics
        m.step_duration.observe(now - self._last_step_end)
        self._last_step_end = now
        m.steps.inc()
        m.tokens.inc(self.tokens_per_step)
        m.samples.inc(self.cfg.training.batch_size * self.cfg.training.grad_accumulation_steps)
        m.step.set(self.step)
        wall = time.time()
        m.last_step_timestamp.set(wall)
        m.learning_rate.set(self.lr_at(self.step - 1))
        m.set_group_learning_rates(self.optimizer.optimizer.param_groups)
        self.status.update(step=self.step, lastStepTimestamp=wall)
        self._interval_steps += 1
        if self.log.tty:
            elapsed = now - self._interval_start
            tps = self._tokens_per_s
            if self._interval_steps and elapsed > 0:
                tps = self._interval_steps * self.tokens_per_step * self.env.world_size / elapsed
            eta = (self.cfg.training.max_steps - self.step) * self.tokens_per_step * self.env.world_size / max(tps, 1e-9)
            self.log.progress(self.step, self.cfg.training.max_steps, self._last_loss, tps, eta)

    def _read_interval(self) -> IntervalCounters:
        """Read the interval's device values in one transfer (the loop's only host sync)."""
        loss = torch.stack([self._loss_sum, self._loss_count])
        all_reduce_mean(loss, self.env)  # mean over ranks (skip decisions are already equal)
        o = self.optimizer
        values = torch.cat(
            [loss, torch.stack([o.last_grad_norm, o.nonfinite_total, o.consecutive_nonfinite, o.loss_scale])]
        ).tolist()
        loss_sum, loss_count, grad_norm, nonfinite, consecutive, scale = values
        now = time.perf_counter()
        nonfinite = int(round(nonfinite))
        counters = IntervalCounters(
            step=self.step,
            loss=loss_sum / loss_count if loss_count > 0 else math.nan,
            grad_norm=grad_norm,
            nonfinite_total=nonfinite,
            nonfinite_in_interval=nonfinite - self._nonfinite_read,
            consecutive_nonfinite=int(round(consecutive)),
            loss_scale=scale,
            steps_in_interval=self._interval_steps,
            seconds=now - self._interval_start,
        )
        self._nonfinite_read = nonfinite
        self._loss_sum.zero_()
        self._loss_count.zero_()
        self._interval_steps = 0
        self._interval_start = now
        return counters

    def _report_interval(self, c: IntervalCounters) -> None:
        m = self.metrics
        tokens = c.steps_in_interval * self.tokens_per_step * self.env.world_size
        tps = tokens / c.seconds if c.seconds > 0 else 0.0
        self._tokens_per_s, self._last_loss = tps, c.loss
        m.train_loss.set(c.loss)
        m.grad_norm.set(c.grad_norm)
        if c.nonfinite_in_interval > 0:
            m.nonfinite_steps.inc(c.nonfinite_in_interval)
        peak_mem = self.peak_memory_bytes()
        m.memory_peak.set(peak_mem)
        rate = c.nonfinite_in_interval / max(1, c.steps_in_interval)
        max_steps = self.cfg.training.max_steps
        eta = (max_steps - c.step) * c.seconds / max(1, c.steps_in_interval)
        fields: dict[str, Any] = dict(
            step=c.step,
            maxSteps=max_steps,
            loss=c.loss,
            lr=self.lr_at(c.step - 1),
            gradNorm=c.grad_norm,
            tokensPerSecond=round(tps, 1),
            nonfiniteRate=rate,
            nonfiniteSteps=c.nonfinite_total,
            consecutiveNonfiniteSteps=c.consecutive_nonfinite,
            etaSeconds=round(eta, 1),
            memoryPeakBytes=peak_mem,
        )
        if self.precision == "fp16":
            fields["lossScale"] = c.loss_scale
        if self.peak_flops:
            fields["mfu"] = round(self.flops_per_token * tps / self.env.world_size / self.peak_flops, 4)
        self.status.update(
            loss=c.loss,
            tokensPerSecond=round(tps, 1),
            nonfiniteRate=rate,
            nonfiniteSteps=c.nonfinite_total,
            consecutiveNonfiniteSteps=c.consecutive_nonfinite,
            learningRate=fields["lr"],
        )
        self.log.event("train", **fields)

    def peak_memory_bytes(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        # ru_maxrss is in KiB on Linux (bytes on macOS).
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(rss if sys.platform == "darwin" else rss * 1024)

    def _eval_due(self) -> bool:
        every = self.cfg.data.eval_interval_steps
        if every == 0 or not self.data.has_validation:
            return False
        return self.step % every == 0 or self.step == self.cfg.training.max_steps

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over `data.evalBatches` held-out batches (same batches every time)."""
        started = time.perf_counter()
        self.raw_model.eval()
        total = torch.zeros((), device=self.device)
        n = self.cfg.data.eval_batches
        for i in range(n):
            x, y = self.data.val_batch(i, self.env.rank)
            with self.autocast():
                total += self.raw_model(x, y).float()
        self.raw_model.train()
        total /= n
        val = all_reduce_mean(total, self.env).item()
        self.metrics.validation_loss.set(val)
        self.status.update(validationLoss=val)
        self.log.event("eval", step=self.step, validationLoss=val)
        # Evaluation time is not training time: keep it out of tokens/s and step durations.
        spent = time.perf_counter() - started
        self._interval_start += spent
        self._last_step_end += spent
        return val

    def on_evaluation(self, val: float) -> Verdict:
        """Targets, early stopping and the best checkpoint, from one validation loss.

        Every rank sees the same all-reduced loss, so every rank reaches the same verdict
        without another collective. A new best is saved now (`checkpoint.saveBest`), so the
        best checkpoint holds the weights that were evaluated.
        """
        self._eval_at = (self.step, val)
        verdict = self.convergence.observe(self.step, val, time.time())
        self._publish_convergence()
        if verdict.improved and self.cfg.checkpoint.save_best and self.checkpoints.writes:
            if not self.checkpoints.saved_current(self.step) and self.step < self.cfg.training.max_steps:
                self.checkpoints.save(self._checkpoint_meta(), self._capture)
        if verdict.stop is not None:
            self.exit_reason = verdict.stop
            self.exit_message = verdict.message
            c = self.convergence
            if verdict.stop is ExitReason.TARGET_REACHED:
                self.status.update(stepsToTarget=c.target_step, timeToTargetSeconds=c.target_seconds)
                if c.target_seconds is not None:
                    self.metrics.time_to_target_seconds.set(c.target_seconds)
            self.log.event(
                "target-reached" if verdict.stop is ExitReason.TARGET_REACHED else "early-stopped",
                step=self.step, validationLoss=val, bestValidationLoss=c.best_loss, bestStep=c.best_step,
                secondsSinceStart=c.target_seconds, reason=verdict.message,
            )
        return verdict

    def _publish_convergence(self) -> None:
        best = self.convergence.best_loss
        if best is not None:
            self.metrics.best_validation_loss.set(best)
        self.status.update(bestValidationLoss=best)

    # ----- checkpointing, preemption and divergence (issue 3) ------------------------

    def train_state(self) -> dict[str, Any]:
        """Resumable state besides model and optimizer (the data position is `step`)."""
        return {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "divergence": self.divergence.state_dict(),
            "convergence": self.convergence.state_dict(),
            "tracking": self.tracker.state_dict(),
        }

    def _capture(self) -> Payload:
        return capture(
            self.raw_model, self.optimizer, self.train_state(), self._snapshot, config=self.cfg.to_dict()
        )

    def _checkpoint_meta(self) -> CheckpointMeta:
        """Metadata for a checkpoint of the current state; one host sync (saves are rare)."""
        loss, streak = torch.stack(
            [self.last_step_loss.float(), self.optimizer.consecutive_nonfinite.float()]
        ).tolist()
        return CheckpointMeta(
            step=self.step,
            loss=loss,
            # Known-good: a finite loss, and the last step was not skipped (on any rank).
            finite=math.isfinite(loss) and streak == 0,
            time=time.time(),
            config_hash=self.config_hash,
            world_size=self.env.world_size,
            tokens_seen=self.tokens_seen,
            validation_loss=self._eval_at[1] if self._eval_at and self._eval_at[0] == self.step else None,
        )

    def _restore(self, info: CheckpointInfo, payload: Payload, *, keep_policy: bool) -> None:
        """Load a checkpoint into this trainer; a rollback keeps the divergence counters."""
        state = restore(payload, self.raw_model, self.optimizer)
        self.step = int(state["step"])
        self.tokens_seen = int(state["tokens_seen"])
        if not keep_policy:  # a rollback keeps its counters, and the best loss seen so far
            self.divergence.load_state_dict(state.get("divergence", {}))
            self.convergence.load_state_dict(state.get("convergence", {}))
            self.tracker.load_state_dict(state.get("tracking", {}))
            self._publish_convergence()
        self.lr_scale = self.divergence.lr_scale
        self._nonfinite_read = int(self.optimizer.nonfinite_total.item())
        self._longest_streak.zero_()
        self._loss_sum.zero_()
        self._loss_count.zero_()
        self.checkpoints.mark_restored(info)
        self.metrics.step.set(self.step)
        self.status.update(step=self.step, rollbacks=self.divergence.rollbacks)

    def resume(self) -> None:
        """Restore the newest valid checkpoint (all ranks the same one), unless resume is off."""
        if not self.cfg.checkpoint.resume:
            return
        info = self.checkpoints.resume_point()
        if info is None:
            self.log.event("fresh-start", checkpointDir=self.cfg.checkpoint.dir)
            return
        self._restore(info, self.checkpoints.load(info), keep_policy=False)
        self.status.update(resumedFromStep=info.step)
        if info.meta.world_size != self.env.world_size:
            # Supported: the state is replicated and batches come from (seed, step, rank).
            # What changes is the global batch per step (and so the run is no longer
            # bit-identical to one that kept its world size).
            per_rank = self.cfg.training.batch_size * self.cfg.training.grad_accumulation_steps
            self.log.event(
                "world-size-changed",
                step=info.step,
                fromWorldSize=info.meta.world_size,
                toWorldSize=self.env.world_size,
                sequencesPerStepBefore=per_rank * info.meta.world_size,
                sequencesPerStepNow=per_rank * self.env.world_size,
            )
        self.log.event(
            "resumed",
            step=self.step,
            checkpoint=str(info.path),
            loss=info.meta.loss,
            lrScale=self.lr_scale,
            rollbacks=self.divergence.rollbacks,
            # Resuming under a changed config is allowed (e.g. more maxSteps); say so.
            configChanged=info.meta.config_hash != self.config_hash,
        )

    def maybe_checkpoint(self) -> None:
        """Save (in the background) when `checkpoint.intervalSteps/intervalSeconds` say so."""
        due = self.checkpoints.due(self.step, self.cfg.training.max_steps)
        if due and not self.checkpoints.saved_current(self.step):  # e.g. right after a rollback
            self.checkpoints.save(self._checkpoint_meta(), self._capture)

    def on_interval(self, counters: IntervalCounters) -> ExitCode | None:
        """Divergence policy on the interval's counters; an exit code stops the run."""
        longest = int(self._longest_streak.item())
        self._longest_streak.copy_(self.optimizer.consecutive_nonfinite)
        if longest <= self.cfg.divergence.max_consecutive_nonfinite_steps:
            return None
        self.checkpoints.close()  # a save in flight may be the known-good one
        last_good = self.agreement.from_rank0(self.checkpoints.last_good_step)
        decision = self.divergence.decide(self.step, longest, last_good)
        if decision.action is Action.ROLLBACK:
            loaded = self.checkpoints.load_last_good()
            if loaded is None:  # rank 0 lost it between the two questions: give up cleanly
                self.exit_message = f"{decision.message}; the checkpoint is gone"
                return ExitCode.DIVERGED
            info, payload = loaded
            from_step = self.step
            self._restore(info, payload, keep_policy=True)
            self.ft_metrics.rollbacks.inc()
            self.log.event(
                "rollback",
                fromStep=from_step,
                toStep=info.step,
                rollbacks=self.divergence.rollbacks,
                lrScale=self.lr_scale,
                lr=self.lr_at(self.step),
                reason=decision.message,
            )
            return None
        self.exit_message = f"diverged: {decision.message}"
        self.status.update(phase="Diverged")
        self.log.event("diverged", step=self.step, reason=decision.message)
        return ExitCode.DIVERGED

    def _stop_agreed(self) -> bool:
        """Whether any rank was asked to stop (SIGTERM); every rank asks at every step."""
        return self.agreement.any(self.preemption.requested)

    def on_stop_requested(self) -> int:
        """SIGTERM: save this step's checkpoint within the budget; 143 only if it is on disk."""
        budget = self.preemption.seconds_left(self.cfg.checkpoint.preemption_save_timeout_seconds)
        saved, detail = self.checkpoints.save_for_preemption(
            self._checkpoint_meta(), self._capture, budget
        )
        saved, detail = self.agreement.from_rank0((saved, detail))
        signal_name = self.preemption.signal_name or "stop request"
        self.log.event("preempted", step=self.step, signal=signal_name, saved=saved, detail=detail)
        if saved:
            self.status.update(phase="Preempted")
            self.exit_message = f"{signal_name} at step {self.step}: {detail}"
            return ExitCode.PREEMPTED
        self.status.update(phase="Failed")
        self.checkpoints.abandon_writes = True  # do not outlive the grace period waiting on it
        good = self.checkpoints.last_good_step
        since = f"the last good checkpoint (step {good})" if good is not None else "the start"
        self.exit_message = f"{signal_name} at step {self.step} but {detail}; work since {since} is lost"
        return PREEMPTION_SAVE_FAILED_EXIT_CODE

    def finish(self) -> int | None:
        """The final checkpoint; a run whose result is not on disk has not succeeded."""
        code = None
        if self.checkpoints.writes and not self.checkpoints.saved_current(self.step):
            result = self.checkpoints.save_and_wait(self._checkpoint_meta(), self._capture)
            if result is not None and not result.ok:
                self.exit_message = f"training finished but the final checkpoint failed: {result.error}"
                code = 1
        code, self.exit_message = self.agreement.from_rank0((code, self.exit_message))
        return code

    @property
    def last_good_checkpoint_step(self) -> int | None:
        return self.checkpoints.last_good_step

    @property
    def last_loss(self) -> float | None:
        """The last logged training loss; None before the first log line or when not finite."""
        return self._last_loss if math.isfinite(self._last_loss) else None

    def close(self, outcome: str | None = None) -> None:
        """Wait for the last checkpoint write, record the outcome (tracking), stop serving."""
        self.checkpoints.close(timeout=0 if self.checkpoints.abandon_writes else None)
        self.tracker.close(outcome, hurry=self.preemption.requested)  # SIGTERM: the grace period runs
        if self.server is not None:
            self.server.stop()
            self.server = None
