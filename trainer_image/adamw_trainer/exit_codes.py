"""The exit-code contract between the trainer and the operator (torch-free, kopf-free).

The trainer exits with one of these codes and writes a JSON termination message; the
operator (and the local runner) map them to actions. Anything not listed is a crash.

    0    Succeeded       training reached maxSteps; every rank must exit 0
    2    InvalidConfig   permanent: restarting cannot help
    3    Diverged        non-finite steps exhausted the divergence policy
    143  Preempted       SIGTERM (128+15) *after* a checkpoint was saved
    else Crashed         retryable; uses the restart budget
"""

from __future__ import annotations

import enum
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


class ExitCode(enum.IntEnum):
    SUCCEEDED = 0
    INVALID_CONFIG = 2
    DIVERGED = 3
    PREEMPTED = 143


class ExitReason(enum.StrEnum):
    """CamelCase reasons, used in termination messages, conditions and events."""

    SUCCEEDED = "Succeeded"
    INVALID_CONFIG = "InvalidConfig"
    DIVERGED = "Diverged"
    PREEMPTED = "Preempted"
    CRASHED = "Crashed"


_REASON_BY_CODE = {
    ExitCode.SUCCEEDED: ExitReason.SUCCEEDED,
    ExitCode.INVALID_CONFIG: ExitReason.INVALID_CONFIG,
    ExitCode.DIVERGED: ExitReason.DIVERGED,
    ExitCode.PREEMPTED: ExitReason.PREEMPTED,
}


def reason_for_exit_code(code: int) -> ExitReason:
    """Map a process exit code to its reason; unknown codes (and signals) are crashes."""
    try:
        return _REASON_BY_CODE[ExitCode(code)]
    except ValueError:
        return ExitReason.CRASHED


@dataclass
class TerminationMessage:
    """What the trainer says about why it stopped (Kubernetes keeps up to 4 KiB of it)."""

    reason: str
    exit_code: int
    step: int = 0
    last_good_checkpoint_step: int | None = None
    message: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        data = asdict(self)
        data = {_camel(k): v for k, v in data.items()}
        text = json.dumps(data, separators=(",", ":"))
        if len(text) > 4000:  # the kubelet truncates at 4096 bytes; keep the JSON valid
            data["message"] = self.message[: max(0, 4000 - len(text) + len(self.message) - 3)] + "..."
            data["extra"] = {}
            text = json.dumps(data, separators=(",", ":"))
        return text

    @classmethod
    def from_json(cls, text: str) -> TerminationMessage:
        data = json.loads(text)
        return cls(
            reason=data.get("reason", ExitReason.CRASHED.value),
            exit_code=int(data.get("exitCode", 1)),
            step=int(data.get("step", 0)),
            last_good_checkpoint_step=data.get("lastGoodCheckpointStep"),
            message=data.get("message", ""),
            extra=data.get("extra", {}) or {},
        )

    def write(self, path: str | os.PathLike[str]) -> bool:
        """Best effort: a missing /dev/termination-log (outside Kubernetes) is not an error."""
        try:
            Path(path).write_text(self.to_json())
            return True
        except OSError:
            return False


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.title() for w in rest)
