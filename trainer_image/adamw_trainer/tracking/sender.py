"""A bounded queue drained by one background thread: tracking never stalls a training step.

    sender = Sender(backend, queue_size=1000, metrics=TrackingMetrics(registry, rank))
    sender.put(record)        # never blocks: a full queue drops the record and counts it
    sender.start()            # the thread starts sending (after resume knows the run id)
    sender.close(timeout=10)  # drain what it can in the time, then give up

A failed send is counted (`adamw_tracking_errors_total`) and retried with backoff (the
server is down or slow) until it succeeds or the sender closes; a record the server
refuses for good (`backend.retryable(err)` false) is counted as an error and dropped,
so one bad record cannot wedge the queue. Torch-free.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter

from .records import Metrics, MetricsBatch

log = logging.getLogger(__name__)

RETRY_FIRST_SECONDS = 0.2
RETRY_MAX_SECONDS = 5.0
BATCH_POINTS = 200  # Metrics records coalesced into one call (MLflow takes 1000 metrics a call)


class Backend(Protocol):
    def send(self, record: Any) -> None: ...
    def retryable(self, err: Exception) -> bool: ...


class TrackingMetrics:
    def __init__(self, registry: CollectorRegistry, rank: int):
        self.errors = Counter(
            "adamw_tracking_errors", "Failed calls to the experiment-tracking server (each retry counts).",
            ["rank"], registry=registry,
        ).labels(rank=str(rank))
        self._dropped = Counter(
            "adamw_tracking_dropped", "Tracking records dropped: queue full, refused by the server, or "
            "still queued when the trainer exited.", ["rank", "kind"], registry=registry,
        )
        self.rank = str(rank)
        self._dropped_total = 0
        self.error_count = 0
        for kind in ("metrics", "other"):  # export 0 for the series known to exist
            self._dropped.labels(rank=self.rank, kind=kind)

    def error(self) -> None:
        self.errors.inc()
        self.error_count += 1

    def dropped(self, record: Any) -> None:
        kind = "metrics" if getattr(record, "kind", "") == "metrics" else "other"
        n = len(record.points) if isinstance(record, MetricsBatch) else 1
        self._dropped.labels(rank=self.rank, kind=kind).inc(n)
        self._dropped_total += n

    def dropped_total(self) -> int:
        return self._dropped_total


_STOP = object()


class Sender:
    def __init__(self, backend: Backend, *, queue_size: int, metrics: TrackingMetrics):
        self.backend = backend
        self.metrics = metrics
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._run, name="tracking-sender", daemon=True)
        self._give_up = threading.Event()  # close() ran out of time: stop retrying
        self._in_flight: Any = None
        self._held: Any = None  # taken off the queue while coalescing, sent next
        self.sent = 0

    def put(self, record: Any) -> bool:
        try:
            self._queue.put_nowait(record)
            return True
        except queue.Full:
            self.metrics.dropped(record)
            return False

    def pending(self) -> list[Any]:
        """Records not yet delivered, oldest first (the one being sent included)."""
        with self._queue.mutex:
            queued = [r for r in self._queue.queue if r is not _STOP]
        current, held = self._in_flight, self._held
        flying = current.points if isinstance(current, MetricsBatch) else [current] if current is not None else []
        return flying + ([held] if held is not None else []) + queued

    def start(self) -> None:
        if not self._thread.is_alive():
            self._thread.start()

    def close(self, timeout: float) -> bool:
        """Send what is queued within `timeout` seconds; True when everything went out."""
        if not self._thread.is_alive():
            self._drop_queued()
            return self._queue.empty()
        deadline = time.monotonic() + timeout
        while True:  # the stop marker must get in, even behind a full queue
            try:
                self._queue.put(_STOP, timeout=max(0.0, min(0.1, deadline - time.monotonic())))
                break
            except queue.Full:
                if time.monotonic() >= deadline:
                    break
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            self._give_up.set()  # a call in flight ends with its own timeout; the thread is a daemon
            self._thread.join(1.0)
        done = self._drop_queued() == 0 and not self._thread.is_alive()
        return done

    def _drop_queued(self) -> int:
        n = 0
        while True:
            try:
                record = self._queue.get_nowait()
            except queue.Empty:
                return n
            if record is not _STOP:
                self.metrics.dropped(record)
                n += 1

    def _run(self) -> None:
        while not self._give_up.is_set():
            record, self._held = (self._held, None) if self._held is not None else (self._queue.get(), None)
            if record is _STOP:
                return
            self._in_flight = self._coalesce(record)
            self._send(self._in_flight)
            self._in_flight = None

    def _coalesce(self, record: Any) -> Any:
        """Consecutive Metrics records already queued go out in one call."""
        if not isinstance(record, Metrics):
            return record
        points = [record]
        while len(points) < BATCH_POINTS:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                break
            if not isinstance(nxt, Metrics):
                self._held = nxt
                break
            points.append(nxt)
        return MetricsBatch(points) if len(points) > 1 else record

    def _send(self, record: Any) -> None:
        delay = RETRY_FIRST_SECONDS
        while True:
            try:
                self.backend.send(record)
                self.sent += 1
                return
            except Exception as err:  # noqa: BLE001 (any failure of the server or the network)
                self.metrics.error()
                if not self.backend.retryable(err):
                    log.warning("tracking: %s refused, dropped: %s", getattr(record, "kind", "record"), err)
                    self.metrics.dropped(record)
                    return
                log.info("tracking: %s failed, retrying in %.1fs: %s", getattr(record, "kind", "record"), delay, err)
            if self._give_up.wait(delay):
                self.metrics.dropped(record)
                return
            delay = min(RETRY_MAX_SECONDS, delay * 2)
