"""The on-disk checkpoint store: atomic step-N folders, manifests, verification, keep-K."""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import subprocess
import uuid
from pathlib import Path

import pytest
from adamw_trainer.checkpoint import store as store_module
from adamw_trainer.checkpoint.store import (
    MANIFEST,
    CheckpointMeta,
    CheckpointStore,
    CorruptCheckpointError,
)


def meta(step: int, loss: float | None = 1.0, finite: bool = True) -> CheckpointMeta:
    return CheckpointMeta(
        step=step, loss=loss, finite=finite, time=1000.0 + step, config_hash="abc",
        world_size=1, tokens_seen=step * 64,
    )


def files(step: int, size: int = 1000) -> dict:
    return {
        "a.bin": lambda f: f.write(bytes([step % 256]) * size),
        "b.bin": lambda f: f.write(b"b" * 10),
    }


def visible(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_write_produces_verified_step_folder_with_manifest(tmp_path):
    store = CheckpointStore(tmp_path)
    info = store.write(meta(5, loss=2.5), files(5))
    assert info.path == tmp_path / "step-5"
    assert visible(tmp_path) == ["step-5"]  # no temporary folder left behind
    manifest = json.loads((info.path / MANIFEST).read_text())
    assert set(manifest["files"]) == {"a.bin", "b.bin"}
    assert manifest["files"]["a.bin"]["bytes"] == 1000
    assert manifest["meta"] == {
        "step": 5, "loss": 2.5, "finite": True, "time": 1005.0, "configHash": "abc",
        "worldSize": 1, "tokensSeen": 320,
    }
    checked = store.verify(5)
    assert checked.verified and checked.meta.loss == 2.5 and checked.known_good
    assert checked.status() == {"step": 5, "loss": 2.5, "time": "1970-01-01T00:16:45Z"}


def test_non_finite_loss_is_recorded_as_null_and_not_known_good(tmp_path):
    store = CheckpointStore(tmp_path)
    store.write(meta(3, loss=float("nan"), finite=False), files(3))
    info = store.verify(3)
    assert info.meta.loss is None and not info.known_good
    assert store.last_good() is None


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda d: (d / "a.bin").write_bytes((d / "a.bin").read_bytes()[:500]), "truncated"),
        (lambda d: (d / "a.bin").write_bytes(b"X" * 1000), "sha256"),
        (lambda d: (d / "b.bin").unlink(), "missing"),
        (lambda d: (d / MANIFEST).unlink(), "no manifest.json"),
        (lambda d: (d / MANIFEST).write_text("{not json"), "unreadable"),
    ],
    ids=["truncated", "bit-flipped", "file-missing", "manifest-missing", "manifest-garbage"],
)
def test_damaged_newest_checkpoint_is_skipped_and_reported(tmp_path, damage, expected):
    store = CheckpointStore(tmp_path)
    store.write(meta(10), files(10))
    store.write(meta(20), files(20))
    damage(tmp_path / "step-20")
    with pytest.raises(CorruptCheckpointError, match=expected):
        store.verify(20)
    skipped = []
    newest = store.newest_valid(on_corrupt=lambda step, err: skipped.append((step, str(err))))
    assert newest is not None and newest.step == 10
    assert [s for s, _ in skipped] == [20] and expected in skipped[0][1]


def test_keep_latest_k_never_deletes_last_known_good(tmp_path):
    store = CheckpointStore(tmp_path, keep_latest=2)
    store.write(meta(10), files(10))  # the last finite one
    for step in (20, 30, 40):
        store.write(meta(step, loss=float("inf"), finite=False), files(step))
        store.prune()
    assert store.steps() == [10, 30, 40]
    assert store.last_good().step == 10
    store.write(meta(50), files(50))  # a newer good one: step 10 may go now
    store.prune()
    assert store.steps() == [40, 50]


def test_prune_keeps_protected_step_and_drops_old_broken_folders(tmp_path):
    store = CheckpointStore(tmp_path, keep_latest=1)
    for step in (10, 20, 30):
        store.write(meta(step), files(step))
    (tmp_path / "step-20" / MANIFEST).unlink()  # broken, older than the newest complete
    assert store.prune(protect=10) == [20]
    assert store.steps() == [10, 30]


def test_resaving_an_existing_step_replaces_it(tmp_path):
    store = CheckpointStore(tmp_path)
    store.write(meta(7, loss=3.0), files(7))
    store.write(meta(7, loss=2.0), files(7, size=50))
    assert store.verify(7).meta.loss == 2.0
    assert visible(tmp_path) == ["step-7"]


def test_leftover_temporary_folders_are_invisible_and_removed(tmp_path):
    store = CheckpointStore(tmp_path)
    store.write(meta(1), files(1))
    (tmp_path / ".tmp-step-2-123-deadbeef").mkdir()
    (tmp_path / ".tmp-step-2-123-deadbeef" / "a.bin").write_bytes(b"half")
    assert store.steps() == [1]
    assert store.remove_leftovers() == 1
    assert visible(tmp_path) == ["step-1"]


def _assert_failed_write_left_nothing(store: CheckpointStore, root: Path, before: list[str]):
    assert visible(root) == before, "a failed write must leave no partial checkpoint"
    assert store.newest_valid().step == 1


def test_write_failure_file_size_limit_leaves_nothing_partial(tmp_path):
    """A real kernel write failure: RLIMIT_FSIZE makes write(2) fail with EFBIG (works without root)."""
    store = CheckpointStore(tmp_path)
    store.write(meta(1), files(1))
    before = visible(tmp_path)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    try:
        with pytest.raises(OSError) as err:
            store.write(meta(2), files(2, size=100_000))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert err.value.errno == errno.EFBIG
    _assert_failed_write_left_nothing(store, tmp_path, before)


def test_write_failure_disk_full_on_real_tmpfs_leaves_nothing_partial(tmp_path):
    """A real full disk: a 64 KiB tmpfs. Needs mount permission (root in CI); skipped otherwise."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", f"ckpt-test-{uuid.uuid4().hex[:6]}", str(mnt)],
        capture_output=True, text=True,
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip()}); EFBIG test covers this")
    try:
        store = CheckpointStore(mnt / "ckpt")
        store.write(meta(1), files(1))
        before = visible(mnt / "ckpt")
        with pytest.raises(OSError) as err:
            store.write(meta(2), files(2, size=200_000))
        assert err.value.errno == errno.ENOSPC
        _assert_failed_write_left_nothing(store, mnt / "ckpt", before)
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_write_failure_permission_denied_leaves_nothing_partial(tmp_path, monkeypatch):
    """Permission denied, injected at the open(2) layer: tests run as root, which ignores chmod."""
    store = CheckpointStore(tmp_path)
    store.write(meta(1), files(1))
    before = visible(tmp_path)
    real_open = open

    def open_denying_second_file(path, mode="r", *a, **kw):
        if "x" in mode and Path(path).name == "b.bin":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, mode, *a, **kw)

    monkeypatch.setattr(store_module, "open", open_denying_second_file, raising=False)
    with pytest.raises(PermissionError):
        store.write(meta(2), files(2))
    _assert_failed_write_left_nothing(store, tmp_path, before)


def test_keep_latest_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="keepLatest"):
        CheckpointStore(tmp_path, keep_latest=0)


def test_discard_newer_than_drops_the_abandoned_timeline(tmp_path):
    store = CheckpointStore(tmp_path)
    for step in (10, 20, 30):
        store.write(meta(step), files(step))
    assert store.discard_newer_than(10) == [20, 30]
    assert visible(tmp_path) == ["step-10"]
