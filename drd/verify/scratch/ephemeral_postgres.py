"""A throwaway PostgreSQL server for one restore test, destroyed afterwards.

    <dir>/drd-scratch-<id>/        owned by the server's user, mode 0700
        data/                      initdb's cluster
        sock/                      its Unix socket (nobody else's business)
        server.log, tools.log

- Binaries of the backup's major version (/usr/lib/postgresql/<major>/bin), or, when those are
  not installed, the next newer major found (a dump restores into a newer server, not an older
  one); `bin_dir` forces a directory.
- PostgreSQL refuses to run as root: when drd is root, initdb and pg_ctl run as `user`
  (default postgres) through runuser, and that user owns the directory. Its parent must be
  traversable by that user (the system temp directory is).
- It listens on 127.0.0.1 only, on a free port, and authenticates with a random password
  (scram-sha-256) held in memory only: restored production data must not be readable by every
  local user for the duration of the test, which `trust` would allow.
- Durability is switched off (fsync, full_page_writes, synchronous_commit): the data lives for
  minutes and is thrown away.
- JIT is off (`jit=off`): the shipped unit runs drd with MemoryDenyWriteExecute=yes, which the
  server inherits, and LLVM's JIT needs memory that is written and then executed, so every query
  costly enough to be compiled (the row count of a table of some ten million rows, at the
  default jit_above_cost) would fail with `failed to look up symbol "evalexpr_..."`. Nothing
  else in the server maps memory executable at run time (libraries are mapped by the loader,
  which the kernel allows); an extension that JIT-compiles itself (plv8) would fail the same way.

The server is registered (drd.verify.scratch.registry) before the directory is created; if drd dies,
`destroy` (from the next start's sweep) stops it with `pg_ctl stop -m immediate` (or signals the
postmaster named in postmaster.pid) and removes the directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drd.errors import RestoreError
from drd.fsutil import remove_tree
from drd.restore_tests.spec import ScratchSpec
from drd.verify.scratch.base import ScratchEnv, ScratchRequest
from drd.verify.scratch.registry import DIR_PREFIX, Registration, new_id, register
from drd.verify.scratch.server_tools import HOST, free_port, run_tool, tail
from drd.verify.scratch.teardown import run_to_completion

log = logging.getLogger(__name__)

SUPERUSER = "postgres"
DEFAULT_RUN_AS = "postgres"
_TOOL_TIMEOUT = 120.0
_STOP_TIMEOUT = 30.0
_START_ATTEMPTS = 3
# Server settings for a short-lived copy: durability off, no background vacuuming, no JIT.
_SETTINGS = {
    "listen_addresses": HOST,
    "fsync": "off",
    "full_page_writes": "off",
    "synchronous_commit": "off",
    "autovacuum": "off",
    "max_connections": "30",
    # MemoryDenyWriteExecute (module docstring)
    "jit": "off",
}
# The children's environment: nothing of ours (PG* variables, keys) leaks into them.


@dataclass(frozen=True)
class EphemeralServer:
    root: Path
    port: int
    version: str
    bin_dir: Path
    password: str = field(repr=False)
    note: str = ""

    def dsn(self, dbname: str) -> str:
        from psycopg.conninfo import make_conninfo

        return make_conninfo(
            "",
            host=HOST,
            port=str(self.port),
            user=SUPERUSER,
            password=self.password,
            dbname=dbname,
            connect_timeout="10",
        )

    def describe(self) -> str:
        return f"ephemeral PostgreSQL {self.version} on {HOST}:{self.port} ({self.root})"


def find_bin_dir(major: int, explicit: Path | None = None) -> tuple[Path, int, str]:
    """(directory, major, note) of the initdb/pg_ctl to use for a backup of `major`."""
    if explicit is not None:
        if not all(os.access(explicit / tool, os.X_OK) for tool in ("initdb", "pg_ctl")):
            raise RestoreError(f"ephemeral-postgres: no initdb and pg_ctl in {explicit}")
        match = re.search(r"/(\d+)/bin/?$", str(explicit))
        return explicit, int(match.group(1)) if match else major, ""
    found: dict[int, Path] = {}
    for path in glob.glob("/usr/lib/postgresql/*/bin"):
        name = Path(path).parent.name
        if name.isdigit() and all(os.access(Path(path, t), os.X_OK) for t in ("initdb", "pg_ctl")):
            found[int(name)] = Path(path)
    if major in found:
        return found[major], major, ""
    newer = sorted(m for m in found if m > major)
    if newer:
        note = (
            f"no PostgreSQL {major} server binaries here; restored into {newer[0]} "
            "(install postgresql-{major} to test with the source's version)"
        ).replace("{major}", str(major))
        return found[newer[0]], newer[0], note
    have = ", ".join(str(m) for m in sorted(found)) or "none"
    raise RestoreError(
        f"ephemeral-postgres: no PostgreSQL {major} (or newer) server binaries in "
        f"/usr/lib/postgresql/*/bin (found: {have}); install them or set bin_dir"
    )


def _run_as_prefix(user: str | None) -> list[str]:
    if user is None:
        return []
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    return [runuser, "-u", user, "--"]


async def _run(argv: Sequence[str], log_path: Path, limit: float = _TOOL_TIMEOUT) -> None:
    tool = next((os.path.basename(a) for a in argv if a.endswith(("initdb", "pg_ctl"))), argv[0])
    await run_tool(argv, log_path, kind="ephemeral-postgres", tool=tool, limit=limit)


def register_server(
    state_dir: Path, parent: Path | None, *, bin_dir: Path, run_as: str | None, label: str
) -> tuple[Path, Registration]:
    """The directory a throwaway server will live in, recorded before anything is made in it
    (drd.verify.scratch.registry: `destroy` removes what a killed drd left there)."""
    resource_id = new_id()
    root = (parent or Path(tempfile.gettempdir())) / f"{DIR_PREFIX}{resource_id}"
    registration = register(
        state_dir,
        resource_id,
        "ephemeral-postgres",
        root=str(root),
        bin_dir=str(bin_dir),
        run_as=run_as,
        label=label,
    )
    return root, registration


@contextlib.asynccontextmanager
async def ephemeral_postgres(
    state_dir: Path,
    *,
    major: int,
    parent: Path | None = None,
    bin_dir: Path | None = None,
    user: str | None = None,
    label: str = "",
) -> AsyncIterator[EphemeralServer]:
    """Start a server for a backup of PostgreSQL `major`; stop and remove it afterwards,
    however the block ends."""

    from drd.strategies.postgres_tools import find_tool

    tools, _, note = find_bin_dir(major, bin_dir)
    pg_ctl = await find_tool("pg_ctl", str(tools))
    if pg_ctl is None:
        raise RestoreError(f"ephemeral-postgres: {tools}/pg_ctl does not work")
    run_as = (user or DEFAULT_RUN_AS) if os.geteuid() == 0 else None
    root, registration = register_server(
        state_dir, parent, bin_dir=tools, run_as=run_as, label=label
    )
    try:
        password = secrets.token_urlsafe(24)
        port = await _create_and_start(root, tools, run_as, password)
        yield EphemeralServer(root, port, pg_ctl.version, tools, password, note)
    finally:
        try:
            await run_to_completion(destroy(registration.record))
        except Exception as exc:
            log.error("could not remove the ephemeral server in %s (at next start): %s", root, exc)
            registration.abandon()
        else:
            registration.release()


_RESERVED_DBS = {"postgres", "template0", "template1"}


def _database_name(metadata: Mapping[str, Any]) -> str:
    """In a server of its own the copy keeps the source database's name (checks and commands
    written for the source then work unchanged)."""
    name = str(metadata.get("database") or "")
    ok = name and name not in _RESERVED_DBS and len(name.encode()) <= 40
    return name if ok else "restored"


def _major(metadata: Mapping[str, Any]) -> int:
    num = metadata.get("server_version_num")
    if isinstance(num, int) and num >= 100000:
        return num // 10000
    version = str(metadata.get("pg_dump_version") or metadata.get("server_version") or "")
    head = version.split(".", 1)[0]
    if not head.isdigit():
        raise RestoreError("the backup does not say which PostgreSQL version it came from")
    return int(head)


@contextlib.asynccontextmanager
async def open_env(spec: ScratchSpec, request: ScratchRequest) -> AsyncIterator[ScratchEnv]:
    """The ephemeral-postgres scratch kind: a server of the backup's major version, the copy
    restored into a database of the source's name."""
    major = _major(request.metadata)
    async with ephemeral_postgres(
        request.state_dir,
        major=major,
        parent=spec.dir,
        bin_dir=spec.bin_dir,
        user=spec.user,
        label=request.label,
    ) as server:
        dsn = server.dsn(_database_name(request.metadata))
        yield ScratchEnv(
            kind=spec.kind,
            target=dsn,
            restore_options={
                "owners": "keep",
                "create_roles": True,
                "pg_bin_dir": str(server.bin_dir),
            },
            description=server.describe(),
            resource=str(server.root),
            dsn=dsn,
            server_major=int(server.version.split(".")[0]),
            note=server.note,
        )


def _prepare_root(root: Path, run_as: str | None, password: str) -> None:
    """The directory tree, owned by the server's user; the password file for initdb."""
    os.mkdir(root, 0o700)
    os.mkdir(root / "sock", 0o700)
    fd = os.open(root / "pwfile", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    os.write(fd, password.encode() + b"\n")
    os.close(fd)
    (root / "server.log").touch(0o600)
    if run_as is not None:
        try:
            account = pwd.getpwnam(run_as)
        except KeyError:
            raise RestoreError(f"ephemeral-postgres: no OS user {run_as!r} to run it") from None
        for name in ("", "sock", "pwfile", "server.log"):
            os.chown(root / name, account.pw_uid, account.pw_gid)


async def _create_and_start(root: Path, tools: Path, run_as: str | None, password: str) -> int:
    _prepare_root(root, run_as, password)
    data, sock, pwfile = root / "data", root / "sock", root / "pwfile"
    tools_log, server_log = root / "tools.log", root / "server.log"
    prefix = _run_as_prefix(run_as)
    try:
        await _run(
            [
                *prefix,
                str(tools / "initdb"),
                "-D",
                str(data),
                "-U",
                SUPERUSER,
                "-A",
                "scram-sha-256",
                f"--pwfile={pwfile}",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
            tools_log,
        )
    finally:
        with contextlib.suppress(OSError):
            os.unlink(pwfile)
    settings = " ".join(f"-c {k}={v}" for k, v in _SETTINGS.items())
    for attempt in range(_START_ATTEMPTS):
        port = free_port()
        options = f"{settings} -p {port} -k {shlex.quote(str(sock))}"
        argv = [*prefix, str(tools / "pg_ctl"), "-D", str(data), "-l", str(server_log)]
        try:
            await _run([*argv, "-w", "-t", "60", "-o", options, "start"], tools_log)
            return port
        except RestoreError:
            # Another process may have taken the port between our probe and the bind.
            if "Address already in use" not in tail(server_log) or attempt + 1 == _START_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


async def destroy(record: Mapping[str, Any], _known_dsns: Sequence[str] = ()) -> None:
    """Stop the server a registry record describes (if it runs) and remove its directory."""
    root = Path(str(record["root"]))
    if not root.name.startswith(DIR_PREFIX):
        raise ValueError(f"refusing to remove {root}: not a drd scratch directory")
    data = root / "data"
    if (data / "postmaster.pid").exists():
        run_as = record.get("run_as")
        pg_ctl = Path(str(record.get("bin_dir", ""))) / "pg_ctl"
        argv = [*_run_as_prefix(run_as), str(pg_ctl), "-D", str(data), "-m", "immediate"]
        try:
            await _run([*argv, "-w", "-t", str(int(_STOP_TIMEOUT)), "stop"], root / "tools.log")
        except (RestoreError, TimeoutError) as exc:
            log.warning("pg_ctl stop failed (%s); signalling the postmaster", exc)
            await _kill_postmaster(data)
    await asyncio.to_thread(remove_tree, root)


async def _kill_postmaster(data: Path) -> None:
    """SIGQUIT (immediate shutdown), then SIGKILL, the postmaster of `data`, if it is one."""
    pid = _postmaster_pid(data)
    if pid is None:
        return
    for sig, wait in ((signal.SIGQUIT, 10.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        for _ in range(int(wait * 10)):
            if not _alive(pid):
                return
            await asyncio.sleep(0.1)


def _postmaster_pid(data: Path) -> int | None:
    """The pid in postmaster.pid if that process is a postgres; None otherwise."""
    try:
        pid = int((data / "postmaster.pid").read_text().split("\n", 1)[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None  # no pid file, or no such process: nothing runs
    return pid if b"postgres" in cmdline else None  # else the pid was reused


def _alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"
