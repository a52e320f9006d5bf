"""What `adamw-job run` prints: a live status line, worker URLs, events, the final summary."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from ..decisions import Event
from ..status import get_condition, parse_time


def checkpoint_step(status: dict[str, Any]) -> int | None:
    """The newest checkpoint step known, from /status polls or the workers' exit messages."""
    steps = [(status.get(k) or {}).get("step") for k in ("lastCheckpoint", "lastGoodCheckpoint")]
    steps = [s for s in steps if isinstance(s, int)]
    return max(steps) if steps else None


def _fmt_rate(value: Any) -> str:
    return f"{value * 100:.2f}%" if isinstance(value, (int, float)) else "-"


def status_line(status: dict[str, Any]) -> str:
    """One line of job state, like the printer columns of `kubectl get awj`."""
    step, max_steps = status.get("step"), status.get("maxSteps")
    loss, val = status.get("loss"), status.get("validationLoss")
    tps = status.get("tokensPerSecond")
    ckpt = checkpoint_step(status)
    phase = status.get("phase") or "Pending"
    if phase == "Restarting" and status.get("restartAfterTime"):
        wait = _seconds_until(status["restartAfterTime"])
        phase = f"Restarting in {wait:.0f}s" if wait > 0 else phase
    parts = [
        f"{phase:<10}",
        f"step {step if step is not None else '-'}/{max_steps if max_steps is not None else '-'}",
        f"loss {loss:.4f}" if isinstance(loss, (int, float)) else "loss -",
        f"val {val:.4f}" if isinstance(val, (int, float)) else "val -",
        f"{tps:,.0f} tok/s" if isinstance(tps, (int, float)) else "- tok/s",
        f"NaN {_fmt_rate(status.get('nonfiniteRate'))}",
        f"restarts {status.get('restarts', 0)}",
        f"preemptions {status.get('preemptions', 0)}",
        f"last ckpt {ckpt if ckpt is not None else '-'}",
    ]
    return " | ".join(parts)


def _seconds_until(rfc3339: str) -> float:
    when = parse_time(rfc3339)
    return 0.0 if when is None else (when - datetime.now(UTC)).total_seconds()


class ConsoleView:
    """Redraws one line on a terminal; elsewhere prints a line when the step moves (throttled)."""

    def __init__(self, stream: TextIO | None = None, tty: bool | None = None, interval: float = 5.0):
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval = interval
        self._open = False
        self._last_line = ""
        self._last_print = 0.0

    def _print(self, text: str) -> None:
        if self._open:
            self.stream.write("\n")
            self._open = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def header(self, name: str, manifest: Path, run_dir: Path, replicas: int, max_steps: int) -> None:
        self._print(f"adamw-job: running {name} from {manifest}: {replicas} worker(s), "
                    f"{max_steps} steps; checkpoints in {run_dir / 'checkpoints'}")
        self._print("  Ctrl-C saves a checkpoint and stops; the same command resumes.")

    def worker_started(self, worker: Any) -> None:
        metrics = f", metrics {worker.metrics_url}" if worker.metrics_url else ""
        self._print(f"  attempt {worker.attempt} rank {worker.rank}: pid {worker.process.pid}, "
                    f"ip {worker.ip}{metrics}, log {worker.log_file}")

    def event(self, event: Event) -> None:
        self._print(f"  [{event.type} {event.reason}] {event.message}")

    def update(self, status: dict[str, Any]) -> None:
        line = status_line(status)
        if self.tty:
            self.stream.write("\r" + line.ljust(len(self._last_line)))
            self.stream.flush()
            self._open = True
        elif line != self._last_line and (time.monotonic() - self._last_print >= self.interval
                                          or status.get("phase") != _phase(self._last_line)):
            self._print(line)
            self._last_print = time.monotonic()
        self._last_line = line

    def message(self, text: str) -> None:
        self._print(text)


def _phase(line: str) -> str:
    return line.split("|")[0].strip().split(" ")[0] if line else ""


def summary(name: str, status: dict[str, Any], *, interrupted: bool, wall_seconds: float,
            run_dir: Path, plot: Path | None, first_loss: float | None, last_loss: float | None,
            target: float | None = None, loss_steps: tuple[int, int] | None = None) -> str:
    """The closing report: did it finish, did it converge, where are the results."""
    phase = "Interrupted" if interrupted and status.get("phase") not in ("Succeeded", "Failed") \
        else status.get("phase", "?")
    ckpt = checkpoint_step(status)
    lines = [
        "",
        f"{name}: {phase} after {wall_seconds:.0f} s",
        f"  steps        {status.get('step', '-')} of {status.get('maxSteps', '-')}",
    ]
    if first_loss is not None and last_loss is not None:
        # Log-interval means, the same numbers the live line shows, at the steps they belong to.
        at = f", steps {loss_steps[0]} -> {loss_steps[1]}" if loss_steps else ""
        lines.append(f"  loss         {first_loss:.4f} -> {last_loss:.4f} (training{at})")
    val, best = status.get("validationLoss"), status.get("bestValidationLoss")
    if isinstance(val, (int, float)):
        best_ckpt = (status.get("bestCheckpoint") or {}).get("step")
        where = f", best checkpoint step {best_ckpt}" if best_ckpt is not None else ""
        best_text = f" (best {best:.4f}{where})" if isinstance(best, (int, float)) else ""
        lines.append(f"  validation   {val:.4f}{best_text}")
    lines += _convergence(status, phase, target)
    lines += [
        f"  restarts     {status.get('restarts', 0)} (preemptions {status.get('preemptions', 0)})",
        f"  checkpoint   {'step ' + str(ckpt) if ckpt is not None else 'none'} in {run_dir / 'checkpoints'}",
    ]
    if plot is not None:
        lines.append(f"  loss curve   {plot}")
    url = (status.get("tracking") or {}).get("url")
    if url:
        lines.append(f"  mlflow run   {url}")
    if status.get("message"):
        lines.append(f"  message      {status['message']}")
    if phase == "Interrupted":
        lines.append("  run the same command again to resume from the last checkpoint")
    return "\n".join(lines)


def _convergence(status: dict[str, Any], phase: str, target: float | None) -> list[str]:
    """Whether the run converged: the reason it succeeded, or why the target was not reached."""
    reason = (get_condition(status, "Succeeded") or {}).get("reason") if phase == "Succeeded" else None
    if reason == "TargetReached":
        seconds = status.get("timeToTargetSeconds")
        took = f" after {seconds:.0f} s" if isinstance(seconds, (int, float)) else ""
        return [f"  converged    TargetReached: validation loss at or below {target:g} at step "
                f"{status.get('stepsToTarget')}{took}" if target is not None else
                f"  converged    TargetReached at step {status.get('stepsToTarget')}{took}"]
    if reason == "EarlyStopped":
        return [f"  converged    EarlyStopped: {status.get('message', '')}"]
    if target is not None and phase in ("Succeeded", "Failed"):
        best = status.get("bestValidationLoss")
        got = f"the best validation loss was {best:.4f}" if isinstance(best, (int, float)) else "no evaluation ran"
        return [f"  target       {target:g} not reached: {got}; raise training.maxSteps or the target"]
    return []
