"""One `adamw-job run` per run directory: two runs writing the same checkpoints would corrupt
each other's resume point, so the directory is locked (flock, released when the run exits)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

LOCK_FILE = ".lock"


class RunDirBusy(RuntimeError):
    """Another live process holds the run directory."""


@contextlib.contextmanager
def exclusive(run_dir: Path) -> Iterator[None]:
    """Hold the run directory for the duration of the block, or raise RunDirBusy at once."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK_FILE, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            raise RunDirBusy(f"{run_dir} is in use by another adamw-job run (pid {holder}); "
                             "wait for it to finish, or pass --dir for a separate run") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield


def in_use(run_dir: Path) -> bool:
    """Whether a live run holds the directory (for scripts that would move it)."""
    try:
        with exclusive(run_dir):
            return False
    except RunDirBusy:
        return True
