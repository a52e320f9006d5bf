"""SIGTERM means "you are being preempted": save a checkpoint inside the grace period, exit 143.

Kubernetes sends SIGTERM, waits `terminationGracePeriodSeconds`, then SIGKILLs. The handler
only sets a flag; the training loop checks it between steps (the current step finishes),
all ranks agree to stop at the same step, rank 0 saves within
`checkpoint.preemptionSaveTimeoutSeconds`, and every rank exits:

    143 (Preempted)  the checkpoint of the current step is on disk: nothing is lost
    1   (Crashed)    the save failed or ran out of time: the operator restarts from the
                     last checkpoint that did complete, and counts it as a crash because
                     work was lost (exit 143 is a promise that nothing was)

The measured save time (`adamw_checkpoint_save_duration_seconds`) is what the operator uses
to size the grace period.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType

log = logging.getLogger(__name__)

# Exit code when SIGTERM arrived but the checkpoint could not be saved: a plain crash.
PREEMPTION_SAVE_FAILED_EXIT_CODE = 1


class PreemptionWatcher:
    """Turns SIGTERM (and SIGINT, for a terminal) into a flag the training loop polls."""

    def __init__(self, signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)):
        self._signals = signals
        self._event = threading.Event()
        self.signal_name: str | None = None
        self.received_at: float | None = None
        self._previous: dict[signal.Signals, object] = {}

    def install(self) -> PreemptionWatcher:
        """Install the handlers (main thread only, as Python requires)."""
        for sig in self._signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._event.is_set():
            if signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C at a terminal: stop now, no save
            return  # a second SIGTERM changes nothing: the save is already under way
        self.signal_name = signal.Signals(signum).name
        self.received_at = time.monotonic()
        self._event.set()
        log.warning("%s received: saving a checkpoint and exiting", self.signal_name)

    @property
    def requested(self) -> bool:
        """This process got the signal (no communication with other ranks)."""
        return self._event.is_set()

    def seconds_left(self, budget: float) -> float:
        """Time left of `budget` seconds counted from the signal's arrival."""
        if self.received_at is None:
            return budget
        return max(0.0, budget - (time.monotonic() - self.received_at))

