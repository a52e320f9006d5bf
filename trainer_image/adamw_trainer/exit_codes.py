"""The exit-code contract between the trainer and the operator (torch-free, kopf-free).

The trainer exits with one of these codes and writes a JSON termination message; the
operator (and the local runner) map them to actions. Anything not listed is a crash.

    0    Succeeded       training finished; every rank must exit 0. The termination
                         message's reason says how (`SUCCESS_REASONS`):
           Succeeded       it reached maxSteps
           TargetReached   an evaluation reached training.targetValidationLoss
           EarlyStopped    validation loss stopped improving (training.earlyStopping)
    2    InvalidConfig   permanent: restarting cannot help
    3    Diverged        non-finite steps exhausted the divergence policy
    143  Preempted       SIGTERM (128+15) *after* a checkpoint was saved
    else Crashed         retryable; uses the restart budget

The successful early stops share exit code 0 rather than taking codes of their own: the
kubelet marks a container Succeeded only on 0, torchrun (several GPUs per pod) reports 0
only when every local worker did and collapses any other code to 1, and a job controller
that knows nothing of this contract still reads them as success. Which success it was is
the termination message's `reason` (every rank agrees on the stop and writes the same
one); `success_reason` reads it. A message can name a success reason, but never turn a
non-zero exit into a success.
"""

from __future__ import annotations

import enum
import json
import math
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
    TARGET_REACHED = "TargetReached"
    EARLY_STOPPED = "EarlyStopped"
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


EARLY_SUCCESS_REASONS = frozenset({ExitReason.TARGET_REACHED, ExitReason.EARLY_STOPPED})
"""Successful stops before maxSteps: exit 0 with one of these reasons is not an early exit."""

SUCCESS_REASONS = frozenset({ExitReason.SUCCEEDED, *EARLY_SUCCESS_REASONS})


def reason_for_exit_code(code: int) -> ExitReason:
    """Map a process exit code to its reason; unknown codes (and signals) are crashes."""
    try:
        return _REASON_BY_CODE[ExitCode(code)]
    except ValueError:
        return ExitReason.CRASHED


def success_reason(exit_code: int | None, message: TerminationMessage | None) -> ExitReason | None:
    """How a process that exited `exit_code` succeeded; None when it did not (non-zero).

    Exit 0 with an early-success reason in its termination message is that reason; any
    other exit 0 (no message, or another reason) is plain Succeeded.
    """
    if exit_code != 0:
        return None
    told = message.reason if message is not None else None
    return ExitReason(told) if told in EARLY_SUCCESS_REASONS else ExitReason.SUCCEEDED


MAX_UNKNOWN_FIELDS = 20  # named in a termination message; the 4 KiB must hold them


@dataclass
class TerminationMessage:
    """What the trainer says about why it stopped (Kubernetes keeps up to 4 KiB of it)."""

    reason: str
    exit_code: int
    step: int = 0
    last_good_checkpoint_step: int | None = None
    message: str = ""
    # Convergence at the stop (issue 13), so the job status has it even when the last
    # /status poll came before the last evaluation.
    validation_loss: float | None = None
    best_validation_loss: float | None = None
    best_checkpoint_step: int | None = None
    # The last logged training loss (the mean of the last log interval), so the job status
    # pairs the final step with its loss rather than with the last poll's.
    loss: float | None = None
    # Version skew (InvalidConfig): the config fields this trainer did not know, and the config
    # schema it reads, so the operator can name the field and the image. Absent from older
    # trainers' messages; older operators ignore them.
    unknown_fields: list[str] = field(default_factory=list)
    config_schema: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        data = asdict(self)
        data = {_camel(k): v for k, v in data.items()}
        data["unknownFields"] = [f[:200] for f in self.unknown_fields[:MAX_UNKNOWN_FIELDS]]
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
            validation_loss=_float_or_none(data.get("validationLoss")),
            best_validation_loss=_float_or_none(data.get("bestValidationLoss")),
            best_checkpoint_step=_int_or_none(data.get("bestCheckpointStep")),
            loss=_float_or_none(data.get("loss")),
            unknown_fields=[f for f in data.get("unknownFields") or [] if isinstance(f, str)],
            config_schema=_int_or_none(data.get("configSchema")),
            extra=data.get("extra", {}) or {},
        )

    def write(self, path: str | os.PathLike[str]) -> bool:
        """Best effort: a missing /dev/termination-log (outside Kubernetes) is not an error."""
        try:
            Path(path).write_text(self.to_json())
            return True
        except OSError:
            return False


def _float_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.title() for w in rest)
