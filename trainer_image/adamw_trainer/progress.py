"""What the trainer prints: a live progress line on a terminal, JSON lines otherwise.

Only rank 0 prints. In a pod (no TTY) every event is one JSON object per line on stdout,
so `kubectl logs` can be parsed; on a terminal, events are short human lines and the
step counter is redrawn in place at most ten times a second.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(seconds)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        if not math.isfinite(value):
            return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return round(value, 6)
    return value


class RunLog:
    def __init__(self, enabled: bool = True, stream: TextIO | None = None, tty: bool | None = None):
        self.enabled = enabled
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self._line_open = False
        self._last_draw = 0.0
        # Called with (event, fields) for every record (experiment tracking); they must not block.
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []

    def event(self, event: str, **fields: Any) -> None:
        """One log record: a JSON line, or on a terminal `event key=value ...`."""
        if not self.enabled:
            return
        for listener in self.listeners:
            listener(event, fields)
        if self.tty:
            self._end_line()
            parts = " ".join(f"{k}={_fmt(v)}" for k, v in fields.items() if not isinstance(v, dict))
            self.stream.write(f"[{event}] {parts}\n")
            for k, v in fields.items():
                if isinstance(v, dict):
                    self.stream.write(f"  {k}: {json.dumps(v, sort_keys=True)}\n")
        else:
            record = {"time": round(time.time(), 3), "event": event}
            record.update({k: _clean(v) for k, v in fields.items()})
            self.stream.write(json.dumps(record) + "\n")
        self.stream.flush()

    def progress(self, step: int, max_steps: int, loss: float, tokens_per_s: float, eta_s: float) -> None:
        """Redraw the live line (terminal only; throttled to 10 Hz)."""
        if not (self.enabled and self.tty):
            return
        now = time.monotonic()
        if now - self._last_draw < 0.1 and step < max_steps:
            return
        self._last_draw = now
        width = 24
        filled = int(width * step / max(1, max_steps))
        bar = "#" * filled + "." * (width - filled)
        self.stream.write(
            f"\r[{bar}] step {step}/{max_steps}  loss {loss:.4f}  "
            f"{tokens_per_s:,.0f} tok/s  ETA {format_duration(eta_s)}   "
        )
        self.stream.flush()
        self._line_open = True

    def status_line(self, text: str | None) -> None:
        """Redraw a free-form live line (terminal only; 10 Hz); None ends it."""
        if not (self.enabled and self.tty):
            return
        if text is None:
            self._end_line()
            self.stream.flush()
            return
        now = time.monotonic()
        if now - self._last_draw < 0.1:
            return
        self._last_draw = now
        self.stream.write(f"\r{text}   ")
        self.stream.flush()
        self._line_open = True

    def _end_line(self) -> None:
        if self._line_open:
            self.stream.write("\n")
            self._line_open = False

    def close(self) -> None:
        if self.enabled and self.tty:
            self._end_line()
            self.stream.flush()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
