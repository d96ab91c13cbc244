"""The `drd` command line. Errors are mapped to exit codes here and only here: a DrdError a
command raised (printed here), the failure a command returned as its Outcome (it printed what
failed itself), and an interrupt. The codes are drd.errors's (and the README's table)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from drd import __version__
from drd.cli.helptext import ACTIONS, COMMANDS, CommandHelp, epilog, overview_epilog
from drd.errors import EXIT_INTERRUPTED, EXIT_OK, DrdError, UsageError, WalFetchFailed
from drd.secret_source import protect_process

if TYPE_CHECKING:
    from drd.cli.commands import Outcome

log = logging.getLogger("drd")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; also what shell completion and the man page are made from."""
    p = argparse.ArgumentParser(
        prog="drd",
        description="Disaster-recovery backups you can prove.",
        epilog=overview_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"drd {__version__}")
    p.add_argument("--config", "-c", help="daemon config (default: $DRD_CONFIG or ./drd.yaml)")
    p.add_argument("--log-level", default=None, help="debug, info, warning, error")
    p.add_argument("--log-format", choices=["text", "json"], default=None)
    # --config is accepted before or after the command (`drd --config X run`, `drd run -c X`).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def described(text: CommandHelp) -> dict[str, object]:
        return {
            "description": text.description,
            "epilog": epilog(text),
            "formatter_class": argparse.RawDescriptionHelpFormatter,
        }

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=[common], **described(COMMANDS[name]))  # type: ignore[arg-type]

    def json_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--json", action="store_true", help="print the result as JSON (docs/cli.md)"
        )

    kg = command("keygen", "print a new key-encryption key")
    kg.add_argument("--quiet", "-q", action="store_true", help="print only the key")
    json_arg(kg)

    json_arg(command("validate", "check drd.yaml and every plan; non-zero exit on any error"))

    tk = command("token", "make an API bearer token; prints the token and its config entry")
    tk.add_argument("--name", required=True, help="who holds it (shown in the audit trail)")
    tk.add_argument("--role", required=True, choices=["viewer", "operator", "coordinator"])
    json_arg(tk)

    def keys_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--keys",
            metavar="SOURCE",
            help="where the keyring comes from: env:VAR, credential:NAME or stdin "
            "(default: the config's keys, else env:DRD_KEYS)",
        )

    def storage_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--storage",
            action="append",
            default=[],
            metavar="[NAME=]URL",
            help="read these regions instead of drd.yaml's (repeatable): file:PATH, "
            "gs://BUCKET/PREFIX?endpoint=URL&credentials=env:VAR",
        )

    def progress_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--progress-every",
            metavar="DURATION",
            default="10s",
            help="when stderr is not a terminal, log the progress this often (default 10s; "
            "on a terminal a live line shows it, with --json JSON lines on stderr)",
        )

    bk = command("backup", "back up PLAN or PLAN/SOURCE now")
    bk.add_argument("what", metavar="PLAN[/SOURCE]")
    json_arg(bk)
    keys_arg(bk)
    progress_arg(bk)

    ls = command("list", "list backups (rebuilt from storage)")
    ls.add_argument("plan", nargs="?", metavar="PLAN[/SOURCE]")
    json_arg(ls)
    keys_arg(ls)
    storage_arg(ls)

    rs = command("restore", "restore a backup into a new database or directory")
    rs.add_argument("what", metavar="PLAN/SOURCE")
    rs.add_argument("--to", required=True, metavar="TARGET", help="a DSN or a path; must not exist")
    rs.add_argument("--backup", metavar="ID", help="default: the newest backup")
    rs.add_argument("--region", help="read this region first")
    rs.add_argument(
        "--create-roles",
        action="store_true",
        help="PostgreSQL: create the roles the backup refers to that the target server lacks "
        "(NOLOGIN, no privileges beyond the backup's); without it a restore that needs them "
        "stops before changing anything (exit 13)",
    )
    rs.add_argument(
        "--allow-older",
        action="store_true",
        help="when no copy of the newest backup can be verified, restore the newest one that "
        "can (default: fail, naming the newer backup and why)",
    )
    json_arg(rs)
    pitr = rs.add_argument_group(
        "point-in-time recovery (postgres-physical sources; --to is a new data directory)"
    )
    point = pitr.add_mutually_exclusive_group()
    point.add_argument(
        "--at", metavar="TIME", help="recover to this time (ISO 8601, UTC if no zone)"
    )
    point.add_argument("--lsn", metavar="LSN", help="recover to this WAL position (X/Y)")
    point.add_argument(
        "--latest",
        action="store_true",
        help="recover everything archived (the default without --backup)",
    )
    pitr.add_argument(
        "--start", action="store_true", help="start the server and wait until recovery is done"
    )
    pitr.add_argument(
        "--user", help="when run as root: the OS user that owns and runs it (default postgres)"
    )
    pitr.add_argument("--port", type=int, help="with --start: the port the server listens on")
    pitr.add_argument(
        "--drd-command",
        metavar="CMD",
        help="how the restored server's user runs drd, for restore_command (default: this "
        "drd's interpreter and module; give e.g. /usr/bin/drd if that user cannot run it)",
    )
    keys_arg(rs)
    storage_arg(rs)
    progress_arg(rs)

    wp = command("wal-push", "archive_command: store a WAL file (%%p) in the plan's regions")
    wp.add_argument("what", metavar="PLAN/SOURCE")
    wp.add_argument("path", metavar="PATH", help="the file (%%p)")
    keys_arg(wp)

    wf = command(
        "wal-fetch",
        "restore_command: fetch a WAL file (NAME, %%f) from any region that has it into PATH "
        "(%%p); exit 1 if the archive does not have it, 126 (recovery stops) for a gap",
    )
    wf.add_argument("files", nargs="+", metavar="[PLAN/SOURCE] NAME PATH")
    wf.add_argument(
        "--socket", help="ask the drd process that started this recovery (no PLAN/SOURCE)"
    )
    wf.add_argument("--system-id", help="the cluster's system identifier")
    wf.add_argument("--segment-size", type=int, default=16 << 20, help=argparse.SUPPRESS)
    wf.add_argument("--expect", help=argparse.SUPPRESS)
    wf.add_argument("--region", help="read this region first")
    keys_arg(wf)
    storage_arg(wf)

    pr = command("prune", "destroy expired backups in every region now, and say why")
    pr.add_argument("plan", nargs="?", metavar="PLAN", help="default: every plan")
    pr.add_argument("--dry-run", action="store_true", help="only show what would be destroyed")
    json_arg(pr)

    json_arg(
        command(
            "doctor",
            "check that every region is writable and can destroy backups within max_age",
        )
    )

    ck = command("check", "check every copy of PLAN (or every plan) now, and repair them")
    ck.add_argument("plan", nargs="?", metavar="PLAN", help="default: every plan")
    ck.add_argument(
        "--read-data",
        action="store_true",
        help="also read every data object and check its digest against the manifest",
    )
    ck.add_argument(
        "--no-repair", action="store_true", help="only report: copy and replace nothing"
    )
    json_arg(ck)
    keys_arg(ck)

    rt = command("restore-test", "restore into a scratch environment, check, time it (RTO)")
    rt.add_argument("what", metavar="PLAN[/SOURCE]")
    rt.add_argument("--backup", metavar="ID", help="default: the newest backup")
    rt.add_argument("--region", help="read this region's copy (default: each region in turn)")
    rt.add_argument(
        "--allow-older",
        action="store_true",
        help="when no copy of the newest backup can be verified, test the newest one that can "
        "(default: the test fails on the newest backup)",
    )
    rt.add_argument("--json", action="store_true", help="print the full reports as JSON")
    keys_arg(rt)
    progress_arg(rt)

    dr = command("drill", "failover drill: restore every source of PLAN, check, measure RTO/RPO")
    dr.add_argument("plan", metavar="PLAN")
    dr.add_argument(
        "--lose-region", metavar="R", help="simulate losing region R: it is not read at all"
    )
    dr.add_argument("--json", action="store_true", help="print the full report as JSON")
    dr.add_argument(
        "--html", metavar="FILE", type=Path, help="also write the one-page HTML report to FILE"
    )
    keys_arg(dr)
    progress_arg(dr)

    rp = command("report", "every restore test and drill of PLAN in a window, for an auditor")
    rp.add_argument("plan", metavar="PLAN")
    rp.add_argument(
        "--since", default="90d", metavar="DURATION", help="the window, back from now (90d)"
    )
    rp.add_argument("--out", metavar="FILE", type=Path, help="write to FILE (default: stdout)")
    rp.add_argument(
        "--json", action="store_true", help="the figures as JSON instead of the HTML page"
    )
    keys_arg(rp)

    def daemon_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--token",
            metavar="SOURCE",
            help="the API token: env:VAR, credential:NAME or stdin (default: $DRD_TOKEN; "
            "none: only a daemon with public_read answers)",
        )
        sp.add_argument(
            "--offline",
            action="store_true",
            help="do not ask the daemon: read the state directory and the regions",
        )
        json_arg(sp)
        keys_arg(sp)

    daemon_args(command("status", "jobs running, last results, next due, regions' health"))

    dl = command("drills", "failover drills: list them, show one")
    dl_sub = dl.add_subparsers(dest="drills_command", required=True, metavar="ACTION")
    dll = dl_sub.add_parser(
        "list",
        help="the newest drills, newest first",
        parents=[common],
        **described(ACTIONS["drills list"]),  # type: ignore[arg-type]
    )
    dll.add_argument("--plan", help="only this plan's drills")
    daemon_args(dll)
    dls = dl_sub.add_parser(
        "show",
        help="one drill's report",
        parents=[common],
        **described(ACTIONS["drills show"]),  # type: ignore[arg-type]
    )
    dls.add_argument("drill_id", metavar="ID")
    daemon_args(dls)

    au = command("audit", "the audit trail")
    au_sub = au.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    av = au_sub.add_parser(
        "verify",
        help="check the local trail and its sealed copies in every region against each other",
        parents=[common],
        **described(ACTIONS["audit verify"]),  # type: ignore[arg-type]
    )
    av.add_argument(
        "--chain", help="another host's chain (HOSTNAME-ID; default: this host's, from state_dir)"
    )
    json_arg(av)
    keys_arg(av)

    cp = command("completion", "print a shell completion script (bash, zsh, tcsh)")
    cp.add_argument("shell", choices=["bash", "zsh", "tcsh"])
    command("manpage", "print the drd(1) manual page (roff)")

    run = command("run", "run the daemon")
    keys_arg(run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    # Before any secret is read: no core file, no same-user reader of this process's memory.
    unprotected = protect_process()
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        # A restore_command that cannot run must stop recovery, not end it early: PostgreSQL
        # takes exit codes up to 125 (argparse's 2 included) for "no such WAL file".
        words = sys.argv[1:] if argv is None else list(argv)
        if exc.code not in (0, None) and "wal-fetch" in words:
            raise SystemExit(WalFetchFailed.exit_code) from None
        raise
    from drd.logs import setup_logging

    # Flags, then DRD_LOG_*, then (for `drd run`) the config's `log:` section, then defaults.
    args.log_level = args.log_level or os.environ.get("DRD_LOG_LEVEL")
    args.log_format = args.log_format or os.environ.get("DRD_LOG_FORMAT")
    setup_logging(args.log_level or "info", args.log_format or "text")
    for problem in unprotected:
        logging.getLogger("drd").warning("process hardening: %s", problem)
    try:
        failure = _dispatch(args)
    except DrdError as exc:
        print(f"drd: error: {exc}", file=sys.stderr)
        if args.command == "wal-fetch":  # as above: never "missing" by mistake
            return WalFetchFailed.exit_code
        return exc.exit_code
    except Exception:
        if args.command != "wal-fetch":
            raise
        logging.getLogger("drd").exception("wal-fetch failed")
        return WalFetchFailed.exit_code
    except KeyboardInterrupt:
        print("drd: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK if failure is None else failure.exit_code


def _dispatch(args: argparse.Namespace) -> Outcome:
    if args.command == "wal-fetch":
        wanted = 2 if args.socket else 3
        if len(args.files) != wanted:
            raise UsageError(
                "wal-fetch: give NAME PATH with --socket, PLAN/SOURCE NAME PATH without"
            )
    if args.command == "wal-fetch" and args.socket:
        # Before anything else is imported: this runs once per WAL file of a recovery.
        from drd.errors import WalNotFound
        from drd.pipeline.walclient import FETCH_MISSING, FETCH_OK, fetch_over_socket

        code = fetch_over_socket(args.socket, *args.files)
        return {FETCH_OK: None, FETCH_MISSING: WalNotFound}.get(code, WalFetchFailed)
    from drd.cli import commands

    if args.command == "keygen":
        return commands.keygen(quiet=args.quiet, as_json=args.json)
    if args.command == "token":
        return commands.token(args.name, args.role, as_json=args.json)
    if args.command == "validate":
        return commands.validate(_config_path(args, required=True), as_json=args.json)
    if args.command in ("completion", "manpage"):
        from drd.cli import generated

        text = (
            generated.completion(build_parser(), args.shell)
            if args.command == "completion"
            else generated.manpage(build_parser())
        )
        sys.stdout.write(text)
        return None
    if args.command == "status":
        from drd.cli import status_commands

        return asyncio.run(
            status_commands.status(
                _config_path(args, required=True),
                args.keys,
                token=args.token,
                offline=args.offline,
                as_json=args.json,
            )
        )
    if args.command == "drills":
        from drd.cli import status_commands

        return asyncio.run(
            status_commands.drills(
                _config_path(args, required=True),
                args.keys,
                action=args.drills_command,
                plan=getattr(args, "plan", None),
                drill_id=getattr(args, "drill_id", None),
                token=args.token,
                offline=args.offline,
                as_json=args.json,
            )
        )
    if args.command == "backup":
        return asyncio.run(
            commands.backup(
                _config_path(args, required=True),
                args.what,
                args.keys,
                as_json=args.json,
                progress_every=_progress_every(args),
            )
        )
    if args.command == "list":
        return asyncio.run(
            commands.list_backups(
                _config_path(args, required=not args.storage),
                args.plan,
                args.keys,
                args.storage,
                as_json=args.json,
            )
        )
    if args.command == "wal-fetch":
        from drd.cli import pitr_commands

        return asyncio.run(
            pitr_commands.wal_fetch(
                _config_path(args, required=not args.storage),
                args.files[0],
                args.files[1],
                args.files[2],
                args.keys,
                args.storage,
                system_id=args.system_id,
                segment_size=args.segment_size,
                expect=args.expect,
                region=args.region,
            )
        )
    if args.command == "wal-push":
        from drd.cli import pitr_commands

        return asyncio.run(
            pitr_commands.wal_push(
                _config_path(args, required=True), args.what, args.path, args.keys
            )
        )
    if args.command == "restore":
        return asyncio.run(
            commands.restore(
                _config_path(args, required=not args.storage),
                args.what,
                args.keys,
                args.storage,
                target=args.to,
                backup_id=args.backup,
                region=args.region,
                create_roles=args.create_roles,
                allow_older=args.allow_older,
                pitr={
                    "at": args.at,
                    "lsn": args.lsn,
                    "latest": args.latest,
                    "start": args.start,
                    "user": args.user,
                    "port": args.port,
                    "drd_command": args.drd_command,
                    "as_json": args.json,
                },
                progress_every=_progress_every(args),
            )
        )
    if args.command == "prune":
        return asyncio.run(
            commands.prune(
                _config_path(args, required=True),
                args.plan,
                dry_run=args.dry_run,
                as_json=args.json,
            )
        )
    if args.command == "doctor":
        return asyncio.run(commands.doctor(_config_path(args, required=True), as_json=args.json))
    if args.command == "check":
        return asyncio.run(
            commands.check(
                _config_path(args, required=True),
                args.plan,
                args.keys,
                read_data=args.read_data,
                repair_copies=not args.no_repair,
                as_json=args.json,
            )
        )
    if args.command == "restore-test":
        return asyncio.run(
            commands.restore_test(
                _config_path(args, required=True),
                args.what,
                args.keys,
                backup_id=args.backup,
                region=args.region,
                as_json=args.json,
                allow_older=args.allow_older,
                progress_every=_progress_every(args),
            )
        )
    if args.command == "drill":
        return asyncio.run(
            commands.drill(
                _config_path(args, required=True),
                args.plan,
                args.keys,
                lose_region=args.lose_region,
                as_json=args.json,
                html=args.html,
                progress_every=_progress_every(args),
            )
        )
    if args.command == "report":
        from drd.cli import report_command

        return asyncio.run(
            report_command.report(
                _config_path(args, required=True),
                args.plan,
                args.keys,
                since=args.since,
                out=args.out,
                as_json=args.json,
            )
        )
    if args.command == "audit":
        return asyncio.run(
            commands.audit_verify(
                _config_path(args, required=True), args.keys, chain=args.chain, as_json=args.json
            )
        )
    if args.command == "run":
        from drd.daemon.service import run_daemon

        # Returns (0) once a signal stopped it; what stops it otherwise is raised.
        run_daemon(
            _config_path(args, required=True), args.keys, log=(args.log_level, args.log_format)
        )
        return None
    raise UsageError(f"unknown command {args.command}")


def _progress_every(args: argparse.Namespace) -> float:
    from drd.durations import DurationError, parse_duration

    try:
        seconds = parse_duration(args.progress_every).total_seconds()
    except DurationError as exc:
        raise UsageError(f"--progress-every: {exc}") from None
    if seconds < 1:
        raise UsageError("--progress-every: at least 1s")
    return seconds


def _config_path(args: argparse.Namespace, *, required: bool) -> Path | None:
    explicit = args.config or os.environ.get("DRD_CONFIG")
    path = Path(explicit) if explicit else Path("drd.yaml")
    if path.is_file():
        return path
    if explicit or required:
        raise UsageError(f"config file {path} not found (use --config or DRD_CONFIG)")
    return None


if __name__ == "__main__":
    raise SystemExit(main())
