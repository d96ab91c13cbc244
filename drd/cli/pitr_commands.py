"""The CLI of point-in-time recovery: `drd restore` of a physical PostgreSQL source, `drd
wal-push` (archive_command) and `drd wal-fetch` (restore_command). drd.pipeline.pitr does the
work."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from drd.cli.output import print_json
from drd.config.loader import load_config
from drd.config.models import Config
from drd.crypto import Keyring
from drd.durations import format_elapsed
from drd.errors import DrdError, UsageError, WalFetchFailed, WalNotFound
from drd.layout import SourceRef
from drd.runtime import keyring_for, open_regions
from drd.storage.base import Storage

#: as drd.cli.commands.Outcome (which imports this module): None, or the failure's class
Outcome = type[DrdError] | None

#: the restore flags that only apply to a physical source
FLAGS = ("at", "lsn", "latest", "start", "user", "port", "drd_command")


def parse_time(text: str) -> datetime:
    """ISO 8601 (`2026-12-03T14:05:00Z`, `2026-12-03 14:05:00.25+01:00`); UTC if no zone."""
    raw = text.strip()
    if raw.endswith(("Z", "z")):
        raw = raw[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        raise UsageError(
            f"--at {text!r}: expected an ISO 8601 time, e.g. 2026-12-03T14:05:00Z"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def target_from(at: str | None, lsn: str | None, latest: bool, backup_id: str | None) -> Any:
    from drd.pipeline.pitr import Target
    from drd.strategies.postgres_wal import parse_lsn

    given = [name for name, value in (("--at", at), ("--lsn", lsn), ("--latest", latest)) if value]
    if len(given) > 1:
        raise UsageError(f"give one of --at, --lsn or --latest, not {' and '.join(given)}")
    if at:
        return Target("time", time=parse_time(at))
    if lsn:
        try:
            return Target("lsn", lsn=parse_lsn(lsn))
        except ValueError as exc:
            raise UsageError(f"--lsn: {exc}") from None
    if latest or backup_id is None:
        return Target("latest")
    return Target("base")


def fetch_argv(
    config_path: Path | None,
    ref: SourceRef,
    keys: str | None,
    storage_args: Sequence[str],
    drd_argv: Sequence[str] | None = None,
) -> list[str]:
    """The stand-alone `drd wal-fetch` command line restore_command runs later."""
    argv = list(drd_argv or [sys.executable, "-m", "drd.cli.main"])
    if config_path is not None and not storage_args:
        argv += ["--config", str(config_path.absolute())]
    argv += ["wal-fetch", str(ref)]
    if keys:
        argv += ["--keys", keys]
    for arg in storage_args:
        argv += ["--storage", arg]
    return argv


async def restore(
    ref: SourceRef,
    regions: Sequence[Storage],
    keyring: Keyring,
    *,
    config_path: Path | None,
    keys: str | None,
    storage_args: Sequence[str],
    target_dir: str,
    backup_id: str | None,
    region: str | None,
    flags: Mapping[str, Any],
) -> Outcome:
    """`drd restore` of a physical source (drd.cli.commands.restore checked the arguments and
    opened the regions; `flags` are the point-in-time ones)."""
    import shlex

    from drd.pipeline.pitr import restore_to_point

    target = target_from(flags.get("at"), flags.get("lsn"), bool(flags.get("latest")), backup_id)
    drd_argv = shlex.split(flags["drd_command"]) if flags.get("drd_command") else None
    result = await restore_to_point(
        ref,
        regions,
        keyring,
        Path(target_dir),
        target,
        fetch_argv=fetch_argv(config_path, ref, keys, storage_args, drd_argv),
        backup_id=backup_id,
        start=bool(flags.get("start")),
        user=flags.get("user"),
        port=flags.get("port"),
        prefer_region=region,
        drd_argv=drd_argv,
    )
    if flags.get("as_json"):
        print_json(result.as_json())
        return None
    base = result.window.base
    print(
        f"restored {ref} base backup {base.backup_id} from region {result.restore.region} into "
        f"{result.datadir}, recovery to {target.describe()}"
    )
    print(f"recovery window used: {result.window.describe()}")
    rec = result.recovery
    if rec is None:
        if target.kind == "base":
            print("not started: it comes up consistent at the end of the base backup")
        else:
            print(
                "not started: start the server (pg_ctl -D ... start) where its restore_command "
                "can read drd's keys and regions (as any drd command does); it recovers, then "
                "promotes"
            )
    else:
        stop = rec.stop_message or "recovery reached the end of the archive"
        print(
            f"recovered in {format_elapsed(rec.seconds)} ({result.wal_fetched} WAL files): {stop}"
        )
        if rec.last_transaction is not None:
            print(f"last transaction applied: {rec.last_transaction.isoformat()}")
        if result.ended_at_archive_end:
            print("(no transaction after the target in the archive: everything archived applied)")
        print("the server is running and promoted")
    for skipped, why in result.restore.skipped.items():
        print(f"warning: region {skipped} was skipped: {why}", file=sys.stderr)
    return None


async def is_physical(cfg: Config | None, ref: SourceRef, regions: Sequence[Storage]) -> bool:
    """Whether `ref` is a physical PostgreSQL source: by the plan, else by its backups."""
    from drd.strategies.postgres_physical import KIND

    if cfg is not None:
        try:
            return cfg.plan(ref.plan).source(ref.source).kind == KIND
        except KeyError:
            return False
    from drd.repository.catalog import build_catalog

    catalog = await build_catalog(regions, None, ref.prefix)
    entries = catalog.for_source(ref)
    newest = entries[-1].public if entries else None
    return newest is not None and newest.kind == KIND


async def wal_fetch(
    config_path: Path | None,
    what: str,
    name: str,
    destination: str,
    keys: str | None,
    storage_args: Sequence[str],
    *,
    system_id: str | None,
    segment_size: int,
    expect: str | None,
    region: str | None,
) -> Outcome:
    """restore_command: exit 0 with the file written, 1 if the archive does not have it, 126
    (PostgreSQL then stops recovery) for a gap or a file no region has intact."""
    from drd.pipeline.pitr import Expect, WalFetcher, write_atomically

    try:
        ref = SourceRef.parse(what)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        cfg = load_config(config_path) if config_path is not None else None
        keyring = keyring_for(cfg, keys)
        async with AsyncExitStack() as stack:
            regions = await open_regions(stack, cfg, storage_args)
            if cfg is not None and not storage_args:
                plan = cfg.plan(ref.plan)
                regions = [r for r in regions if r.name in plan.storage.regions]
            if system_id is None:
                system_id = await _only_system(regions, ref)
            expected = Expect.parse(expect, segment_size) if expect else None
            fetcher = WalFetcher(
                ref,
                regions,
                keyring,
                system_id,
                segment_size=segment_size,
                expect=expected,
                prefer_region=region,
            )
            fetched = await fetcher.fetch(name)
        await write_atomically(Path(destination), fetched.data)
    except WalNotFound:
        return WalNotFound  # quietly: PostgreSQL asks for files that do not exist
    except (ValueError, KeyError) as exc:
        raise WalFetchFailed(f"wal-fetch {name}: {exc}") from None
    return None


async def _only_system(regions: Sequence[Any], ref: SourceRef) -> str:
    from drd.repository.wal import list_archive

    archive = await list_archive(regions, ref)
    systems = sorted(archive.systems)
    if len(systems) != 1:
        raise UsageError(
            f"the archive of {ref} holds {len(systems)} clusters' WAL: give --system-id"
            + (f" (one of {', '.join(systems)})" if systems else "")
        )
    return systems[0]


async def wal_push(config_path: Path | None, what: str, path: str, keys: str | None) -> Outcome:
    """archive_command: store the WAL file at `path` in the plan's regions; exit 0 once
    min_copies hold it (PostgreSQL keeps the file and calls again otherwise)."""
    from drd.pipeline.pitr import push_wal

    assert config_path is not None
    try:
        ref = SourceRef.parse(what)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    cfg = load_config(config_path)
    plan = cfg.plan(ref.plan)
    plan.source(ref.source)
    wal = read_wal_file(Path(path))
    keyring = keyring_for(cfg, keys)
    async with AsyncExitStack() as stack:
        regions = {r.name: r for r in await open_regions(stack, cfg, [])}
        targets = [regions[n] for n in plan.storage.regions]
        result = await push_wal(
            ref,
            targets,
            keyring,
            system_id=wal.system_id,
            name=wal.name,
            data=wal.data,
            through=wal.mtime,
            timeline=wal.timeline,
            segment_size=wal.segment_size,
            min_copies=plan.storage.min_copies,
            archived_by="archive_command",
        )
    for region, why in result.failed.items():
        print(f"warning: region {region}: {why}", file=sys.stderr)
    return None


@dataclass(frozen=True)
class WalFile:
    name: str
    data: bytes
    mtime: datetime
    system_id: str
    timeline: int
    segment_size: int


def read_wal_file(file: Path) -> WalFile:
    """A WAL file archive_command hands over, with what its header (or, for a timeline
    history, the cluster's global/pg_control in the working directory) says about it."""
    from drd.repository.wal import kind_of
    from drd.strategies.postgres_wal import (
        check_segment,
        history_timeline,
        read_system_identifier,
    )

    name = file.name
    kind = kind_of(name)
    if kind is None:
        raise UsageError(f"wal-push: {name} is not a WAL segment or timeline history file")
    data = file.read_bytes()
    mtime = datetime.fromtimestamp(os.stat(file).st_mtime, UTC)
    if kind != "history":
        try:
            header = check_segment(data, name[:24])
        except ValueError as exc:
            raise UsageError(f"wal-push: {exc}") from None
        return WalFile(
            name, data, mtime, str(header.system_identifier), header.timeline, header.segment_size
        )
    control = Path("global/pg_control")
    if not control.is_file():
        raise UsageError(
            "wal-push: a history file's cluster is read from global/pg_control: run "
            "wal-push from the data directory (archive_command does)"
        )
    system_id = str(read_system_identifier(control.read_bytes()))
    return WalFile(name, data, mtime, system_id, history_timeline(name), 0)
