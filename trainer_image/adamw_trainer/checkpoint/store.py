"""On-disk checkpoint layout: `step-N` folders that count only when their manifest verifies.

    <dir>/step-120/model.pt
                  /optimizer.pt
                  /train_state.pt
                  /manifest.json     sha256 + size per file, and the checkpoint's metadata

A checkpoint is written into a hidden temporary folder (`.tmp-step-N-...`), every file
fsynced, the manifest written last, then the folder is renamed to `step-N` and the parent
directory fsynced. A crash at any moment leaves either no `step-N` at all or a complete
one; a folder whose files do not match the manifest (truncated, bit-flipped, manifest
missing) is skipped on resume and counted.

`<dir>/best` is not a folder but a name the trainer's readers (`finetune.initFrom`, `adamw-train
export --checkpoint`) resolve to the checkpoint with the lowest validation loss (`best`);
pruning never deletes that one.

This module is torch-free: it moves bytes, `payload.py` decides what the bytes are.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
BEST_ALIAS = "best"
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d+)$")
_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"

FileWriter = Callable[[BinaryIO], None]


class CheckpointError(Exception):
    """A checkpoint cannot be used; the message says which one and why."""


class CorruptCheckpointError(CheckpointError):
    """Missing manifest, missing file, wrong size or sha256: the checkpoint is incomplete."""


class UnsafeCheckpointError(CheckpointError):
    """A file would execute code when loaded (a pickle that is not plain tensors/data)."""


@dataclass(frozen=True)
class CheckpointMeta:
    """What a checkpoint says about itself; stored inside its manifest."""

    step: int
    loss: float | None
    finite: bool
    time: float
    config_hash: str
    world_size: int
    tokens_seen: int
    # Validation loss measured at this very step (None: no evaluation at this step). The
    # complete checkpoint with the lowest one is the run's best checkpoint.
    validation_loss: float | None = None

    def to_json(self) -> dict:
        data = asdict(self)
        # JSON has no NaN/Inf; a non-finite loss is recorded as null with finite=false.
        if data["loss"] is not None and not math.isfinite(data["loss"]):
            data["loss"] = None
        out = {
            "step": data["step"],
            "loss": data["loss"],
            "finite": data["finite"],
            "time": data["time"],
            "configHash": data["config_hash"],
            "worldSize": data["world_size"],
            "tokensSeen": data["tokens_seen"],
        }
        if _finite_or_none(data["validation_loss"]) is not None:
            out["validationLoss"] = data["validation_loss"]
        return out

    @classmethod
    def from_json(cls, data: Mapping) -> CheckpointMeta:
        return cls(
            step=int(data["step"]),
            loss=None if data.get("loss") is None else float(data["loss"]),
            finite=bool(data["finite"]),
            time=float(data["time"]),
            config_hash=str(data.get("configHash", "")),
            world_size=int(data.get("worldSize", 1)),
            tokens_seen=int(data.get("tokensSeen", 0)),
            validation_loss=_finite_or_none(data.get("validationLoss")),
        )


def _finite_or_none(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint folder whose manifest was read (and, if `verified`, whose files match it)."""

    path: Path
    meta: CheckpointMeta
    files: Mapping[str, Mapping[str, object]]
    verified: bool

    @property
    def step(self) -> int:
        return self.meta.step

    @property
    def known_good(self) -> bool:
        """Complete and saved with a finite loss: a safe place to roll back to."""
        return self.meta.finite

    @property
    def best_candidate(self) -> bool:
        """Known-good and evaluated at its own step: it can be the best checkpoint."""
        return self.known_good and self.meta.validation_loss is not None

    def status(self) -> dict:
        """The `/status` view the operator copies into the job's status (time in RFC 3339)."""
        when = datetime.fromtimestamp(self.meta.time, tz=UTC)
        out = {
            "step": self.meta.step,
            "loss": self.meta.to_json()["loss"],
            "time": when.isoformat(timespec="seconds").replace("+00:00", "Z"),
        }
        if self.meta.validation_loss is not None:
            out["validationLoss"] = self.meta.validation_loss
        return out


def _sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _HashingFile:
    """File wrapper that hashes and counts bytes as they are written (no second read pass)."""

    def __init__(self, f: BinaryIO):
        self._f = f
        self.sha256 = hashlib.sha256()
        self.size = 0
        # torch.save's zip writer turns an OSError from write() into an opaque RuntimeError
        # ("unexpected pos ..."); keep the real one (ENOSPC, EFBIG, ...) to report it.
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            n = self._f.write(data)
        except OSError as err:
            self.error = err
            raise
        self.sha256.update(memoryview(data)[:n] if n is not None else data)
        self.size += n if n is not None else len(data)
        return n

    def flush(self) -> None:
        self._f.flush()

    def __getattr__(self, name):  # torch.save may probe tell()/seekable()
        return getattr(self._f, name)


class CheckpointStore:
    """The `step-N` folders under one directory: write atomically, list, verify, prune."""

    def __init__(self, root: str | os.PathLike[str], keep_latest: int = 3):
        if keep_latest < 1:
            raise ValueError(f"checkpoint.keepLatest must be at least 1 (got {keep_latest})")
        self.root = Path(root)
        self.keep_latest = keep_latest

    # -- writing ------------------------------------------------------------------------

    def write(self, meta: CheckpointMeta, files: Mapping[str, FileWriter]) -> CheckpointInfo:
        """Write `files` (name -> function writing the bytes) as `step-<meta.step>`, atomically.

        Raises OSError on any write failure, after removing the temporary folder: nothing
        partial is ever visible under a `step-N` name.
        """
        if MANIFEST in files:
            raise ValueError(f"{MANIFEST} is written by the store itself")
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / f"step-{meta.step}"
        tmp = self.root / f"{_TMP_PREFIX}step-{meta.step}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            entries: dict[str, dict[str, object]] = {}
            for name, write_fn in files.items():
                entries[name] = self._write_file(tmp / name, write_fn)
                _fault_delay()
            manifest = {"format": FORMAT_VERSION, "meta": meta.to_json(), "files": entries}
            self._write_file(
                tmp / MANIFEST, lambda f: f.write(json.dumps(manifest, indent=1).encode())
            )
            _fsync_dir(tmp)
            self._replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return CheckpointInfo(path=final, meta=meta, files=entries, verified=True)

    @staticmethod
    def _write_file(path: Path, write_fn: FileWriter) -> dict[str, object]:
        with open(path, "xb") as raw:
            f = _HashingFile(raw)
            try:
                write_fn(f)
            except Exception:
                if f.error is not None:
                    raise f.error from None
                raise
            raw.flush()
            os.fsync(raw.fileno())
        return {"sha256": f.sha256.hexdigest(), "bytes": f.size}

    def _replace(self, tmp: Path, final: Path) -> None:
        """Rename tmp -> final; an existing step-N (re-saved after a resume) is moved aside first."""
        trash = None
        if final.exists():
            trash = self.root / f"{_TRASH_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
            os.rename(final, trash)
        os.rename(tmp, final)
        _fsync_dir(self.root)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)

    # -- reading ------------------------------------------------------------------------

    def steps(self) -> list[int]:
        """Steps of every `step-N` folder present, oldest first (complete or not)."""
        if not self.root.is_dir():
            return []
        found = []
        for entry in self.root.iterdir():
            m = _STEP_DIR.match(entry.name)
            if m and entry.is_dir():
                found.append(int(m.group(1)))
        return sorted(found)

    def path(self, step: int) -> Path:
        return self.root / f"step-{step}"

    def read_manifest(self, step: int) -> CheckpointInfo:
        """Parse `step-N/manifest.json` without hashing the files (cheap)."""
        path = self.path(step)
        try:
            data = json.loads((path / MANIFEST).read_text())
            meta = CheckpointMeta.from_json(data["meta"])
            files = data["files"]
            if not isinstance(files, dict) or not files:
                raise ValueError("no files listed")
        except FileNotFoundError:
            raise CorruptCheckpointError(f"{path}: no {MANIFEST} (incomplete write)") from None
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CorruptCheckpointError(f"{path}/{MANIFEST} is unreadable: {err}") from None
        if meta.step != step:
            raise CorruptCheckpointError(f"{path}: manifest says step {meta.step}")
        return CheckpointInfo(path=path, meta=meta, files=files, verified=False)

    def verify(self, step: int) -> CheckpointInfo:
        """Check every file against the manifest's size and sha256; raise CorruptCheckpointError."""
        info = self.read_manifest(step)
        for name, entry in info.files.items():
            file = info.path / name
            if Path(name).name != name:
                raise CorruptCheckpointError(f"{info.path}: manifest names a path outside it: {name!r}")
            try:
                digest, size = _sha256_file(file)
            except FileNotFoundError:
                raise CorruptCheckpointError(f"{file}: missing") from None
            if size != entry.get("bytes"):
                raise CorruptCheckpointError(
                    f"{file}: {size} bytes, manifest says {entry.get('bytes')} (truncated?)"
                )
            if digest != entry.get("sha256"):
                raise CorruptCheckpointError(f"{file}: sha256 does not match the manifest")
        return CheckpointInfo(path=info.path, meta=info.meta, files=info.files, verified=True)

    def valid_newest_first(
        self, on_corrupt: Callable[[int, CheckpointError], None] | None = None
    ) -> Iterator[CheckpointInfo]:
        """Verified checkpoints, newest first; corrupt ones are reported to `on_corrupt` and skipped."""
        for step in reversed(self.steps()):
            try:
                yield self.verify(step)
            except CorruptCheckpointError as err:
                log.warning("skipping checkpoint step-%d: %s", step, err)
                if on_corrupt is not None:
                    on_corrupt(step, err)

    def newest_valid(
        self, on_corrupt: Callable[[int, CheckpointError], None] | None = None
    ) -> CheckpointInfo | None:
        return next(self.valid_newest_first(on_corrupt), None)

    def best(self, verify: bool = True) -> CheckpointInfo | None:
        """The checkpoint with the lowest validation loss (the newest of equals); None if no
        checkpoint was saved at an evaluation. `verify` hashes the chosen one's files, and
        falls back to the next best when they do not match."""
        candidates = []
        for step in self.steps():
            try:
                info = self.read_manifest(step)
            except CorruptCheckpointError:
                continue
            if info.best_candidate:
                candidates.append(info)
        candidates.sort(key=lambda i: (i.meta.validation_loss, -i.step))
        for info in candidates:
            if not verify:
                return info
            try:
                return self.verify(info.step)
            except CorruptCheckpointError as err:
                log.warning("best checkpoint step-%d is unusable: %s", info.step, err)
        return None

    def last_good(self) -> CheckpointInfo | None:
        """The newest verified checkpoint saved with a finite loss."""
        for info in self.valid_newest_first():
            if info.known_good:
                return info
        return None

    # -- housekeeping -------------------------------------------------------------------

    def prune(self, protect: int | None = None) -> list[int]:
        """Keep the newest `keep_latest` complete checkpoints, the newest known-good one and
        the best one (lowest validation loss, see `best`).

        Completeness here is the manifest being present and readable (the manifest is written
        last), not a full re-hash of every file on every save; `protect` names a step that is
        kept whatever happens (the checkpoint training resumed or rolled back from).
        Folders without a readable manifest that are older than the newest complete
        checkpoint are leftovers of failed writes and are removed too.
        """
        complete: list[CheckpointInfo] = []
        broken: list[int] = []
        for step in reversed(self.steps()):
            try:
                complete.append(self.read_manifest(step))
            except CorruptCheckpointError:
                broken.append(step)
        keep = {info.step for info in complete[: self.keep_latest]}
        good = next((info for info in complete if info.known_good), None)
        if good is not None:
            keep.add(good.step)
        best = min((i for i in complete if i.best_candidate),
                   key=lambda i: (i.meta.validation_loss, -i.step), default=None)
        if best is not None:
            keep.add(best.step)
        if protect is not None:
            keep.add(protect)
        newest_complete = complete[0].step if complete else None
        doomed = [i.step for i in complete if i.step not in keep]
        doomed += [s for s in broken if newest_complete is not None and s < newest_complete]
        return self._delete(doomed)

    def discard_newer_than(self, step: int) -> list[int]:
        """Delete checkpoints after `step`: after a rollback they belong to the abandoned,
        diverged timeline, and a restart must not resume from them."""
        return self._delete([s for s in self.steps() if s > step])

    def _delete(self, steps: list[int]) -> list[int]:
        for step in sorted(steps):
            # Rename first so a crash mid-delete never leaves a half-deleted step-N behind.
            trash = self.root / f"{_TRASH_PREFIX}step-{step}-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(self.path(step), trash)
            except OSError as err:
                log.warning("could not remove checkpoint step-%d: %s", step, err)
                continue
            shutil.rmtree(trash, ignore_errors=True)
        return sorted(steps)

    def remove_leftovers(self) -> int:
        """Delete temporary and trash folders left by a process killed mid-write (rank 0, at start)."""
        if not self.root.is_dir():
            return 0
        n = 0
        for entry in self.root.iterdir():
            if entry.name.startswith((_TMP_PREFIX, _TRASH_PREFIX)):
                shutil.rmtree(entry, ignore_errors=True)
                n += 1
        return n


# Fault injection for tests only: seconds to sleep after each file of a checkpoint, so a test
# can SIGKILL the trainer reliably *during* a checkpoint write. Never set it in production.
FAULT_WRITE_DELAY_ENV = "ADAMW_FAULT_CHECKPOINT_WRITE_DELAY_SECONDS"


def _fault_delay() -> None:
    delay = os.environ.get(FAULT_WRITE_DELAY_ENV)
    if delay:
        time.sleep(float(delay))
