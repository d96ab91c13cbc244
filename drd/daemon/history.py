"""Job history in a small SQLite database in the state directory.

Storage stays the source of truth for which backups exist (the catalog is rebuilt from it on
start); this file only remembers what storage cannot tell: failed attempts, durations, and
jobs that were interrupted (a row with no finish time after a restart is marked 'interrupted').
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from drd.errors import StateError

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    plan TEXT NOT NULL,
    source TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    result TEXT,
    backup_id TEXT,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_source ON jobs (kind, plan, source, id);
"""


@dataclass(frozen=True)
class JobRecord:
    id: int
    kind: str
    plan: str
    source: str
    started_at: float
    finished_at: float | None
    result: str | None
    backup_id: str | None
    detail: str | None


@contextmanager
def _state(path: Path, doing: str) -> Iterator[None]:
    """sqlite's and the OS's errors as one StateError naming the file and what failed."""
    try:
        yield
    except (sqlite3.Error, OSError) as exc:
        raise StateError(f"state directory: cannot {doing} {path}: {exc}") from None


def _open_read_only(path: Path) -> sqlite3.Connection:
    """The history opened so that sqlite cannot write it: a URI, which is why the path is
    escaped (`?`, `#` and `%` in a directory name would otherwise be read as URI syntax)."""
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)


class History:
    """Every method raises StateError when the database cannot be written or read: callers
    fail the job that needed it (and back off) instead of retrying at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with _state(path, "open the job history"):
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._db = sqlite3.connect(path, isolation_level=None)
            self._db.executescript(_SCHEMA)
            # A row without finish time belongs to a process that died mid-job.
            self._db.execute(
                "UPDATE jobs SET finished_at = started_at, result = 'interrupted' "
                "WHERE finished_at IS NULL"
            )

    def _run(self, doing: str, op: Callable[[], T]) -> T:
        with _state(self.path, doing):
            return op()

    def close(self) -> None:
        with _state(self.path, "close the job history"):
            self._db.close()

    def start(self, kind: str, plan: str, source: str, now: float | None = None) -> int:
        cur = self._run(
            "record a job in",
            lambda: self._db.execute(
                "INSERT INTO jobs (kind, plan, source, started_at) VALUES (?, ?, ?, ?)",
                (kind, plan, source, time.time() if now is None else now),
            ),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def finish(
        self,
        job_id: int,
        result: str,
        *,
        backup_id: str | None = None,
        detail: str | None = None,
        now: float | None = None,
    ) -> None:
        self._run(
            "record a job's result in",
            lambda: self._db.execute(
                "UPDATE jobs SET finished_at = ?, result = ?, backup_id = ?, detail = ? "
                "WHERE id = ?",
                (time.time() if now is None else now, result, backup_id, detail, job_id),
            ),
        )

    def last(
        self, kind: str, plan: str, source: str, result: str | Collection[str] | None = None
    ) -> JobRecord | None:
        """The newest finished job of this kind and source (with this result, or one of these
        results, if given)."""
        results = [result] if isinstance(result, str) else list(result or ())
        wanted = f"AND result IN ({', '.join('?' * len(results))}) " if results else ""
        row = self._run(
            "read",
            lambda: self._db.execute(
                "SELECT * FROM jobs WHERE kind = ? AND plan = ? AND source = ? "
                f"AND finished_at IS NOT NULL {wanted}"
                "ORDER BY id DESC LIMIT 1",
                (kind, plan, source, *results),
            ).fetchone(),
        )
        return JobRecord(*row) if row else None


def read_finished(path: Path, kind: str, plan: str, since: float) -> list[JobRecord]:
    """Finished jobs of this kind and plan that started at `since` (epoch seconds) or later,
    oldest first, read without writing: the daemon may be running and owns the file (History()
    would mark its running jobs interrupted). No file yet: no jobs."""
    if not path.exists():
        return []
    with _state(path, "read the job history"):
        db = _open_read_only(path)
        try:
            rows = db.execute(
                "SELECT * FROM jobs WHERE kind = ? AND plan = ? AND started_at >= ? "
                "AND finished_at IS NOT NULL ORDER BY started_at, id",
                (kind, plan, since),
            ).fetchall()
        finally:
            db.close()
    return [JobRecord(*row) for row in rows]


class HistoryReader:
    """The job history opened read-only, for `drd status` next to (or without) a running
    daemon: unlike History it never marks unfinished jobs interrupted (they may be running)
    and never creates the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with _state(path, "read the job history"):
            if not path.is_file():
                raise FileNotFoundError(2, "no job history yet", str(path))
            self._db = _open_read_only(path)

    def close(self) -> None:
        self._db.close()

    def last(
        self, kind: str, plan: str, source: str, result: str | None = None
    ) -> JobRecord | None:
        """The newest finished job of this kind and source (with this result, if given)."""
        wanted = "AND result = ? " if result is not None else ""
        with _state(self.path, "read"):
            row = self._db.execute(
                "SELECT * FROM jobs WHERE kind = ? AND plan = ? AND source = ? "
                f"AND finished_at IS NOT NULL {wanted}ORDER BY id DESC LIMIT 1",
                (kind, plan, source, *(() if result is None else (result,))),
            ).fetchone()
        return JobRecord(*row) if row else None

    def unfinished(self) -> list[JobRecord]:
        """Jobs started and not finished: running, or their process died."""
        with _state(self.path, "read"):
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE finished_at IS NULL ORDER BY id"
            ).fetchall()
        return [JobRecord(*row) for row in rows]
