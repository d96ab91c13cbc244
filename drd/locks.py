"""Per-source locks so that two backups of one source never overlap, also across processes
(the daemon and a `drd backup` on the same host). flock is released by the kernel when the
holder dies, so a kill -9 never leaves a stale lock behind."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from drd.errors import LockBusy as LockBusy  # defined with every error; named here too
from drd.layout import SourceRef


@contextlib.contextmanager
def source_lock(state_dir: Path, ref: SourceRef) -> Iterator[None]:
    with _lock(state_dir, f"{ref.plan}.{ref.source}.lock", f"{ref}: a backup"):
        yield


@contextlib.contextmanager
def restore_test_lock(state_dir: Path, ref: SourceRef) -> Iterator[None]:
    """Never two restore tests of one source at once (the daemon's and a `drd restore-test`)."""
    with _lock(state_dir, f"{ref.plan}.{ref.source}.restore-test.lock", f"{ref}: a restore test"):
        yield


@contextlib.contextmanager
def _lock(state_dir: Path, name: str, what: str) -> Iterator[None]:
    lock_dir = state_dir / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(lock_dir / name, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise LockBusy(f"{what} is already running (held by pid {holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)
