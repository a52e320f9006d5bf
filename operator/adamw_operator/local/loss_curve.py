"""The loss curves of a local run (training and validation), read from rank 0's JSON log lines and
drawn with matplotlib."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path


def loss_points(rank0_logs: Iterable[Path], event: str = "train",
                field: str = "loss") -> tuple[list[tuple[int, float]], list[int]]:
    """(step, value) of one logged quantity over all attempts, a later attempt replacing steps
    it redid, and the step each later attempt resumed from (where the curve restarts).
    Training loss by default; `event="eval", field="validationLoss"` for validation loss."""
    by_step: dict[int, float] = {}
    resumes: list[int] = []
    for i, log in enumerate(rank0_logs):
        first_step = None
        try:
            lines = log.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            if not line.startswith("{"):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") != event or not isinstance(record.get(field), (int, float)):
                continue
            step = int(record["step"])
            if first_step is None:
                first_step = step
                for later in [s for s in by_step if s >= step]:
                    del by_step[later]  # redone after a resume from an older checkpoint
            by_step[step] = float(record[field])
        if i > 0 and first_step is not None:
            resumes.append(first_step)
    return sorted(by_step.items()), resumes


def write_loss_curve(points: list[tuple[int, float]], resumes: list[int], path: Path, title: str,
                     validation: list[tuple[int, float]] | None = None) -> Path | None:
    """A PNG of training (and validation) loss against step with the restarts marked; None when
    there is nothing to draw. The gap between the two curves is how overfitting shows."""
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    steps, losses = zip(*points, strict=True)
    ax.plot(steps, losses, color="tab:blue", linewidth=1.5, label="training loss (rank 0)")
    if validation:
        vsteps, vlosses = zip(*validation, strict=True)
        ax.plot(vsteps, vlosses, color="tab:orange", linewidth=1.5, marker="o", markersize=3,
                label="validation loss")
    for i, step in enumerate(resumes):
        ax.axvline(step, color="tab:red", linestyle="--", linewidth=1,
                   label="restart (resumed from checkpoint)" if i == 0 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
