"""What `drd COMMAND --help` says beyond the options: a description, examples, and the exit
codes the command can end with. The codes and their meanings come from drd.errors (each error
class's exit_code and the first sentence of its docstring), so the help cannot drift from what
drd.cli.main returns."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from drd import errors
from drd.errors import EXIT_INTERRUPTED, EXIT_OK, DrdError


@dataclass(frozen=True)
class CommandHelp:
    description: str
    examples: tuple[str, ...]
    #: the error classes this command can end with (besides usage errors and interrupts)
    failures: tuple[type[DrdError], ...] = field(default_factory=tuple)


def first_sentence(cls: type[DrdError]) -> str:
    """The first sentence of an error class's docstring, on one line."""
    text = " ".join((cls.__doc__ or cls.__name__).split())
    match = re.match(r"(.+?\.)(\s|$)", text)
    return (match.group(1) if match else text).rstrip(".")


def exit_codes(failures: tuple[type[DrdError], ...]) -> list[tuple[int, str]]:
    """(code, meaning) for a command: success, its failures grouped by code, usage errors and
    interrupts, in code order."""
    by_code: dict[int, list[str]] = {EXIT_OK: ["success"]}
    classes: tuple[type[DrdError], ...] = (*failures, errors.UsageError)
    for cls in classes:
        meaning = first_sentence(cls)
        found = by_code.setdefault(cls.exit_code, [])
        if meaning not in found:
            found.append(meaning)
    by_code[EXIT_INTERRUPTED] = ["interrupted"]
    return [(code, "; ".join(by_code[code])) for code in sorted(by_code)]


def all_exit_codes() -> list[tuple[int, str]]:
    """Every exit code drd has, with the meaning of each error class that sets one (a subclass
    that inherits its parent's code, such as the kinds of StorageError, adds nothing)."""
    found: list[type[DrdError]] = []
    todo = [DrdError]
    while todo:
        cls = todo.pop(0)
        todo += sorted(cls.__subclasses__(), key=lambda c: c.__name__)
        if "exit_code" in vars(cls) and cls is not DrdError and not cls.__name__.startswith("_"):
            found.append(cls)
    codes = exit_codes(tuple(found))
    # What no error class says: a bug, or an error drd did not expect.
    return [(c, f"an unexpected error; {m}" if c == DrdError.exit_code else m) for c, m in codes]


def overview_epilog() -> str:
    """`drd --help`'s end: where to go next, and every exit code drd has."""
    lines = [
        "examples:",
        "  drd validate && drd doctor",
        "  drd status",
        "  drd COMMAND --help       (its examples and exit codes)",
        "",
        "exit codes:",
    ]
    lines += [f"  {code:>3}  {meaning}" for code, meaning in all_exit_codes()]
    return "\n".join(lines)


def epilog(help: CommandHelp) -> str:
    lines = ["examples:"]
    lines += [f"  {example}" for example in help.examples]
    lines += ["", "exit codes:"]
    lines += [f"  {code:>3}  {meaning}" for code, meaning in exit_codes(help.failures)]
    return "\n".join(lines)


_CONFIG = (errors.ConfigError,)
_KEYS = (errors.KeyringError,)
_STATE = (errors.StateError,)

COMMANDS: dict[str, CommandHelp] = {
    "keygen": CommandHelp(
        "Print a new key-encryption key (drdk1:<id>:<secret>). drd never stores keys: keep it "
        "in your secret store and deliver it at process start.",
        ("drd keygen --quiet > /run/secrets/drd-key", "drd keygen --json"),
    ),
    "validate": CommandHelp(
        "Check drd.yaml and every plan it names. Every problem is printed as "
        "file:line: field: message.",
        ("drd validate", "drd --config /etc/drd/drd.yaml validate --json"),
        _CONFIG,
    ),
    "token": CommandHelp(
        "Make an API bearer token. The token is printed for its holder; drd.yaml keeps only "
        "its SHA-256 (the entry to paste is printed to stderr).",
        ("drd token --name grafana --role viewer", "drd token --name alice --role coordinator"),
    ),
    "backup": CommandHelp(
        "Back up every source of PLAN, or one source, now, into every region of the plan.",
        ("drd backup billing", "drd backup billing/main-db --json"),
        (
            errors.PartialFailure,
            *_CONFIG,
            *_KEYS,
            errors.StorageError,
            errors.SourceError,
            errors.LockBusy,
            *_STATE,
        ),
    ),
    "list": CommandHelp(
        "List the backups, rebuilt from the regions alone (no local state needed), with each "
        "unusable copy and why, and the last restore test of each backup; for each physical "
        "PostgreSQL source, its recovery window (oldest base backup's end to newest archived "
        "WAL) and any gap.",
        (
            "drd list",
            "drd list billing/main-db --json",
            "drd list --storage ew1=gs://acme-drd-ew1/prod?credentials=env:GCS_SA_JSON "
            "--keys stdin",
        ),
        (*_CONFIG, errors.StorageError),
    ),
    "restore": CommandHelp(
        "Restore a backup into a new database (a DSN) or a new path; the target must not "
        "exist. The newest backup is used unless --backup names one; a region whose copy "
        "fails is skipped for the next.",
        (
            'drd restore billing/main-db --to "host=10.0.0.5 dbname=billing_restored"',
            "drd restore web/uploads --to /srv/restore/uploads --backup 20261128T134700Z-9f2c1a0b",
            "drd restore billing/pg --to /var/lib/postgresql/15/restored --at 2026-11-28T13:00Z",
        ),
        (
            *_CONFIG,
            *_KEYS,
            errors.IntegrityError,
            errors.StorageError,
            errors.RestoreError,
            errors.BackupNotFound,
            errors.TargetExists,
            errors.MissingRoles,
        ),
    ),
    "wal-push": CommandHelp(
        "PostgreSQL archive_command: store one WAL file in every region of the plan.",
        ("archive_command = 'drd --config /etc/drd/drd.yaml wal-push billing/pg %p'",),
        (*_CONFIG, *_KEYS, errors.StorageError),
    ),
    "wal-fetch": CommandHelp(
        "PostgreSQL restore_command: fetch one WAL file from any region that has it intact.",
        ("restore_command = 'drd --config /etc/drd/drd.yaml wal-fetch billing/pg %f %p'",),
        (errors.WalNotFound, errors.WalFetchFailed),
    ),
    "prune": CommandHelp(
        "Destroy expired backups in every region now, region by region, with the reason for "
        "each, and the archived WAL of physical PostgreSQL sources that is past max_age or "
        "before the oldest kept base backup. --dry-run changes nothing.",
        ("drd prune --dry-run", "drd prune billing --json"),
        (*_CONFIG, errors.StorageError),
    ),
    "doctor": CommandHelp(
        "Check every region: a write-read-delete probe (under _doctor/, which backups and "
        "retention never list), its deletion settings (soft delete, versioning, retention "
        "policy, holds) against each plan's max_age, and its storage class against the "
        "minimum storage duration (NEARLINE 30d, COLDLINE 90d, ARCHIVE 365d).",
        ("drd doctor", "drd doctor --json | jq '.regions[] | select(.usable | not)'"),
        (errors.DoctorFailed, *_CONFIG),
    ),
    "check": CommandHelp(
        "Check every copy of PLAN (or of every plan) now: manifests, sizes, rollbacks and "
        "other integrity findings; with --read-data every data object's digest. Repairs what "
        "can be repaired unless --no-repair.",
        ("drd check", "drd check billing --read-data --no-repair --json"),
        (*_CONFIG, *_KEYS, errors.IntegrityError, errors.StorageError),
    ),
    "restore-test": CommandHelp(
        "Restore the newest backup (or --backup) into a scratch environment, run the plan's "
        "checks and time every phase (RTO).",
        ("drd restore-test billing", "drd restore-test billing/main-db --region ew1 --json"),
        (
            errors.RestoreTestFailed,
            errors.PartialFailure,
            *_CONFIG,
            *_KEYS,
            errors.LockBusy,
            errors.BackupNotFound,
        ),
    ),
    "drill": CommandHelp(
        "Failover drill: restore every source of PLAN in plan order, run all checks, and "
        "measure the achieved RTO and RPO against the plan's targets.",
        ("drd drill billing", "drd drill billing --lose-region ew1 --json"),
        (errors.DrillFailed, *_CONFIG, *_KEYS),
    ),
    "report": CommandHelp(
        "The auditor's page: every restore test and drill of PLAN in the window (pass rate, RTO "
        "p50/p95 against the target, RPO over time, each run), from the reports stored in the "
        "plan's regions and the job history; HTML, or the figures as JSON.",
        (
            "drd report billing --since 90d --out billing-q3.html",
            "drd report billing --since 30d --json",
        ),
        (*_CONFIG, *_KEYS, errors.StorageError),
    ),
    "drills": CommandHelp(
        "Show failover drills: from the running daemon's API when it answers, else from the "
        "reports stored in the plans' regions (_drills/<plan>/<id>/).",
        ("drd drills list", "drd drills list --plan billing --json", "drd drills show ID"),
        (*_CONFIG, *_KEYS, errors.StorageError),
    ),
    "status": CommandHelp(
        "What drd is doing: jobs running, each source's last backup, restore test and drill, "
        "what is due next, and the regions' health. Asks the running daemon's API (api.listen "
        "in drd.yaml) when it answers, else reads the state directory and the regions; the "
        "first line says which.",
        ("drd status", "DRD_TOKEN=... drd status --json", "drd status --offline"),
        (*_CONFIG, *_STATE),
    ),
    "audit": CommandHelp(
        "The audit trail: `verify` checks the local file and every region's sealed copies "
        "against each other.",
        ("drd audit verify", "drd audit verify --chain db1-4f2a --json"),
        (errors.IntegrityError, *_CONFIG, *_KEYS),
    ),
    "completion": CommandHelp(
        "Print a shell completion script generated from this parser.",
        (
            "drd completion bash > /usr/share/bash-completion/completions/drd",
            "drd completion zsh > /usr/share/zsh/vendor-completions/_drd",
        ),
    ),
    "manpage": CommandHelp(
        "Print the drd(1) manual page (roff) generated from this parser.",
        ("drd manpage > /usr/share/man/man1/drd.1 && man drd",),
    ),
    "run": CommandHelp(
        "Run the daemon: backups on schedule, retention, restore tests, scrubbing, metrics and "
        "the HTTP API. Stops cleanly on SIGTERM/SIGINT; SIGHUP reloads the config.",
        ("drd run --config /etc/drd/drd.yaml --keys credential:drd-keys",),
        (*_CONFIG, *_KEYS, *_STATE),
    ),
}

#: `drd audit`'s and `drd drills`' own actions
ACTIONS: dict[str, CommandHelp] = {
    "audit verify": CommandHelp(
        "Check the local trail and its sealed copies in every region against each other; any "
        "gap, edit, reorder or truncation is reported.",
        ("drd audit verify", "drd audit verify --json"),
        (errors.IntegrityError, *_CONFIG, *_KEYS),
    ),
    "drills list": CommandHelp(
        "The newest drills, newest first (of one plan with --plan).",
        ("drd drills list", "drd drills list --plan billing --json"),
        (*_CONFIG, *_KEYS),
    ),
    "drills show": CommandHelp(
        "One drill's full report.",
        ("drd drills show 20261128T134700Z-9f2c1a0b", "drd drills show ID --json"),
        (*_CONFIG, *_KEYS),
    ),
}
