"""The scratch server of a point-in-time restore test: the recovered data directory itself,
started as a throwaway server (drd.verify.pitr_restore_test), destroyed afterwards.

    <dir>/drd-scratch-<id>/        owned by the server's user, mode 0700
        data/                      the data directory drd.pipeline.pitr restores and starts
        sock/                      its Unix socket, 0700: only that user (and root) connect
        pg_hba.conf                `local all all trust` and nothing else

Unlike ephemeral_postgres there is no initdb: the cluster is the source's, with its roles and
its pg_hba.conf, which would let in whoever the source lets in. The copy gets drd's own
hba_file instead: socket connections only, in a directory nobody else can enter, so restored
production data is readable by drd (and the server's OS user) alone; TCP on 127.0.0.1 (a free
port, never another address) is refused by that file. jit=off for the reason ephemeral_postgres
gives (MemoryDenyWriteExecute), durability off (the copy lives for minutes), archive_mode off
(the copy must never archive into the source's archive). The replication settings stay the
source's: recovery refuses lower ones (and the hba file admits no replication connection).

The directory is registered as an `ephemeral-postgres` resource (same layout, root/data): if
drd dies during the test, the next start's sweep stops the server (`pg_ctl stop -m immediate`)
and removes the directory with ephemeral_postgres.destroy.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shlex
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from drd.errors import RestoreError
from drd.verify.scratch.ephemeral_postgres import destroy, register_server
from drd.verify.scratch.server_tools import HOST, free_port
from drd.verify.scratch.teardown import run_to_completion

log = logging.getLogger(__name__)

_SETTINGS = {
    "listen_addresses": HOST,
    "jit": "off",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "archive_mode": "off",
}


@dataclass(frozen=True)
class RecoveredScratch:
    root: Path
    port: int
    run_as: str | None

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    def server_options(self) -> str:
        """pg_ctl -o for the copy (the port is passed on its own)."""
        settings = {
            **_SETTINGS,
            "unix_socket_directories": str(self.socket_dir),
            "hba_file": str(self.root / "pg_hba.conf"),
        }
        return " ".join(f"-c {shlex.quote(f'{k}={v}')}" for k, v in settings.items())

    def dsn(self, dbname: str, user: str) -> str:
        from psycopg.conninfo import make_conninfo

        return make_conninfo(
            "", host=str(self.socket_dir), port=str(self.port), dbname=dbname, user=user
        )

    def describe(self) -> str:
        return f"the recovered cluster started in {self.root} (127.0.0.1:{self.port})"


def _prepare(root: Path, run_as: str | None) -> None:
    os.mkdir(root, 0o700)
    os.mkdir(root / "sock", 0o700)
    hba = root / "pg_hba.conf"
    fd = os.open(hba, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    os.write(fd, b"# drd restore test: the socket directory is 0700, TCP is refused\n")
    os.write(fd, b"local all all trust\n")
    os.close(fd)
    if run_as is not None:
        try:
            account = pwd.getpwnam(run_as)
        except KeyError:
            raise RestoreError(f"no OS user {run_as!r} to run the recovered server") from None
        for name in ("", "sock", "pg_hba.conf"):
            os.chown(root / name, account.pw_uid, account.pw_gid)


@contextlib.asynccontextmanager
async def recovered_scratch(
    state_dir: Path,
    *,
    bin_dir: Path,
    run_as: str | None,
    parent: Path | None = None,
    label: str = "",
) -> AsyncIterator[RecoveredScratch]:
    """A registered scratch directory for a recovered cluster; on exit the server (if it was
    started) is stopped and everything removed, however the block ends."""
    root, registration = register_server(
        state_dir, parent, bin_dir=bin_dir, run_as=run_as, label=label
    )
    try:
        _prepare(root, run_as)
        yield RecoveredScratch(root, free_port(), run_as)
    finally:
        try:
            await run_to_completion(destroy(registration.record))
        except Exception as exc:
            log.error("could not remove the recovered server in %s (at next start): %s", root, exc)
            registration.abandon()
        else:
            registration.release()
