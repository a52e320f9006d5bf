"""Save checkpoints without stopping training: snapshot to host memory, write in a thread.

    writer = CheckpointWriter(store, async_save=True, on_result=metrics.record_save)
    writer.save(meta, lambda: capture(model, optimizer, state, snapshot))  # returns after the copy
    ...
    writer.wait()                                                          # before exit

Only the snapshot (a host-memory copy of model and optimizer state) happens on the training
thread; serialization, fsync and the atomic rename happen on a background thread. One save
is in flight at a time: a new save first waits for the previous one, because the snapshot
buffers are reused. A failed write (disk full, permission denied, ...) is reported through
`on_result` and never raised into the training loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .payload import Payload
from .store import CheckpointInfo, CheckpointMeta, CheckpointStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SaveResult:
    """How one save went. `duration_seconds` covers snapshot + write: what a synchronous save costs."""

    step: int
    ok: bool
    info: CheckpointInfo | None
    error: str | None
    snapshot_seconds: float
    duration_seconds: float
    finished_at: float


class CheckpointWriter:
    """Writes one checkpoint at a time, on a background thread when `async_save` is set."""

    def __init__(
        self,
        store: CheckpointStore,
        *,
        async_save: bool = True,
        on_result: Callable[[SaveResult], None] | None = None,
        protect_step: Callable[[], int | None] | None = None,
    ):
        self.store = store
        self.async_save = async_save
        self._on_result = on_result
        self._protect_step = protect_step or (lambda: None)
        self._thread: threading.Thread | None = None
        self._last: SaveResult | None = None
        self._lock = threading.Lock()

    @property
    def in_flight(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def last_result(self) -> SaveResult | None:
        with self._lock:
            return self._last

    def save(self, meta: CheckpointMeta, snapshot: Callable[[], Payload]) -> SaveResult | None:
        """Snapshot now; write in the background (async) or before returning (sync).

        Returns the result for a synchronous save, None for an asynchronous one.
        """
        self.wait()
        start = time.perf_counter()
        payload = snapshot()
        snap_s = time.perf_counter() - start
        if not self.async_save:
            return self._write(meta, payload, start, snap_s)
        self._thread = threading.Thread(
            target=self._write, args=(meta, payload, start, snap_s), name=f"ckpt-step-{meta.step}", daemon=True
        )
        self._thread.start()
        return None

    def save_within(
        self, meta: CheckpointMeta, snapshot: Callable[[], Payload], timeout: float
    ) -> SaveResult | None:
        """Save on a thread and wait at most `timeout` seconds in all (used on SIGTERM).

        Returns the result, or None when the budget ran out (the half-written checkpoint
        stays under its temporary name, invisible, and is cleaned up on the next start).
        """
        deadline = time.monotonic() + timeout
        if not self.wait(timeout):
            return None
        async_save, self.async_save = self.async_save, True
        try:
            self.save(meta, snapshot)
        finally:
            self.async_save = async_save
        if not self.wait(max(0.0, deadline - time.monotonic())):
            return None
        result = self.last_result
        return result if result is not None and result.step == meta.step else None

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the in-flight save (if any) is done; False if `timeout` ran out first."""
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        if thread.is_alive():
            return False
        self._thread = None
        return True

    def _write(self, meta: CheckpointMeta, payload: Payload, start: float, snap_s: float) -> SaveResult:
        info, error = None, None
        try:
            info = self.store.write(meta, payload.writers())
        except Exception as err:  # a failed save must never stop training
            error = f"{type(err).__name__}: {err}"
            log.error("checkpoint step-%d failed, training goes on: %s", meta.step, error)
        if info is not None:
            try:
                self.store.prune(protect=self._protect_step())
            except OSError as err:
                log.warning("pruning old checkpoints failed: %s", err)
        result = SaveResult(
            step=meta.step,
            ok=info is not None,
            info=info,
            error=error,
            snapshot_seconds=snap_s,
            duration_seconds=time.perf_counter() - start,
            finished_at=time.time(),
        )
        with self._lock:
            self._last = result
        if self._on_result is not None:
            try:
                self._on_result(result)
            except Exception:  # metrics bookkeeping must not kill the writer thread
                log.exception("checkpoint result callback failed")
        return result
