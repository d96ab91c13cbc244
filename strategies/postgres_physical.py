"""PostgreSQL, physically: base backups with pg_basebackup, WAL with pg_receivewal, point-in-time
recovery. `kind: postgres-physical` (a kind of its own rather than a mode of `postgres`: its
backup is a whole cluster, not one database, and it restores into a data directory, not a
database; its options, restore target and restore tests differ accordingly).

Dump: `pg_basebackup -D - -F tar -X fetch --checkpoint=fast` over the replication protocol,
streamed from its stdout through drd's usual compress + encrypt + fan-out path; nothing is
written to disk on the way. The tar holds the cluster and (`-X fetch`) the WAL from the
backup's start to its end, so a base backup is consistent on its own, archive or not. drd reads
the stream as it passes (drd.strategies._tarscan) for `backup_label` (start LSN, timeline,
checkpoint) and the backup manifest's WAL range (end LSN), and asks the server for its system
identifier, segment size and clock right after: those go in the backup's manifest and are what
point-in-time restores are planned with. Writing to stdout allows only the main tablespace:
a cluster with other tablespaces fails the backup (pg_basebackup says so).

Restore: the tar is extracted by `tar -x` into a new staging directory next to the target
(mode 0700), renamed to the target once the stream authenticated and tar succeeded; anything
else removes the staging directory, and an existing target is refused. When drd runs as root
the files belong to `user` (default postgres: PostgreSQL refuses to run as root), extracted by
tar running as that user. `recovery` settings, when given, are appended to
postgresql.auto.conf with a `recovery.signal`: that is how drd.pipeline.pitr configures a restore
to a
point in time. A base backup of a Debian-style cluster has no postgresql.conf (it lives in
/etc/postgresql): an empty one is written so that the copy starts with the defaults.

WAL: drd.daemon.wal_loop runs pg_receivewal for the source with a physical replication slot
(`slot`, default drd_<plan>_<source>) created here with `immediately_reserve`; the functions
below build its command line, create and drop the slot, and sample the server (its WAL
position and the slot's retained WAL). The source's role needs the REPLICATION attribute (or
superuser) and a pg_hba.conf `replication` entry for drd's host.
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
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from drd.errors import RestoreError, SourceError, TargetExists
from drd.fields import PositiveDuration, Size
from drd.strategies._subprocess import CountingStream, ToolError, feed_stdin, redact, stream_stdout
from drd.strategies._tarscan import ScannedStream, TarError, TarScanner
from drd.strategies.base import RestoreOutcome, SourceOptions, Strategy
from drd.strategies.postgres_conn import _Conn
from drd.strategies.postgres_tools import find_tool
from drd.strategies.postgres_wal import format_lsn, parse_lsn

log = logging.getLogger(__name__)

KIND = "postgres-physical"
FORMAT = "pg_basebackup-tar"
CHUNK_SIZE = 1 << 20
STAGING_MARK = ".drd-restoring-"
DEFAULT_RUN_AS = "postgres"
#: what drd appends to postgresql.auto.conf starts with this line
AUTO_CONF_MARK = "# drd restore:"
_MANIFEST_TAIL = 16 * 1024
_LABEL_RE = {
    "start_lsn": re.compile(r"^START WAL LOCATION: ([0-9A-F]+/[0-9A-F]+)", re.M),
    "checkpoint_lsn": re.compile(r"^CHECKPOINT LOCATION: ([0-9A-F]+/[0-9A-F]+)", re.M),
    "timeline": re.compile(r"^START TIMELINE: (\d+)", re.M),
    "label_start_time": re.compile(r"^START TIME: (.+)$", re.M),
}
_WAL_RANGE_RE = re.compile(
    r'"Timeline":\s*(\d+),\s*"Start-LSN":\s*"([0-9A-F/]+)",\s*"End-LSN":\s*"([0-9A-F/]+)"'
)
_SLOT_RE = re.compile(r"^[a-z0-9_]{1,63}$")

ArchiveMode = Literal["stream", "command"]


class PostgresPhysicalOptions(SourceOptions):
    kind: Literal["postgres-physical"] = "postgres-physical"
    #: libpq connection string of the cluster (its role needs REPLICATION); pg_basebackup and
    #: pg_receivewal use it over the replication protocol, drd's own queries (slot, position)
    #: over a normal connection to its dbname (default postgres)
    dsn: str = Field(repr=False)
    #: directory holding pg_basebackup and pg_receivewal; default: the newest found
    pg_bin_dir: str | None = None
    #: how WAL reaches the archive: "stream" (the daemon runs pg_receivewal with a replication
    #: slot) or "command" (the server's archive_command runs `drd wal-push`)
    archive: ArchiveMode = "stream"
    #: the replication slot drd creates and uses; default drd_<plan>_<source>
    slot: str | None = Field(default=None, pattern=_SLOT_RE.pattern)
    #: how often the segment being written is shipped while it changes (the RPO bound)
    partial_every: PositiveDuration = timedelta(seconds=15)
    #: the slot may hold back this much WAL on the server before DrdWalSlotRetainingTooMuch
    max_slot_retained: Size = 1 << 30


def default_slot_name(plan: str, source: str) -> str:
    """drd_<plan>_<source>, '-' as '_'; cut (with a hash for uniqueness) to 63 bytes."""
    import hashlib

    name = f"drd_{plan}_{source}".replace("-", "_")
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[:54]}_{digest}"


# --------------------------------------------------------------------------------------------
# Dump


def _parse_label(label: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, pattern in _LABEL_RE.items():
        m = pattern.search(label)
        if m is None:
            raise SourceError(f"backup_label has no {name.replace('_', ' ')}")
        out[name] = int(m.group(1)) if name == "timeline" else m.group(1).strip()
    return out


def _parse_wal_range(manifest_tail: str) -> tuple[int, str, str]:
    ranges = _WAL_RANGE_RE.findall(manifest_tail)
    if not ranges:
        raise SourceError("the backup manifest has no WAL range")
    tli, start, end = ranges[-1]
    return int(tli), start, end


_SERVER_SQL = """
SELECT (SELECT system_identifier FROM pg_catalog.pg_control_system())::text,
       current_setting('server_version'),
       current_setting('server_version_num')::int,
       (SELECT setting::bigint FROM pg_catalog.pg_settings WHERE name = 'wal_segment_size'),
       current_setting('data_checksums'),
       clock_timestamp()
"""


async def server_facts(dsn: str) -> dict[str, Any]:
    """System identifier, version, segment size, and the server's clock now."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as db:
        cur = await db.execute(_SERVER_SQL)
        row = await cur.fetchone()
    assert row is not None
    sysid, version, version_num, seg_size, checksums, now = row
    return {
        "system_identifier": str(sysid),
        "server_version": version,
        "server_version_num": int(version_num),
        "wal_segment_size": int(seg_size),
        "data_checksums": checksums == "on",
        "server_time": now.astimezone(UTC).isoformat(),
    }


class PostgresPhysicalStrategy(Strategy[PostgresPhysicalOptions]):
    kind: ClassVar[str] = KIND
    Options: ClassVar[type[SourceOptions]] = PostgresPhysicalOptions

    @classmethod
    def scratch_owner(cls) -> str | None:
        # tar runs as the cluster's user when drd is root: it must enter the scratch directory.
        return run_as_user(None)

    async def dump(self) -> AsyncGenerator[bytes, None]:
        self._metadata = None
        opts = self.opts
        where = f"source {opts.name!r}"
        try:
            conn = _Conn.parse(opts.dsn)
            dbname_arg = conn.dbname_arg()
        except ValueError as exc:
            raise SourceError(f"{where}: dsn: {exc}") from None
        secret = [conn.password]
        tool = await find_tool("pg_basebackup", opts.pg_bin_dir)
        if tool is None:
            place = opts.pg_bin_dir or "/usr/lib/postgresql/*/bin or PATH"
            raise SourceError(f"{where}: no working pg_basebackup found in {place}")
        try:
            before = await server_facts(_sql_dsn(conn))
        except Exception as exc:
            raise SourceError(
                f"{where}: cannot query the server: {redact(str(exc), secret)}"
            ) from None
        argv = [
            tool.path,
            "--pgdata=-",
            "--format=tar",
            "--wal-method=fetch",
            "--checkpoint=fast",
            "--no-password",
            f"--label=drd {opts.name}",
            *dbname_arg,
        ]
        scanner = TarScanner({"backup_label": None, "backup_manifest": _MANIFEST_TAIL})
        try:
            async with contextlib.aclosing(
                stream_stdout(argv, conn.env(), chunk_size=CHUNK_SIZE)
            ) as stream:
                async for chunk in ScannedStream(stream, scanner):
                    yield chunk
            scanner.finish()
        except ToolError as exc:
            raise SourceError(
                f"{where}: pg_basebackup failed: {redact(str(exc), secret)}"
            ) from None
        except TarError as exc:
            raise SourceError(f"{where}: pg_basebackup's output: {exc}") from None
        label = scanner.member("backup_label")
        manifest = scanner.member("backup_manifest")
        if label is None or manifest is None:
            raise SourceError(f"{where}: pg_basebackup's tar has no backup_label or manifest")
        try:
            facts = await server_facts(_sql_dsn(conn))
        except Exception as exc:
            raise SourceError(
                f"{where}: cannot query the server after pg_basebackup: {redact(str(exc), secret)}"
            ) from None
        if facts["system_identifier"] != before["system_identifier"]:
            raise SourceError(f"{where}: the server changed during the backup (system identifier)")
        parsed = _parse_label(label.decode("utf-8", "replace"))
        end_tli, _, end_lsn = _parse_wal_range(manifest.decode("utf-8", "replace"))
        self._metadata = {
            "format": FORMAT,
            "pg_basebackup_version": tool.version,
            "system_identifier": facts["system_identifier"],
            "server_version": facts["server_version"],
            "server_version_num": facts["server_version_num"],
            "wal_segment_size": facts["wal_segment_size"],
            "data_checksums": facts["data_checksums"],
            "timeline": parsed["timeline"],
            "end_timeline": end_tli,
            "start_lsn": parsed["start_lsn"],
            "checkpoint_lsn": parsed["checkpoint_lsn"],
            "end_lsn": end_lsn,
            # The server's clock: recovery targets are compared with its commit times.
            "start_time": before["server_time"],
            "end_time": facts["server_time"],
            "tar_bytes": scanner.bytes,
            "tar_members": scanner.members,
        }

    @classmethod
    async def restore(
        cls,
        chunks: AsyncIterator[bytes],
        target: str,
        metadata: Mapping[str, Any],
        *,
        user: str | None = None,
        recovery: Mapping[str, str] | None = None,
    ) -> RestoreOutcome:
        """Extract the base backup into the new data directory `target` (module docstring).
        `recovery`: settings for postgresql.auto.conf, with a recovery.signal
        (drd.pipeline.pitr)."""
        fmt = metadata.get("format", FORMAT)
        if fmt != FORMAT:
            raise RestoreError(f"restore into {target}: unsupported backup format {fmt!r}")
        path = _absolute(target)
        where = f"restore into data directory {path}"
        if path.exists() or path.is_symlink():
            raise TargetExists(f"{where}: it already exists")
        if not path.parent.is_dir():
            raise RestoreError(f"{where}: {path.parent} is not a directory")
        run_as = run_as_user(user)
        staging = path.with_name(f".{path.name}{STAGING_MARK}{secrets.token_hex(4)}")
        counted = CountingStream(chunks)
        scanner = TarScanner({"backup_label": None})
        try:
            os.mkdir(staging, 0o700)
            _chown(staging, run_as)
            argv = [*_run_as_prefix(run_as), _tar(), "-x", "-p", "-f", "-", "-C", str(staging)]
            await feed_stdin(argv, _tool_env(), ScannedStream(counted, scanner))
            scanner.finish()
            label = scanner.member("backup_label")
            if label is None or not (staging / "PG_VERSION").is_file():
                raise RestoreError(f"{where}: the backup holds no backup_label or PG_VERSION")
            notes = _prepare(staging, run_as, recovery, metadata)
            if path.exists():
                raise TargetExists(f"{where}: it appeared during the restore")
            os.rename(staging, path)
        except BaseException as exc:
            await asyncio.shield(asyncio.to_thread(shutil.rmtree, staging, True))
            if isinstance(exc, ToolError):
                raise RestoreError(f"{where}: {exc}") from None
            if isinstance(exc, TarError):
                raise RestoreError(f"{where}: the backup's tar stream: {exc}") from None
            if isinstance(exc, OSError):
                raise RestoreError(f"{where}: {exc}") from None
            raise
        return RestoreOutcome(
            target=str(path),
            details={
                "data_directory": str(path),
                "bytes": counted.bytes,
                "owner": run_as or pwd.getpwuid(os.geteuid()).pw_name,
                "start_lsn": metadata.get("start_lsn"),
                "end_lsn": metadata.get("end_lsn"),
                "recovery": dict(recovery or {}),
                "notes": notes,
            },
        )


def _absolute(target: str) -> Path:
    path = Path(target).expanduser()
    return path if path.is_absolute() else Path.cwd() / path


def _sql_dsn(conn: _Conn) -> str:
    """The DSN for drd's own queries: a normal connection, to `postgres` if it names no
    database."""
    params = {k: v for k, v in conn.params.items() if k != "replication"}
    params.setdefault("dbname", "postgres")
    return _Conn(params).with_dbname(params["dbname"])


def sql_dsn(dsn: str) -> str:
    return _sql_dsn(_Conn.parse(dsn))


def describe_dsn(dsn: str) -> str:
    return _Conn.parse(dsn).describe()


def _tar() -> str:
    return shutil.which("tar") or "/bin/tar"


def _tool_env() -> dict[str, str]:
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}


def run_as_user(user: str | None) -> str | None:
    """Who owns and runs a restored cluster: `user` (default postgres) when drd runs as root;
    drd's own user otherwise (then `user` must be that user, if given)."""
    if os.geteuid() == 0:
        name = user or DEFAULT_RUN_AS
        try:
            pwd.getpwnam(name)
        except KeyError:
            raise RestoreError(f"no OS user {name!r} to own the restored cluster") from None
        return name
    me = pwd.getpwuid(os.geteuid()).pw_name
    if user is not None and user != me:
        raise RestoreError(f"only root can restore a cluster for another user ({user})")
    return None


def _run_as_prefix(user: str | None) -> list[str]:
    if user is None:
        return []
    return [shutil.which("runuser") or "/usr/sbin/runuser", "-u", user, "--"]


def _chown(path: Path, user: str | None) -> None:
    if user is not None:
        account = pwd.getpwnam(user)
        os.chown(path, account.pw_uid, account.pw_gid)


def conf_quote(value: str) -> str:
    """A postgresql.conf string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _prepare(
    datadir: Path,
    run_as: str | None,
    recovery: Mapping[str, str] | None,
    metadata: Mapping[str, Any],
) -> list[str]:
    """Make the extracted copy startable; write the recovery settings. Returns notes."""
    notes: list[str] = []
    written: list[Path] = []
    conf = datadir / "postgresql.conf"
    if not conf.exists():
        conf.write_text(
            "# written by drd restore: the backed-up cluster kept its configuration outside\n"
            "# the data directory (e.g. /etc/postgresql); the defaults apply until you add it\n"
        )
        written.append(conf)
        notes.append(
            "no postgresql.conf in the backup (kept outside the data directory): wrote an empty one"
        )
    standby = datadir / "standby.signal"
    if standby.exists():
        standby.unlink()
        notes.append("removed standby.signal: the copy comes up as a primary")
    if recovery:
        auto = datadir / "postgresql.auto.conf"
        lines = [
            "",
            f"{AUTO_CONF_MARK} point-in-time recovery of base backup "
            f"{metadata.get('start_lsn', '?')}..{metadata.get('end_lsn', '?')}",
        ]
        lines += [f"{name} = {conf_quote(value)}" for name, value in recovery.items()]
        with open(auto, "a", encoding="utf-8") as out:
            out.write("\n".join(lines) + "\n")
        signal = datadir / "recovery.signal"
        signal.write_text("")
        written += [auto, signal]
    for item in written:
        _chown(item, run_as)
    return notes


# --------------------------------------------------------------------------------------------
# Starting a restored cluster and following its recovery


@dataclass
class RecoveryOutcome:
    #: the server is up and out of recovery
    promoted: bool
    #: what PostgreSQL said about where it stopped ("recovery stopping before commit ...")
    stop_message: str | None
    #: "last completed transaction was at log time ..." (None if it did not say)
    last_transaction: datetime | None
    #: recovery ended at the end of the WAL without reaching the target (PostgreSQL refuses)
    target_not_reached: bool
    log_tail: str
    seconds: float


_STOP_RE = re.compile(r"recovery stopping (?:before|after) [^\n]*")
_LAST_XACT_RE = re.compile(r"last completed transaction was at log time ([^\n]+)")
_READY_RW = "database system is ready to accept connections"
_NOT_REACHED = "recovery ended before configured recovery target was reached"


def _parse_pg_time(text: str) -> datetime | None:
    text = text.strip()
    for fmt in ("%Y-%m-%d %H:%M:%S.%f%z", "%Y-%m-%d %H:%M:%S%z"):
        with contextlib.suppress(ValueError):
            return datetime.strptime(text + ("00" if re.search(r"[+-]\d\d$", text) else ""), fmt)
    return None


async def start_cluster(
    datadir: Path,
    *,
    bin_dir: Path,
    run_as: str | None,
    log_file: Path,
    options: str = "",
    env: Mapping[str, str] | None = None,
    limit: float = 3600.0,
) -> RecoveryOutcome:
    """Start the restored cluster (pg_ctl) and wait until its recovery ended: promoted, or
    failed. Its log goes to `log_file` only (logging_collector off), which is read for what
    recovery did."""
    import time

    began = time.monotonic()
    offset = _open_log(log_file, run_as)
    opts = f"-c logging_collector=off -c log_destination=stderr {options}".strip()
    argv = [
        *_run_as_prefix(run_as),
        str(bin_dir / "pg_ctl"),
        "-D",
        str(datadir),
        "-l",
        str(log_file),
        "-o",
        opts,
        "-W",
        "start",
    ]
    child_env = {**_tool_env(), **(env or {})}
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=child_env,
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise RestoreError(f"pg_ctl start failed: {err.decode(errors='replace').strip()}")
    deadline = began + limit
    text = ""
    while True:
        text = _read_from(log_file, offset)
        running = _postmaster_running(datadir)
        if _READY_RW in text:
            break
        if not running and ("FATAL" in text or "PANIC" in text or time.monotonic() - began > 5):
            break
        if time.monotonic() > deadline:
            raise RestoreError(
                f"recovery of {datadir} did not finish within {limit:.0f}s; the server is "
                "still running: " + _tail(text)
            )
        await asyncio.sleep(0.2)
    stop = _STOP_RE.search(text)
    last = _LAST_XACT_RE.search(text)
    return RecoveryOutcome(
        promoted=_READY_RW in text,
        stop_message=stop.group(0) if stop else None,
        last_transaction=_parse_pg_time(last.group(1)) if last else None,
        target_not_reached=_NOT_REACHED in text,
        log_tail=_tail(text),
        seconds=time.monotonic() - began,
    )


async def stop_cluster(
    datadir: Path, *, bin_dir: Path, run_as: str | None, mode: str = "fast"
) -> None:
    argv = [*_run_as_prefix(run_as), str(bin_dir / "pg_ctl"), "-D", str(datadir), "-m", mode]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        "-w",
        "stop",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=_tool_env(),
    )
    _, err = await proc.communicate()
    if proc.returncode != 0 and _postmaster_running(datadir):
        raise RestoreError(f"pg_ctl stop failed: {err.decode(errors='replace').strip()}")


def _open_log(log_file: Path, run_as: str | None) -> int:
    """Create the log file for the server's user; the offset its new lines start at."""
    log_file.touch(0o600)
    _chown(log_file, run_as)
    return log_file.stat().st_size


def remove_recovery_target(datadir: Path) -> None:
    """Drop the recovery_target_* lines drd wrote (recover to the end of the WAL instead)."""
    auto = datadir / "postgresql.auto.conf"
    lines = auto.read_text(encoding="utf-8").splitlines()
    mark = max((i for i, line in enumerate(lines) if line.startswith(AUTO_CONF_MARK)), default=-1)
    if mark < 0:
        return
    kept = lines[: mark + 1] + [
        line for line in lines[mark + 1 :] if not line.startswith("recovery_target")
    ]
    stat = auto.stat()
    auto.write_text("\n".join(kept) + "\n", encoding="utf-8")
    os.chown(auto, stat.st_uid, stat.st_gid)
    signal = datadir / "recovery.signal"
    if not signal.exists():
        signal.write_text("")
        os.chown(signal, stat.st_uid, stat.st_gid)


def _postmaster_running(datadir: Path) -> bool:
    try:
        pid = int((datadir / "postmaster.pid").read_text().split("\n", 1)[0])
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


async def bin_dir_for(major: int, explicit: str | None = None) -> Path:
    """The directory of pg_ctl for a cluster of PostgreSQL `major` (exactly that major: a data
    directory only starts with its own)."""
    if explicit is not None:
        return Path(explicit)
    candidate = Path(f"/usr/lib/postgresql/{major}/bin")
    if (candidate / "pg_ctl").exists():
        return candidate
    tool = await find_tool("pg_ctl")
    if tool is not None and tool.major == major:
        return Path(tool.path).parent
    raise RestoreError(
        f"no PostgreSQL {major} server binaries (pg_ctl) here: install postgresql-{major}"
    )


# --------------------------------------------------------------------------------------------
# WAL archiving helpers (drd.daemon.wal_loop)


def receivewal_argv(tool_path: str, dsn: str, spool: Path, slot: str) -> list[str]:
    """pg_receivewal streaming into `spool` through `slot`, flushing every write
    (--synchronous: the slot, and so the server's retained WAL, follows what is on disk), and
    exiting when the connection is lost (the daemon restarts it with a backoff)."""
    conn = _Conn.parse(dsn)
    return [
        tool_path,
        f"--directory={spool}",
        f"--slot={slot}",
        "--synchronous",
        "--no-loop",
        "--no-password",
        "--status-interval=1",
        *conn.dbname_arg(),
    ]


def receivewal_env(dsn: str) -> dict[str, str]:
    return _Conn.parse(dsn).env()


def dsn_secret(dsn: str) -> str | None:
    return _Conn.parse(dsn).password


async def ensure_slot(dsn: str, slot: str) -> bool:
    """Create the physical slot (reserving WAL at once) unless it exists; True if created."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(sql_dsn(dsn), autocommit=True) as db:
        cur = await db.execute(
            "SELECT slot_type FROM pg_catalog.pg_replication_slots WHERE slot_name = %s", (slot,)
        )
        row = await cur.fetchone()
        if row is not None:
            if row[0] != "physical":
                raise SourceError(f"replication slot {slot} exists and is not a physical slot")
            return False
        await db.execute("SELECT pg_catalog.pg_create_physical_replication_slot(%s, true)", (slot,))
    return True


async def drop_slot(dsn: str, slot: str) -> bool:
    """Drop the slot if it exists (it must not be in use); True if it was dropped."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(sql_dsn(dsn), autocommit=True) as db:
        cur = await db.execute(
            "SELECT active_pid FROM pg_catalog.pg_replication_slots WHERE slot_name = %s", (slot,)
        )
        row = await cur.fetchone()
        if row is None:
            return False
        if row[0] is not None:
            await db.execute("SELECT pg_catalog.pg_terminate_backend(%s)", (row[0],))
            await asyncio.sleep(0.2)
        await db.execute("SELECT pg_catalog.pg_drop_replication_slot(%s)", (slot,))
    return True


@dataclass(frozen=True)
class ServerSample:
    """The source at one moment (its clock): where its WAL is, and what the slot holds back."""

    time: datetime
    #: the WAL written so far (pg_current_wal_lsn; on a standby the replayed position)
    lsn: int
    timeline: int
    system_identifier: str
    #: the slot's restart_lsn: what pg_receivewal has flushed (None: no slot, or never used)
    slot_lsn: int | None
    slot_active: bool
    #: bytes of WAL the server keeps for the slot
    slot_retained: int | None
    wal_status: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            "time": self.time.isoformat(),
            "lsn": format_lsn(self.lsn),
            "timeline": self.timeline,
        }


_SAMPLE_SQL = """
SELECT clock_timestamp(),
       CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_replay_lsn()
            ELSE pg_catalog.pg_current_wal_lsn() END::text,
       (SELECT timeline_id FROM pg_catalog.pg_control_checkpoint()),
       (SELECT system_identifier FROM pg_catalog.pg_control_system())::text,
       s.restart_lsn::text,
       coalesce(s.active, false),
       CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL
            ELSE pg_catalog.pg_current_wal_lsn() - s.restart_lsn END,
       s.wal_status
FROM (SELECT 1) AS one
LEFT JOIN pg_catalog.pg_replication_slots s ON s.slot_name = %s
"""


async def sample(db: Any, slot: str) -> ServerSample:
    """One sample over an open psycopg AsyncConnection (autocommit)."""
    cur = await db.execute(_SAMPLE_SQL, (slot,))
    row = await cur.fetchone()
    assert row is not None
    now, lsn, tli, sysid, slot_lsn, active, retained, status = row
    return ServerSample(
        time=now.astimezone(UTC),
        lsn=parse_lsn(lsn),
        timeline=int(tli),
        system_identifier=str(sysid),
        slot_lsn=parse_lsn(slot_lsn) if slot_lsn else None,
        slot_active=bool(active),
        slot_retained=int(retained) if retained is not None else None,
        wal_status=status,
    )
