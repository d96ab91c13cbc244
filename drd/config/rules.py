"""The rules that relate sections, files, or today's date, and the warnings: schedule vs RPO,
plan regions vs the config's regions, restore tests vs their plan's sources (and the scratch
guard, drd.config.guard), unique source names, review age, secrets written where they must not
be. The loader runs every rule on every plan, whatever else failed, so that one run shows every
mistake; a rule reads the raw data (drd.config.raw) or a section that validated (None if it did
not).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from croniter import CroniterBadDateError, croniter

from drd.config.findings import FileReport, display_path
from drd.config.models import RestoreTest, Schedule, Targets
from drd.config.raw import as_list
from drd.config.yamlsource import Loc
from drd.durations import format_duration
from drd.fields import as_date
from drd.strategies import SourceOptions, get_strategy, registry

#: Plans must be reviewed at least annually; older reviews get a warning.
MAX_REVIEW_AGE = timedelta(days=366)


def check_review(report: FileReport, raw_reviewed_on: Any, today: date) -> None:
    reviewed_on = as_date(raw_reviewed_on)
    if reviewed_on is None:
        return
    if reviewed_on > today:
        report.error(("reviewed_on",), f"{reviewed_on} is in the future (today is {today})")
    elif today - reviewed_on > MAX_REVIEW_AGE:
        report.warning(
            ("reviewed_on",),
            f"last reviewed {(today - reviewed_on).days} days ago: plans must be reviewed at "
            "least annually",
        )


def check_wal_rpo(
    report: FileReport, raw_sources: Any, sources: list[SourceOptions], targets: Targets | None
) -> bool:
    """A postgres-physical source the daemon archives continuously (`archive: stream`) loses at
    most about `partial_every` of WAL, whatever the base backups' schedule: that must fit the
    RPO. True if every source of the plan is such a source (then the schedule need not)."""
    streamed = [
        s
        for s in sources
        if s.kind == "postgres-physical" and getattr(s, "archive", "") == "stream"
    ]
    if targets is not None:
        names = [e.get("name") if isinstance(e, dict) else None for e in as_list(raw_sources)]
        for source in streamed:
            every: timedelta = getattr(source, "partial_every")  # noqa: B009
            if every >= targets.rpo and source.name in names:
                report.error(
                    ("sources", names.index(source.name), "partial_every"),
                    f"cannot meet the RPO target: the segment being written is archived every "
                    f"{format_duration(every)}, but rpo is {format_duration(targets.rpo)}",
                )
    return bool(sources) and len(streamed) == len(sources)


def check_slot_names(report: FileReport, plan: Any, taken: dict[tuple[str, ...], str]) -> None:
    """Two continuously archived sources of one server must not share a replication slot:
    their receivers would take it from each other. `taken`: (slot, host, port) -> the
    source that has it, over the plans loaded so far."""
    from psycopg.conninfo import conninfo_to_dict

    from drd.strategies.postgres_physical import default_slot_name

    for index, source in enumerate(plan.sources):
        if source.kind != "postgres-physical" or getattr(source, "archive", "") != "stream":
            continue
        slot = getattr(source, "slot", None) or default_slot_name(plan.name, source.name)
        try:
            params = conninfo_to_dict(getattr(source, "dsn", ""))
        except Exception:  # not a DSN: reported where it is used; compare by the slot alone
            params = {}
        host = str(params.get("host") or params.get("hostaddr") or "")
        key = (slot, host, str(params.get("port") or "5432"))
        owner = f"{plan.name}/{source.name}"
        if key in taken and taken[key] != owner:
            report.error(
                ("sources", index, "slot"),
                f"replication slot {slot} on {host or 'the default host'}:{key[2]} is also "
                f"{taken[key]}'s: give one of them its own `slot`",
            )
        taken.setdefault(key, owner)


def check_schedule(
    report: FileReport,
    schedule: Schedule | None,
    targets: Targets | None,
    today: date,
    *,
    continuous: bool = False,
) -> None:
    """The schedule must meet the RPO, unless every source is archived continuously
    (check_wal_rpo); a cron expression must fire."""
    if schedule is None or targets is None:
        return
    rpo = targets.rpo
    if continuous:
        # Base backups only bound how much WAL a restore replays: any period will do.
        rpo = timedelta(days=366)
    if schedule.every is not None:
        if schedule.every > rpo:
            report.error(
                ("schedule", "every"),
                f"schedule cannot meet the RPO target: backups every "
                f"{format_duration(schedule.every)}, but rpo is {format_duration(rpo)}",
            )
    elif schedule.cron is not None:
        start = datetime.combine(today, time())
        try:
            gap = _cron_gap_over(schedule.cron, rpo, start)
        except CroniterBadDateError:
            report.error(("schedule", "cron"), "the cron expression never fires")
            return
        if gap is not None:
            report.error(
                ("schedule", "cron"),
                f"schedule cannot meet the RPO target: backups up to {format_duration(gap)} "
                f"apart, but rpo is {format_duration(rpo)}",
            )


def _cron_gap_over(expression: str, limit: timedelta, start: datetime) -> timedelta | None:
    """A gap between consecutive firings of `expression` longer than `limit` in the year after
    `start`, if there is one. Gaps are checked one by one for the first 1000 steps (of up to
    `limit` each); over the whole year, gaps longer than `limit` + 1 day are found as well."""
    firings = croniter(expression, start)
    horizon = start + timedelta(days=366)
    fired: datetime = firings.get_next(datetime)
    for _ in range(1000):
        if fired >= horizon:
            break
        following: datetime = firings.get_next(datetime)
        if following - fired > limit:
            return following - fired
        # Skip to the last firing within `limit` after this one: every gap in between is
        # shorter than `limit`, so only the gap after that firing is left to check.
        firings.set_current(fired + limit, force=True)
        fired = max(following, firings.get_prev(datetime))
        firings.set_current(fired, force=True)
    day = start
    while day < horizon:  # seasonal gaps: "0 */4 * 1-6 *" stops firing in July
        firings.set_current(day, force=True)
        following = firings.get_next(datetime)
        if following - day > limit:
            firings.set_current(day, force=True)
            return following - firings.get_prev(datetime)
        day += timedelta(days=1)
    return None


def check_plan_regions(
    report: FileReport, raw_regions: Any, known: set[str], config_path: Path
) -> None:
    """Every region a plan names is defined in the daemon config (checked on the raw list, so
    that it is reported even when another storage rule failed)."""
    for index, region in enumerate(as_list(raw_regions)):
        if isinstance(region, str) and region not in known:
            defined = ", ".join(sorted(known)) or "none"
            report.error(
                ("storage", "regions", index),
                f"unknown region {region!r} ({display_path(config_path)} defines: {defined})",
            )


def check_restore_test(
    report: FileReport, restore_test: RestoreTest | None, targets: Targets | None
) -> None:
    if restore_test is None or targets is None or restore_test.timeout <= targets.rto:
        return
    report.warning(
        ("restore_test", "timeout"),
        f"restore tests may take up to {format_duration(restore_test.timeout)}, longer than "
        f"the rto {format_duration(targets.rto)}: a restore that slow already misses the RTO",
    )


def check_restore_test_sources(
    report: FileReport,
    restore_test: RestoreTest | None,
    sources: list[SourceOptions],
) -> None:
    """The restore_test entries that name sources or kinds: they must exist, fit the source's
    kind, and a scratch environment must never be the source itself (drd.config.guard). Its
    scratch directories are absolute already (the loader made them so)."""
    from drd.config.guard import refusal

    if restore_test is None:
        return
    by_name = {source.name: source for source in sources}
    for key, spec in restore_test.scratch.items():
        loc: Loc = ("restore_test", "scratch", key)
        if key not in by_name and key not in (kinds := kinds_with_scratch()):
            report.error(
                loc,
                f"neither a source of this plan ({', '.join(by_name) or 'none'}) nor a source "
                f"kind ({', '.join(kinds)})",
                key=True,
            )
        if spec.dsn is not None and _has_inline_password(spec.dsn):
            report.warning(
                (*loc, "dsn"),
                "the DSN contains a password: put the password in PGPASSWORD/.pgpass, not the plan",
            )
    for source in sources:
        key = source.name if source.name in restore_test.scratch else source.kind
        loc = ("restore_test", "scratch", key)
        strategy = get_strategy(source.kind)
        if key not in restore_test.scratch:
            if strategy.default_scratch is None:
                # A plan whose restore tests cannot run is not a plan that proves anything.
                example = strategy.scratch_example or "{kind: ...}"
                report.error(
                    ("restore_test", "scratch"),
                    f"source {source.name} (kind {source.kind}) has no scratch environment, so "
                    f"its restore tests cannot run: give one ({example})",
                    missing=True,
                )
            continue  # the default always fits
        spec = restore_test.scratch[key]
        fitting = strategy.scratch_kinds
        if spec.kind not in fitting:
            report.error(
                (*loc, "kind"),
                f"{spec.kind} cannot hold source {source.name} (kind {source.kind}; use "
                f"{' or '.join(fitting) or 'none'})",
            )
            continue
        refused = refusal(spec, source)
        if refused is not None:
            report.error((*loc, refused[0]), refused[1])
    if restore_test.pitr_probe is not None and not any(
        source.kind == "postgres-physical" and getattr(source, "archive", "") == "stream"
        for source in sources
    ):
        report.warning(
            ("restore_test", "pitr_probe"),
            "no postgres-physical source of this plan is archived by the daemon (archive: "
            "stream): no probe will be recorded, and restore tests restore base backups only",
        )
    if isinstance(restore_test.content, dict):
        kinds = sorted({source.kind for source in sources})
        for key in restore_test.content:
            if key not in by_name and key not in kinds:
                report.error(
                    ("restore_test", "content", key),
                    f"neither a source of this plan ({', '.join(by_name) or 'none'}) nor the "
                    f"kind of one ({', '.join(kinds) or 'none'})",
                    key=True,
                )
    for name, checks in restore_test.checks.items():
        checked = by_name.get(name)
        if checked is None:
            report.error(
                ("restore_test", "checks", name),
                f"not a source of this plan ({', '.join(by_name) or 'none'})",
                key=True,
            )
            continue
        seen: dict[str, int] = {}
        for index, check in enumerate(checks):
            loc = ("restore_test", "checks", name, index)
            fitting = get_strategy(checked.kind).check_kinds
            if check.kind not in fitting:
                report.error(
                    (*loc, check.kind),
                    f"{check.kind} checks do not apply to source {name} (kind {checked.kind}; "
                    f"use {', '.join(fitting)})",
                )
            label = check.display_name(index + 1)
            if label in seen:
                report.error(
                    (*loc, "name"), f"duplicate check name {label!r} (also [{seen[label]}])"
                )
            seen.setdefault(label, index)


def kinds_with_scratch() -> list[str]:
    """The source kinds a restore_test.scratch entry may be keyed by: those whose strategy
    names scratch environment kinds."""
    return sorted(kind for kind, strategy in registry().items() if strategy.scratch_kinds)


def check_source_names(report: FileReport, raw_sources: Any) -> None:
    seen: dict[str, int] = {}
    for index, entry in enumerate(as_list(raw_sources)):
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str):
            continue
        if name in seen:
            report.error(
                ("sources", index, "name"), f"duplicate source name (also sources[{seen[name]}])"
            )
        else:
            seen[name] = index


def check_dsn_passwords(report: FileReport, raw_sources: Any) -> None:
    for index, entry in enumerate(as_list(raw_sources)):
        if not isinstance(entry, dict):
            continue
        for key, value in entry.items():
            if isinstance(value, str) and _has_inline_password(value):
                report.warning(
                    ("sources", index, key),
                    "the DSN contains a password: put the password in PGPASSWORD/.pgpass or a "
                    "credential, not the plan",
                )


_KEYWORD_PASSWORD = re.compile(r"(^|\s)password\s*=", re.IGNORECASE)


def _has_inline_password(value: str) -> bool:
    """A URL with a password (scheme://user:secret@host) or a libpq `password=...` string."""
    if _KEYWORD_PASSWORD.search(value):
        return True
    if "://" not in value:
        return False
    try:
        return bool(urlsplit(value).password)
    except ValueError:
        return False


_KEY_MATERIAL = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY|AGE-SECRET-KEY-")


def check_secret_values(report: FileReport, data: Any, loc: Loc = ()) -> None:
    """No value anywhere may be key material (a PEM private key, an age identity, ...)."""
    for item_loc, value in _walk(data, loc):
        if isinstance(value, str) and _KEY_MATERIAL.search(value):
            report.error(item_loc, "looks like key material: never put keys in config files")


def _walk(data: Any, loc: Loc) -> Iterator[tuple[Loc, Any]]:
    yield loc, data
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _walk(value, (*loc, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from _walk(value, (*loc, index))
