"""The trainer's checkpointing: when to save, what to resume from, and what to report.

    manager = CheckpointManager(cfg.checkpoint, rank=..., world_size=..., ...)
    info = manager.resume_point()            # every rank gets rank 0's choice
    payload = manager.load(info)             # refuses pickles that could run code
    if manager.due(step, max_steps): manager.save(meta, capture)
    manager.save_for_preemption(meta, capture, budget_seconds)
    manager.close()                          # wait for the last write

Only rank 0 writes (every rank holds the same replicated state under DDP); every rank
reads the checkpoint rank 0 chose, so all ranks resume from the same one. Save outcomes
arrive on the writer thread and go straight to the metrics and the `/status` fields
`lastCheckpoint`, `lastGoodCheckpoint`, `bestCheckpoint` (the lowest validation loss among
checkpoints saved at an evaluation) and `checkpointSaveSeconds`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..config import CheckpointConfig
from .agreement import Agreement
from .async_writer import CheckpointWriter, SaveResult
from .metrics import FaultToleranceMetrics
from .payload import Payload, load
from .store import (
    CheckpointError,
    CheckpointInfo,
    CheckpointMeta,
    CheckpointStore,
)

log = logging.getLogger(__name__)

StatusSink = Callable[..., None]  # Status.update(**fields)
EventSink = Callable[..., None]  # RunLog.event(name, **fields)


class CheckpointManager:
    def __init__(
        self,
        cfg: CheckpointConfig,
        *,
        rank: int,
        world_size: int,
        agreement: Agreement,
        metrics: FaultToleranceMetrics,
        status: StatusSink,
        event: EventSink,
    ):
        self.cfg = cfg
        self.rank = rank
        self.world_size = world_size
        self.agreement = agreement
        self.metrics = metrics
        self._status = status
        self._event = event
        self.store = CheckpointStore(cfg.dir, keep_latest=cfg.keep_latest)
        self.writer = CheckpointWriter(
            self.store,
            async_save=cfg.async_save,
            on_result=self._record,
            protect_step=lambda: self.last_good.step if self.last_good else None,
        )
        self._lock = threading.Lock()
        self.last: CheckpointInfo | None = None
        self.last_good: CheckpointInfo | None = None
        self.best: CheckpointInfo | None = None
        self.max_save_seconds: float | None = None
        self._last_save_started = time.monotonic()
        # Step whose state is on disk *in this run's timeline* (after a rollback, an older
        # checkpoint with the same step number holds different, diverged, weights).
        self._saved_step: int | None = None
        self._resume_payload: tuple[int, Payload] | None = None
        # Set when a preemption save ran out of time: exit without waiting for the write.
        self.abandon_writes = False

    @property
    def writes(self) -> bool:
        return self.rank == 0

    # -- resume -------------------------------------------------------------------------

    def resume_point(self) -> CheckpointInfo | None:
        """The newest checkpoint that verifies and loads safely; the same on every rank.

        Rank 0 removes leftovers of killed writes, walks the checkpoints newest first,
        skips (logs, counts) corrupt and unsafe ones, and tells the other ranks its pick.
        A checkpoint from another world size loads as well: under DDP every rank holds the
        whole (replicated) model and optimizer state, and batches are drawn afresh from
        (seed, step, rank), so there is no per-rank data position to carry over.
        """
        chosen = None
        if self.writes:
            self.store.remove_leftovers()
            chosen = self._pick_resume_step()
        step = self.agreement.from_rank0(chosen)
        if step is None:
            return None
        info = self.store.verify(step) if not self.writes else self.store.read_manifest(step)
        good_step = self.agreement.from_rank0(self._newest_good_step(info) if self.writes else None)
        with self._lock:
            self.last = info
            self.last_good = self.store.read_manifest(good_step) if good_step is not None else None
            self.best = self.store.best(verify=False) if self.writes else None
        self.metrics.resumed_from_step.set(info.step)
        self.metrics.checkpoint_step.set(info.step)
        self._publish()
        return info

    def _pick_resume_step(self) -> int | None:
        for info in self.store.valid_newest_first(on_corrupt=self._count_corrupt):
            try:
                # A full read: a file that verifies but will not load (unsafe) is skipped too.
                self._resume_payload = (info.step, load(info))
            except CheckpointError as err:
                self._count_corrupt(info.step, err)
                continue
            return info.step
        return None

    def _newest_good_step(self, resumed: CheckpointInfo) -> int | None:
        if resumed.known_good:
            return resumed.step
        good = self.store.last_good()
        return good.step if good is not None else None

    def _count_corrupt(self, step: int, err: Exception) -> None:
        self.metrics.corrupt_skipped.inc()
        self._event("checkpoint-skipped", step=step, error=str(err))

    def load(self, info: CheckpointInfo) -> Payload:
        """Read a checkpoint every rank agreed on (torch.load with weights_only=True)."""
        cached, self._resume_payload = self._resume_payload, None
        if cached is not None and cached[0] == info.step:
            return cached[1]
        return load(info)

    def mark_restored(self, info: CheckpointInfo) -> None:
        """The training state now equals checkpoint `info` (after a resume or a rollback)."""
        self._saved_step = info.step

    def saved_current(self, step: int) -> bool:
        """Whether the state at `step` of this timeline is already on disk."""
        self.writer.wait()
        return self._saved_step == step

    def load_last_good(self) -> tuple[CheckpointInfo, Payload] | None:
        """The last known-good checkpoint, as rank 0 knows it, loaded on every rank (rollback)."""
        self.writer.wait()
        step = self.agreement.from_rank0(self.last_good.step if self.last_good else None)
        if step is None:
            return None
        info = self.store.verify(step)
        payload = load(info)
        if self.writes:
            self.store.discard_newer_than(step)
            with self._lock:
                self.last = info
                self.best = self.store.best(verify=False)
            self._publish()
        return info, payload

    # -- saving -------------------------------------------------------------------------

    def due(self, step: int, max_steps: int) -> bool:
        """Every `intervalSteps` steps or `intervalSeconds` seconds (the final save is separate)."""
        if not self.writes or step >= max_steps:
            return False
        if self.cfg.interval_steps and step % self.cfg.interval_steps == 0:
            return True
        elapsed = time.monotonic() - self._last_save_started
        return bool(self.cfg.interval_seconds) and elapsed >= self.cfg.interval_seconds

    def save(self, meta: CheckpointMeta, capture: Callable[[], Payload]) -> SaveResult | None:
        """Snapshot now and write (in the background if `asyncSave`); rank 0 only."""
        if not self.writes:
            return None
        self._last_save_started = time.monotonic()
        return self.writer.save(meta, capture)

    def save_and_wait(self, meta: CheckpointMeta, capture: Callable[[], Payload]) -> SaveResult | None:
        """Save and wait for the write to finish (the final checkpoint)."""
        if not self.writes:
            return None
        self.save(meta, capture)
        self.writer.wait()
        return self.writer.last_result

    def save_for_preemption(
        self, meta: CheckpointMeta, capture: Callable[[], Payload], budget_seconds: float
    ) -> tuple[bool, str]:
        """Make sure a checkpoint of `meta.step` is on disk within the budget (rank 0).

        Returns (saved, message). A checkpoint already written for this step counts.
        """
        if not self.writes:
            return True, ""
        started = time.monotonic()
        if not self.writer.wait(budget_seconds):
            return False, (
                f"an earlier checkpoint write did not finish within the {budget_seconds:.1f}s "
                f"budget (checkpoint.preemptionSaveTimeoutSeconds)"
            )
        if self._saved_step == meta.step:
            return True, f"checkpoint step-{meta.step} was already saved"
        left = max(0.0, budget_seconds - (time.monotonic() - started))
        result = self.writer.save_within(meta, capture, left)
        if result is None:
            return False, (
                f"checkpoint step-{meta.step} did not finish within the "
                f"{budget_seconds:.1f}s budget (checkpoint.preemptionSaveTimeoutSeconds)"
            )
        if not result.ok:
            return False, f"checkpoint step-{meta.step} failed: {result.error}"
        return True, f"checkpoint step-{meta.step} saved in {result.duration_seconds:.2f}s"

    def close(self, timeout: float | None = None) -> bool:
        return self.writer.wait(timeout)

    # -- reporting ----------------------------------------------------------------------

    def _record(self, result: SaveResult) -> None:
        """Writer-thread callback: metrics, `/status`, log."""
        m = self.metrics
        if not result.ok:
            m.failures.inc()
            self._event("checkpoint-failed", step=result.step, error=result.error)
            return
        info = result.info
        with self._lock:
            self.last = info
            self._saved_step = info.step
            if info.known_good:
                self.last_good = info
            if info.best_candidate and (self.best is None or self._better(info, self.best)):
                self.best = info
            self.max_save_seconds = max(self.max_save_seconds or 0.0, result.duration_seconds)
        m.saves.inc()
        m.save_duration.observe(result.duration_seconds)
        m.last_success.set(result.finished_at)
        m.checkpoint_step.set(result.step)
        self._publish()
        self._event(
            "checkpoint",
            step=result.step,
            loss=info.meta.loss,
            knownGood=info.known_good,
            seconds=round(result.duration_seconds, 4),
            stallSeconds=round(result.snapshot_seconds, 4),
            path=str(info.path),
        )

    def _publish(self) -> None:
        with self._lock:
            fields: dict[str, Any] = {
                "lastCheckpoint": self.last.status() if self.last else None,
                "lastGoodCheckpoint": self.last_good.status() if self.last_good else None,
                "bestCheckpoint": self.best.status() if self.best else None,
                "checkpointSaveSeconds": self.max_save_seconds,
            }
        self._status(**fields)

    @staticmethod
    def _better(a: CheckpointInfo, b: CheckpointInfo) -> bool:
        """Lower validation loss, the newer of equals (as `CheckpointStore.best` orders them)."""
        va, vb = a.meta.validation_loss, b.meta.validation_loss
        assert va is not None and vb is not None
        return va < vb or (va == vb and a.step >= b.step)

    @property
    def best_step(self) -> int | None:
        with self._lock:
            return self.best.step if self.best else None

    @property
    def last_good_step(self) -> int | None:
        with self._lock:
            return self.last_good.step if self.last_good else None
