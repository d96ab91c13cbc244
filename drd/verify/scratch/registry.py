"""The registry of live scratch resources, so that a crash never leaks one for good.

Every scratch resource (an ephemeral server, a scratch database, a temporary directory) gets a
small JSON record in `<state_dir>/scratch/<id>.json` that is written *before* the resource is
created and removed only after it was destroyed. The owning process holds an exclusive flock on
the record for the resource's lifetime; the kernel drops it when the process dies, however it
dies. So a record that can be locked belongs to a dead owner: `sweep_leftovers` (the daemon at
start, `drd restore-test` before it runs) destroys what such a record describes and removes the
record. A record still locked is someone's live test (another drd process on this host) and is
left alone.

Records are written as a dot-file, locked, then renamed into place: a sweeper never sees a
record that is not yet locked. A dot-file left behind (a crash before the rename) describes
nothing that was created and is simply removed.

Names carry the id: `drd_scratch_<id>` (databases), `drd-scratch-<id>` (directories), so a
leftover is recognisable, and destroy functions refuse to touch anything named otherwise.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

REGISTRY_DIR = "scratch"
DB_PREFIX = "drd_scratch_"
DIR_PREFIX = "drd-scratch-"


def new_id() -> str:
    return secrets.token_hex(6)


def registry_dir(state_dir: Path) -> Path:
    return state_dir / REGISTRY_DIR


@dataclass
class Registration:
    """A live resource's record, locked by this process until release() or abandon()."""

    id: str
    path: Path
    record: dict[str, Any]
    _fd: int | None

    def release(self) -> None:
        """The resource is gone: remove the record, then let go of the lock."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.abandon()

    def abandon(self) -> None:
        """The resource could not be destroyed: keep the record for the next sweep."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def register(state_dir: Path, resource_id: str, kind: str, **fields: Any) -> Registration:
    """Record a resource about to be created (see the module docstring)."""
    directory = registry_dir(state_dir)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    record = {
        "id": resource_id,
        "kind": kind,
        "owner_pid": os.getpid(),
        "created_at": time.time(),
        **fields,
    }
    final = directory / f"{resource_id}.json"
    partial = directory / f".{resource_id}.json.partial"
    fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, json.dumps(record, indent=2, sort_keys=True).encode() + b"\n")
        os.fsync(fd)
        os.rename(partial, final)
        _fsync_dir(directory)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        os.close(fd)
        raise
    return Registration(resource_id, final, record, fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: destroys the resource a record describes; raises if it could not (the record is kept)
Destroyer = Callable[[Mapping[str, Any], Sequence[str]], Awaitable[None]]


#: kind -> the module whose `destroy` (a Destroyer) removes such a resource; imported only when a
#: leftover of that kind is found (a cloud SDK is not loaded for nothing)
DESTROYERS = {
    "ephemeral-postgres": "drd.verify.scratch.ephemeral_postgres",
    "postgres-server": "drd.verify.scratch.postgres_server",
    "tempdir": "drd.verify.scratch.tempdir",
    "cloudsql-instance": "drd.verify.scratch.cloudsql",
    "ephemeral-mariadb": "drd.verify.scratch.ephemeral_mariadb",
    "mysql-server": "drd.verify.scratch.mysql_server",
    "gcs-scratch-bucket": "drd.verify.scratch.gcs_scratch",
}


def _destroyer(kind: str) -> Destroyer | None:
    import importlib

    module = DESTROYERS.get(kind)
    if module is None:
        return None
    destroy: Destroyer = importlib.import_module(module).destroy
    return destroy


async def sweep_leftovers(state_dir: Path, known_dsns: Sequence[str] = ()) -> list[str]:
    """Destroy every scratch resource whose owner died; return what was removed.

    `known_dsns` are the scratch server DSNs of the current config: records keep DSNs without
    their password, and the configured one (which may carry it) is used when it matches."""
    directory = registry_dir(state_dir)
    if not directory.is_dir():
        return []
    removed: list[str] = []
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") and path.name.endswith(".partial"):
            _remove_partial(path)
        elif path.suffix == ".json":
            what = await _sweep_one(path, known_dsns)
            if what:
                removed.append(what)
    return removed


def _remove_partial(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return  # being written by a live process
    finally:
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


async def _sweep_one(path: Path, known_dsns: Sequence[str]) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None  # its owner is alive
        try:
            record = json.loads(os.read(fd, 1 << 20) or b"{}")
            kind = record["kind"]
        except (ValueError, KeyError, TypeError):
            log.error("scratch registry: %s is not a valid record; left in place", path)
            return None
        destroy = _destroyer(str(kind))
        if destroy is None:
            log.error("scratch registry: %s is of unknown kind %r; left in place", path, kind)
            return None
        described = describe(record)
        try:
            await destroy(record, known_dsns)
        except Exception as exc:
            log.error(
                "could not remove the leftover %s (retried at next start): %s", described, exc
            )
            return None
        _unlink(path)
        log.warning("removed the leftover %s of an interrupted restore test", described)
        return described
    finally:
        os.close(fd)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def describe(record: Mapping[str, Any]) -> str:
    kind = record.get("kind")
    if kind == "ephemeral-postgres":
        return f"ephemeral PostgreSQL server in {record.get('root')}"
    if kind == "postgres-server":
        return f"scratch database {record.get('database')} ({record.get('dsn')})"
    if kind == "ephemeral-mariadb":
        return f"ephemeral MariaDB/MySQL server in {record.get('root')}"
    if kind == "mysql-server":
        return f"scratch database {record.get('database')} ({record.get('url')})"
    if kind == "gcs-scratch-bucket":
        return f"scratch prefix {str(record.get('target', '')).partition('?')[0]}"
    if kind == "cloudsql-instance":
        return f"Cloud SQL scratch instance {record.get('project')}/{record.get('instance')}"
    return f"scratch directory {record.get('path')}"
