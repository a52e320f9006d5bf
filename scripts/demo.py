#!/usr/bin/env python3
"""`make demo`: run the quickstart AdamWTrainingJob on this machine, no cluster needed.

    .venv/bin/python scripts/demo.py [--prometheus]

It is `adamw-job run examples/quickstart.yaml --dir runs/quickstart`: two CPU workers
train a small byte-level GPT on the Python standard library's sources for a few minutes,
with a live status line, each worker's metrics URL, a summary and runs/quickstart/loss.png
at the end. Ctrl-C saves a checkpoint and stops; `make demo` again resumes. A run that
already finished is moved aside to runs/quickstart-<time> so the demo starts afresh.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "examples" / "quickstart.yaml"
RUN_DIR = ROOT / "runs" / "quickstart"


def finished(run_dir: Path) -> bool:
    from adamw_operator.status import TERMINAL_PHASES

    try:
        return json.loads((run_dir / "status.json").read_text()).get("phase") in TERMINAL_PHASES
    except (OSError, ValueError):
        return False


def main() -> int:
    from adamw_operator.local.run_dir import in_use

    if finished(RUN_DIR) and not in_use(RUN_DIR):
        aside = RUN_DIR.with_name(time.strftime("quickstart-%Y%m%d-%H%M%S"))
        RUN_DIR.rename(aside)
        print(f"The previous demo run finished; kept it in {aside.relative_to(ROOT)}.")
    adamw_job = Path(sys.executable).parent / "adamw-job"
    argv = [str(adamw_job), "run", str(MANIFEST.relative_to(ROOT)), "--dir", str(RUN_DIR.relative_to(ROOT)),
            *sys.argv[1:]]
    os.chdir(ROOT)
    os.execv(argv[0], argv)  # Ctrl-C goes straight to adamw-job, which saves and stops


if __name__ == "__main__":
    sys.exit(main())
