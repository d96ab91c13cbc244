"""A throwaway MariaDB (or MySQL) server for one restore test, destroyed afterwards.

    <dir>/drd-scratch-<id>/        owned by the server's user, mode 0700
        data/                      mariadb-install-db's (or mysqld --initialize-insecure's)
        tmp/                       the server's tmpdir
        server.sock, server.pid, server.log, tools.log
        client.cnf                 where the copy is, for command checks (0600)

- The source's flavour: a backup of a MariaDB server gets `mariadbd` (initialised by
  `mariadb-install-db`), one of MySQL gets MySQL's `mysqld --initialize-insecure` when it is
  installed; otherwise the other flavour is used and the report says so. `bin_dir` names the
  directory of the server binaries (default: /usr/sbin, /usr/bin, then PATH).
- MariaDB refuses to run as root: when drd is root, the server runs as `user` (default mysql),
  which owns the directory. Its parent must be traversable by that user (the system temp
  directory is).
- It listens on 127.0.0.1 only, on a free port, and on a socket in its own directory. The root
  accounts get a random password (set by an --init-file the server reads before it accepts a
  connection, then deleted; every other account, anonymous ones included, is dropped): restored
  production data must not be readable by every local user for the duration of the test. The
  password is held in memory only (and in the 0600 client.cnf for command checks).
- The DEFINER accounts the backup's views, routines, triggers and events name are created
  (ACCOUNT LOCK: nobody logs in as them) with every right on the restored database only, what
  grants by database name gave them on the source: a view that calls a function with its
  definer's rights then loads and works, as it does there. (MySQL dumps carry no grants.)
- Durability is off (no binary log, no doublewrite, no flush at commit), the event scheduler is
  off (restored events never fire in a scratch copy), and the server's own defaults are kept for
  everything a restore depends on: max_allowed_packet stays at its default (16 MiB on MariaDB
  10.11), so a restore test proves the backup restores into a server as shipped.

The server is registered (drd.verify.scratch.registry) before its directory is created; if drd
dies, `destroy` (from the next start's sweep) stops every server process whose command line
names that directory (SIGTERM, then SIGKILL) and removes the directory. No password is needed
for that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import re
import secrets
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from drd.errors import RestoreError
from drd.fsutil import remove_tree
from drd.restore_tests.spec import ScratchSpec
from drd.verify.scratch.base import ScratchEnv, ScratchRequest
from drd.verify.scratch.registry import DIR_PREFIX, new_id, register
from drd.verify.scratch.server_tools import HOST, TOOL_ENV, append, free_port, run_tool, tail
from drd.verify.scratch.teardown import run_to_completion

log = logging.getLogger(__name__)

SUPERUSER = "root"
DEFAULT_RUN_AS = "mysql"
_TOOL_TIMEOUT = 120.0
_READY_TIMEOUT = 60.0
_STOP_TIMEOUT = 30.0
_START_ATTEMPTS = 3
_SEARCH = ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin")
# The children's environment: nothing of ours (MYSQL_* variables, keys) leaks into them.
_RESERVED_DBS = {"mysql", "information_schema", "performance_schema", "sys"}

Flavour = Literal["mariadb", "mysql"]


@dataclass(frozen=True)
class ServerBinaries:
    flavour: Flavour
    server: Path
    #: mariadb-install-db (MariaDB); None for MySQL (mysqld --initialize-insecure)
    install: Path | None
    version: str


@dataclass(frozen=True)
class EphemeralMariaDb:
    root: Path
    port: int
    binaries: ServerBinaries
    password: str = field(repr=False)
    note: str = ""

    @property
    def socket(self) -> Path:
        return self.root / "server.sock"

    def url(self, database: str) -> str:
        """The restore target: the socket, as root (the password travels separately)."""
        from urllib.parse import quote

        return (
            f"mysql://{SUPERUSER}@localhost/{quote(database, safe='')}"
            f"?socket={quote(str(self.socket), safe='/')}"
        )

    def describe(self) -> str:
        name = "MariaDB" if self.binaries.flavour == "mariadb" else "MySQL"
        return f"ephemeral {name} {self.binaries.version} on {HOST}:{self.port} ({self.root})"


def _source_flavour(metadata: Mapping[str, Any]) -> Flavour:
    version = str(metadata.get("server_version") or "")
    return "mariadb" if "mariadb" in version.lower() or not version else "mysql"


def _candidates(name: str, bin_dir: Path | None) -> list[Path]:
    if bin_dir is not None:
        return [bin_dir / name]
    found = [Path(d, name) for d in _SEARCH]
    on_path = shutil.which(name)
    if on_path:
        found.append(Path(on_path))
    return found


async def _version(program: Path) -> str | None:
    if not os.access(program, os.X_OK):
        return None
    try:
        proc = await asyncio.create_subprocess_exec(
            str(program),
            "--no-defaults",
            "--version",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env=TOOL_ENV,
        )
        async with asyncio.timeout(30):
            out, _ = await proc.communicate()
    except (OSError, TimeoutError):
        return None
    return out.decode("utf-8", "replace").strip() if proc.returncode == 0 else None


async def find_binaries(
    flavour: Flavour, bin_dir: Path | None = None
) -> tuple[ServerBinaries, str]:
    """(the server to start, a note) for a backup of `flavour`: that flavour when installed,
    else the other one (the note says so); RestoreError when neither is."""
    found: dict[Flavour, ServerBinaries] = {}
    for name in ("mariadbd", "mysqld"):
        for program in _candidates(name, bin_dir):
            text = await _version(program)
            if text is None:
                continue
            kind: Flavour = "mariadb" if "mariadb" in text.lower() else "mysql"
            if kind in found:
                continue
            match = re.search(r"Ver\s+(\S+)", text)
            version = match.group(1) if match else text
            install = None
            if kind == "mariadb":
                install = next(
                    (
                        p
                        for tool in ("mariadb-install-db", "mysql_install_db")
                        for p in _candidates(tool, bin_dir)
                        if os.access(p, os.X_OK)
                    ),
                    None,
                )
                if install is None:
                    continue
            found[kind] = ServerBinaries(kind, program, install, version.split("-")[0])
    if flavour in found:
        return found[flavour], ""
    other: Flavour = "mysql" if flavour == "mariadb" else "mariadb"
    if other in found:
        names = {"mariadb": "MariaDB", "mysql": "MySQL"}
        note = (
            f"no {names[flavour]} server binaries here; restored into {names[other]} "
            f"{found[other].version} (install the {names[flavour]} server to test with the "
            "source's flavour)"
        )
        return found[other], note
    where = str(bin_dir) if bin_dir is not None else ", ".join(_SEARCH) + " or PATH"
    raise RestoreError(
        f"ephemeral-mariadb: no MariaDB or MySQL server binaries (mariadbd with "
        f"mariadb-install-db, or mysqld) in {where}; install one or set bin_dir"
    )


def _run_as_prefix(user: str | None) -> list[str]:
    if user is None:
        return []
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    return [runuser, "-u", user, "--"]


async def _run(argv: Sequence[str], log_path: Path, limit: float = _TOOL_TIMEOUT) -> None:
    tool = os.path.basename(argv[0])
    await run_tool(argv, log_path, kind="ephemeral-mariadb", tool=tool, limit=limit)


def _init_sql(flavour: Flavour, password: str) -> str:
    """Run by the server before it accepts connections: root only, with a password."""
    quoted = "'" + password.replace("\\", "\\\\").replace("'", "''") + "'"
    lines = []
    if flavour == "mariadb":
        lines += [
            "DELETE FROM mysql.global_priv WHERE User = '' OR "
            "(User = 'root' AND Host NOT IN ('localhost', '127.0.0.1'));",
            "FLUSH PRIVILEGES;",
        ]
    lines += [
        f"CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY {quoted};",
        "GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;",
        f"ALTER USER 'root'@'localhost' IDENTIFIED BY {quoted};",
        f"ALTER USER 'root'@'127.0.0.1' IDENTIFIED BY {quoted};",
    ]
    return "\n".join(lines) + "\n"


def _private_file(path: Path, text: str, owner: pwd.struct_passwd | None) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    if owner is not None:
        os.chown(path, owner.pw_uid, owner.pw_gid)


def _prepare_root(root: Path, run_as: str | None) -> pwd.struct_passwd | None:
    """The directory tree, owned by the server's user."""
    account = None
    if run_as is not None:
        try:
            account = pwd.getpwnam(run_as)
        except KeyError:
            raise RestoreError(f"ephemeral-mariadb: no OS user {run_as!r} to run it") from None
    os.mkdir(root, 0o700)
    os.mkdir(root / "tmp", 0o700)
    for name in ("server.log", "tools.log"):
        (root / name).touch(0o600)
    if account is not None:
        for name in ("", "tmp", "server.log", "tools.log"):
            os.chown(root / name, account.pw_uid, account.pw_gid)
    return account


async def _initialise(root: Path, binaries: ServerBinaries, run_as: str | None) -> None:
    data = root / "data"
    user = [f"--user={run_as}"] if run_as is not None else []
    if binaries.install is not None:
        argv = [
            str(binaries.install),
            "--no-defaults",
            *user,
            f"--datadir={data}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--skip-name-resolve",
        ]
    else:
        argv = [str(binaries.server), "--no-defaults", *user, "--initialize-insecure"]
        argv.append(f"--datadir={data}")
    await _run(argv, root / "tools.log")


def _server_argv(root: Path, binaries: ServerBinaries, run_as: str | None, port: int) -> list[str]:
    argv = [
        str(binaries.server),
        "--no-defaults",
        f"--datadir={root / 'data'}",
        f"--socket={root / 'server.sock'}",
        f"--pid-file={root / 'server.pid'}",
        f"--log-error={root / 'server.log'}",
        f"--tmpdir={root / 'tmp'}",
        f"--secure-file-priv={root / 'tmp'}",
        f"--init-file={root / 'init.sql'}",
        f"--port={port}",
        f"--bind-address={HOST}",
        "--skip-name-resolve",
        "--skip-log-bin",
        "--event-scheduler=OFF",
        "--local-infile=0",
        "--innodb-flush-log-at-trx-commit=0",
        "--innodb-doublewrite=OFF",
        "--performance-schema=OFF",
        "--max-connections=30",
    ]
    if binaries.flavour == "mysql":
        argv.append("--mysqlx=OFF")  # the X protocol would listen on every interface
    if run_as is not None:
        argv.append(f"--user={run_as}")
    return argv


async def _ping(root: Path, password: str) -> bool:
    from drd.strategies.mysql_client import Client, ClientError, Server
    from drd.strategies.mysql_tools import find_tool

    tool = await find_tool("client")
    if tool is None:
        raise RestoreError("ephemeral-mariadb: no mariadb/mysql client to reach the server")
    server = Server(socket=str(root / "server.sock"), user=SUPERUSER, password=password)
    try:
        await Client(server, tool.path).rows("SELECT 1")
    except ClientError:
        return False
    return True


async def _start(
    root: Path, binaries: ServerBinaries, run_as: str | None, password: str, account: Any
) -> tuple[asyncio.subprocess.Process, int]:
    """Start the server on a free port; (its process, the port) once it answers."""
    for attempt in range(_START_ATTEMPTS):
        port = free_port()
        _private_file(root / "init.sql", _init_sql(binaries.flavour, password), account)
        with append(root / "server.log") as out:
            proc = await asyncio.create_subprocess_exec(
                *_server_argv(root, binaries, run_as, port),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env=TOOL_ENV,
                start_new_session=True,  # a Ctrl-C for drd is drd's to handle, not the server's
            )
        try:
            ready = await _wait_ready(root, proc, password)
        except BaseException:
            await _stop(proc)
            raise
        finally:
            with contextlib.suppress(OSError):
                os.unlink(root / "init.sql")
        if ready:
            return proc, port
        await _stop(proc)
        if "Address already in use" not in tail(root / "server.log") or (
            attempt + 1 == _START_ATTEMPTS
        ):
            raise RestoreError(
                f"ephemeral-mariadb: the server did not start: {tail(root / 'server.log')}"
            )
    raise AssertionError("unreachable")


async def _wait_ready(root: Path, proc: asyncio.subprocess.Process, password: str) -> bool:
    """True once the server answers on its socket; False if it exited first."""
    try:
        async with asyncio.timeout(_READY_TIMEOUT):
            while proc.returncode is None:
                if (root / "server.sock").exists() and await _ping(root, password):
                    return True
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.1):
                        await proc.wait()
    except TimeoutError:
        raise RestoreError(
            f"ephemeral-mariadb: the server did not answer within {_READY_TIMEOUT:.0f}s: "
            f"{tail(root / 'server.log')}"
        ) from None
    return False


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM (a clean shutdown), then SIGKILL; reaped."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            async with asyncio.timeout(_STOP_TIMEOUT):
                await proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    await proc.wait()


@contextlib.asynccontextmanager
async def ephemeral_mariadb(
    state_dir: Path,
    *,
    flavour: Flavour = "mariadb",
    parent: Path | None = None,
    bin_dir: Path | None = None,
    user: str | None = None,
    label: str = "",
) -> AsyncIterator[EphemeralMariaDb]:
    """Start a server of `flavour` (or the other, see find_binaries); stop and remove it
    afterwards, however the block ends."""
    binaries, note = await find_binaries(flavour, bin_dir)
    run_as = (user or DEFAULT_RUN_AS) if os.geteuid() == 0 else None
    resource_id = new_id()
    root = (parent or Path(tempfile.gettempdir())) / f"{DIR_PREFIX}{resource_id}"
    registration = register(
        state_dir,
        resource_id,
        "ephemeral-mariadb",
        root=str(root),
        server=str(binaries.server),
        run_as=run_as,
        label=label,
    )
    proc: asyncio.subprocess.Process | None = None
    try:
        account = _prepare_root(root, run_as)
        await _initialise(root, binaries, run_as)
        password = secrets.token_hex(16)
        proc, port = await _start(root, binaries, run_as, password, account)
        yield EphemeralMariaDb(root, port, binaries, password, note)
    finally:
        try:
            if proc is not None:
                await run_to_completion(_stop(proc))
            await run_to_completion(destroy(registration.record))
        except Exception as exc:
            log.error("could not remove the ephemeral server in %s (at next start): %s", root, exc)
            registration.abandon()
        else:
            registration.release()


def _database_name(metadata: Mapping[str, Any]) -> str:
    """In a server of its own the copy keeps the source database's name (grants by database
    name, checks and commands written for the source then work unchanged)."""
    name = str(metadata.get("database") or "")
    ok = name and name.lower() not in _RESERVED_DBS and len(name) <= 40
    return name if ok else "restored"


def definers(metadata: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(user, host) of every DEFINER the backup's views, routines, triggers and events name."""
    stats = metadata.get("statistics")
    objects = stats.get("inventory") if isinstance(stats, Mapping) else None
    found: set[tuple[str, str]] = set()
    if isinstance(objects, Mapping):
        for entry in objects.values():
            definer = entry.get("definer") if isinstance(entry, Mapping) else None
            if isinstance(definer, str) and "@" in definer:
                user, _, host = definer.rpartition("@")
                found.add((user, host))
    return sorted(found)


def _string(text: str) -> str:
    """A string literal for the server drd started (its sql_mode keeps backslash escapes)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


async def create_definers(server: EphemeralMariaDb, database: str, accounts: Sequence[Any]) -> int:
    """Create the definer accounts the copy's objects name, as on the source: locked (nobody
    logs in as them) with every right on the restored database only, which is what grants by
    database name gave them there; views and routines that run with a definer's rights then
    load and work. Returns how many were created."""
    from drd.strategies.mysql_client import Client, Server, ident
    from drd.strategies.mysql_tools import find_tool

    if not accounts:
        return 0
    tool = await find_tool("client")
    if tool is None:
        raise RestoreError("ephemeral-mariadb: no mariadb/mysql client to reach the server")
    client = Client(
        Server(socket=str(server.socket), user=SUPERUSER, password=server.password), tool.path
    )
    existing = {
        (str(u), str(h))
        for u, h in await client.json_rows("SELECT JSON_ARRAY(User, Host) FROM mysql.user")
    }
    wanted = [(u, h) for u, h in accounts if (u, h) not in existing]
    if not wanted:
        return 0
    statements = []
    for user, host in wanted:
        account = f"{_string(user)}@{_string(host)}"
        statements.append(f"CREATE USER IF NOT EXISTS {account} ACCOUNT LOCK;")
        statements.append(f"GRANT ALL PRIVILEGES ON {ident(database)}.* TO {account};")
    await client.execute("\n".join(statements))
    return len(wanted)


def _client_cnf(server: EphemeralMariaDb, database: str) -> str:
    return (
        "[client]\n"
        f"user={SUPERUSER}\n"
        f'password="{server.password}"\n'
        f"host={HOST}\n"
        f"port={server.port}\n"
        "protocol=TCP\n"
        f"database={database}\n"
    )


@contextlib.asynccontextmanager
async def open_env(spec: ScratchSpec, request: ScratchRequest) -> AsyncIterator[ScratchEnv]:
    """The ephemeral-mariadb scratch kind: a server of the source's flavour, the copy restored
    into a database of the source's name."""
    async with ephemeral_mariadb(
        request.state_dir,
        flavour=_source_flavour(request.metadata),
        parent=spec.dir,
        bin_dir=spec.bin_dir,
        user=spec.user,
        label=request.label,
    ) as server:
        database = _database_name(request.metadata)
        created = await create_definers(server, database, definers(request.metadata))
        note = server.note
        if created:
            note = "; ".join(
                filter(
                    None,
                    [
                        note,
                        f"created {created} definer account(s), locked, with rights on the "
                        f"restored database only",
                    ],
                )
            )
        cnf = server.root / "client.cnf"
        _private_file(cnf, _client_cnf(server, database), None)
        url = server.url(database)
        yield ScratchEnv(
            kind=spec.kind,
            target=url,
            restore_options={"password": server.password},
            description=server.describe(),
            resource=str(server.root),
            note=note,
            env={
                "DRD_RESTORED_URL": url,
                "DRD_RESTORED_DATABASE": database,
                "DRD_RESTORED_MYSQL_CNF": str(cnf),
                "MYSQL_HOST": HOST,
                "MYSQL_TCP_PORT": str(server.port),
                "MYSQL_PWD": server.password,
            },
        )


def server_pids(root: Path) -> list[int]:
    """Server processes (mariadbd/mysqld) whose command line names `root`'s data directory."""
    needle = f"--datadir={root / 'data'}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) in (b"mariadbd", b"mysqld") and needle in argv:
            pids.append(int(entry.name))
    return pids


def _alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


async def destroy(record: Mapping[str, Any], _known_dsns: Sequence[str] = ()) -> None:
    """Stop the server a registry record describes (if it runs) and remove its directory."""
    root = Path(str(record["root"]))
    if not root.name.startswith(DIR_PREFIX):
        raise ValueError(f"refusing to remove {root}: not a drd scratch directory")
    for sig, wait in ((signal.SIGTERM, _STOP_TIMEOUT), (signal.SIGKILL, 10.0)):
        pids = server_pids(root)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        for _ in range(int(wait * 10)):
            if not any(_alive(pid) for pid in pids):
                break
            await asyncio.sleep(0.1)
    if any(_alive(pid) for pid in server_pids(root)):
        raise RestoreError(f"the server in {root} does not stop")
    await asyncio.to_thread(remove_tree, root)
