"""`drd status` and `drd drills`: what the daemon is doing and has done.

Both ask the running daemon's API first (drd.cli.daemon_api) and, when it does not answer (or
with --offline), read what they can themselves: the job history in the state directory (opened
read-only, drd.daemon.history.HistoryReader), the regions (health, stored drill reports). The
output says which source it used. The JSON shape is the same either way (docs/cli.md).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Mapping
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from drd.cli.commands import Outcome, find_plan
from drd.cli.daemon_api import ApiUnavailable, DaemonApi, api_url, read_token
from drd.cli.output import print_json
from drd.config.loader import load_config
from drd.config.models import Config
from drd.crypto import Keyring
from drd.daemon.history import JobRecord
from drd.durations import format_elapsed, format_size
from drd.errors import DrdError, UsageError
from drd.layout import backup_id_time
from drd.repository.catalog import CatalogEntry
from drd.runtime import keyring_for, open_regions

_REGION_TIMEOUT = 10.0
RESTORE_TEST_KIND = "restore-test"


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def _parse(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


# -- drd status ------------------------------------------------------------------------------


def _one_stdin(*sources: str | None) -> None:
    if sources.count("stdin") > 1:
        raise UsageError("--keys stdin and --token stdin: standard input delivers only one")


async def status(
    config_path: Path | None,
    keys: str | None,
    *,
    token: str | None,
    offline: bool,
    as_json: bool,
) -> Outcome:
    assert config_path is not None
    _one_stdin(keys, token)
    cfg = load_config(config_path)
    url = api_url(cfg)
    data: dict[str, Any] | None = None
    why_not = "--offline" if offline else "api.listen has port 0: its address is not known"
    if not offline and url is not None:
        try:
            data = await _status_from_api(cfg, DaemonApi(url, read_token(token)))
            data["api_error"] = None
        except ApiUnavailable as exc:
            why_not = str(exc)
    if data is None:
        data = await _status_from_state(cfg, keys)
        data["api_error"] = why_not
    data["api_url"] = url
    if as_json:
        print_json(data)
    else:
        print("\n".join(format_status(data)))
    return None


async def _status_from_api(cfg: Config, api: DaemonApi) -> dict[str, Any]:
    _, body = await api.get("/api/v1/status")
    if not isinstance(body, dict):
        raise ApiUnavailable(f"{api.url}/api/v1/status answered without a JSON object")
    notes: list[str] = []
    try:
        _, ready = await api.get("/readyz", allow=(503,))
        regions = dict((ready or {}).get("checks", {}).get("regions", {}))
    except ApiUnavailable as exc:
        regions, ready = {}, None
        notes.append(f"regions: {exc}")
    drills: dict[str, Any] = {}
    try:
        _, listed = await api.get("/api/v1/drills")
        for drill in (listed or {}).get("drills", []):
            drills.setdefault(drill.get("plan"), drill)  # newest first
    except ApiUnavailable as exc:
        notes.append(f"drills: {exc}")
    plans: dict[str, Any] = {}
    flagged: list[dict[str, Any]] = []
    for plan_name, plan in sorted((body.get("plans") or {}).items()):
        sources = {}
        for name, src in sorted((plan.get("sources") or {}).items()):
            what = f"{plan_name}/{name}"
            job, last = src.get("last_job") or {}, src.get("last_backup") or {}
            test, schedule = src.get("last_restore_test") or {}, src.get("restore_test") or {}
            sources[name] = {
                "kind": src.get("kind"),
                "backup": {
                    "running": bool(src.get("running")),
                    "last_result": job.get("status"),
                    "last_finished_at": job.get("finished_at"),
                    "last_error": job.get("error"),
                    "backup_id": last.get("backup_id"),
                    "captured_at": last.get("captured_at"),
                    "stored_bytes": last.get("stored_bytes"),
                    "next_due": src.get("next_due"),
                },
                "restore_test": {
                    "running": bool(schedule.get("running")),
                    "last_result": test.get("result"),
                    "tested_at": test.get("tested_at"),
                    "rto_seconds": test.get("rto_seconds"),
                    "next_due": schedule.get("next_due"),
                },
            }
            # A job waiting for one of the daemon's job slots is running but not tracked yet.
            if src.get("running"):
                flagged.append({"kind": "backup", "what": what, "started_at": None})
            if schedule.get("running"):
                flagged.append({"kind": RESTORE_TEST_KIND, "what": what, "started_at": None})
        plans[plan_name] = {"sources": sources, "last_drill": drills.get(plan_name)}
    for drill in drills.values():
        if drill.get("status") == "running":
            flagged.append({"kind": "drill", "what": drill["plan"], "started_at": None})
    running = _running_jobs(body.get("jobs"))
    seen = {(job["kind"], job["what"]) for job in running}
    running += [job for job in flagged if (job["kind"], job["what"]) not in seen]
    return {
        "from": "api",
        "now": body.get("now"),
        "running": running,
        "plans": plans,
        "regions": regions,
        "ready": None if ready is None else ready.get("status") == "ready",
        "notes": notes,
    }


def _running_jobs(jobs: Any) -> list[dict[str, Any]]:
    """The daemon's live jobs (GET /api/v1/status `jobs`), each as `running` lists it, with
    what the daemon says of it (phase, bytes, total, started_at, ...)."""
    running = []
    for job in jobs if isinstance(jobs, list) else []:
        if not isinstance(job, dict):
            continue
        plan, source = job.get("plan"), job.get("source")
        what = f"{plan}/{source}" if source else str(plan)
        running.append({**job, "kind": job.get("kind"), "what": what})
    return running


async def _status_from_state(cfg: Config, keys: str | None) -> dict[str, Any]:
    from drd.daemon.history import HistoryReader
    from drd.daemon.schedule import Schedule, next_due
    from drd.daemon.service import plan_schedule

    now = datetime.now(UTC)
    notes: list[str] = []
    path = cfg.state_dir / "history.sqlite3"
    reader: HistoryReader | None = None
    try:
        reader = HistoryReader(path)
    except DrdError as exc:
        notes.append(f"job history: {exc}")

    def last(kind: str, plan: str, source: str, result: str | None = None) -> JobRecord | None:
        return None if reader is None else reader.last(kind, plan, source, result)

    # The regions know the newest backup even when no daemon ever ran (`drd backup`).
    regions, drills, newest = await _from_regions(cfg, keys, notes)
    plans: dict[str, Any] = {}
    try:
        for plan in cfg.plans:
            sources = {}
            for src in plan.sources:
                ref = f"{plan.name}/{src.name}"
                job = last("backup", plan.name, src.name)
                good = last("backup", plan.name, src.name, "success")
                captured = backup_id_time(good.backup_id) if good and good.backup_id else None
                stored: int | None = None
                listed = newest.get(ref)
                if listed is not None and (captured is None or listed.captured >= captured):
                    good_id: str | None = listed.backup_id
                    captured = listed.captured
                    body = listed.manifest.body if listed.manifest else None
                    stored = body.ciphertext_size if body else None
                else:
                    good_id = good.backup_id if good else None
                test = last(RESTORE_TEST_KIND, plan.name, src.name)
                tested = None if test is None else datetime.fromtimestamp(test.started_at, UTC)
                sources[src.name] = {
                    "kind": src.kind,
                    "backup": {
                        "running": False,
                        "last_result": job.result if job else None,
                        "last_finished_at": _iso(job.finished_at) if job else None,
                        "last_error": job.detail if job and job.result != "success" else None,
                        "backup_id": good_id,
                        "captured_at": captured.isoformat() if captured else None,
                        "stored_bytes": stored,
                        "next_due": next_due(
                            plan_schedule(plan),
                            last_capture=captured,
                            now=now,
                            rpo=plan.targets.rpo,
                            seed=ref,
                        ).isoformat(),
                    },
                    "restore_test": {
                        "running": False,
                        "last_result": _test_result(test),
                        "tested_at": _iso(test.finished_at) if test else None,
                        "rto_seconds": _rto(test.detail) if test else None,
                        "next_due": next_due(
                            Schedule(every=plan.restore_test.every),
                            last_capture=tested,
                            now=now,
                            seed=f"{RESTORE_TEST_KIND}:{ref}",
                        ).isoformat(),
                    },
                }
            plans[plan.name] = {"sources": sources, "last_drill": None}
        running = []
        for record in reader.unfinished() if reader else []:
            what = record.plan if record.kind == "drill" else f"{record.plan}/{record.source}"
            running.append(
                {"kind": record.kind, "what": what, "started_at": _iso(record.started_at)}
            )
            entry = plans.get(record.plan, {}).get("sources", {}).get(record.source)
            if entry is not None and record.kind in ("backup", RESTORE_TEST_KIND):
                entry["backup" if record.kind == "backup" else "restore_test"]["running"] = True
        if running:
            notes.append(
                "running jobs are read from the job history: a job whose daemon died is listed "
                "until the daemon starts again"
            )
    finally:
        if reader is not None:
            reader.close()
    for plan_name, drill in drills.items():
        plans[plan_name]["last_drill"] = drill
    return {
        "from": "state",
        "now": now.isoformat(),
        "running": running,
        "plans": plans,
        "regions": regions,
        "ready": None,
        "notes": notes,
    }


def _test_result(record: JobRecord | None) -> str | None:
    if record is None or record.result is None:
        return None
    return {"success": "passed", "failure": "failed"}.get(record.result, record.result)


def _rto(detail: str | None) -> float | None:
    try:
        data = json.loads(detail or "")
    except ValueError:
        return None
    reports = data.get("reports") if isinstance(data, dict) else None
    for report in reports if isinstance(reports, list) else []:
        if isinstance(report, dict) and isinstance(report.get("rto_seconds"), int | float):
            return float(report["rto_seconds"])
    return None


async def _from_regions(
    cfg: Config, keys: str | None, notes: list[str]
) -> tuple[dict[str, str], dict[str, Any], dict[str, CatalogEntry]]:
    """Each region's health, each plan's newest drill, each source's newest complete backup."""
    from drd.daemon.drill_loop import summary
    from drd.repository.catalog import build_catalog
    from drd.verify.drill import read_stored_report, stored_drill_ids

    async def health(storage: Any) -> str:
        try:
            await asyncio.wait_for(storage.check(), _REGION_TIMEOUT)
        except (DrdError, TimeoutError) as exc:
            return str(exc) or f"no answer within {format_elapsed(_REGION_TIMEOUT)}"
        return "ok"

    drills: dict[str, Any] = {}
    newest: dict[str, CatalogEntry] = {}
    async with AsyncExitStack() as stack:
        storages = {s.name: s for s in await open_regions(stack, cfg, [])}
        names = list(storages)
        results = await asyncio.gather(*(health(storages[n]) for n in names))
        regions = dict(zip(names, results, strict=True))
        keyring: Keyring | None = None
        try:
            keyring = keyring_for(cfg, keys)
        except DrdError as exc:
            notes.append(f"drills and backup sizes: not read ({exc})")
        reachable = [storages[n] for n in names if regions[n] == "ok"]
        catalog = await build_catalog(reachable, keyring)
        for entry in catalog.entries:
            if entry.complete_regions:
                newest[str(entry.ref)] = entry  # entries come oldest first
        if keyring is None:
            return regions, drills, newest
        for plan in cfg.plans:
            ids = await stored_drill_ids(plan, storages)
            found = await read_stored_report(plan, storages, keyring, ids[-1]) if ids else None
            if found is not None:
                drills[plan.name] = summary(found)
    return regions, drills, newest


def _ago(text: Any, now: datetime) -> str:
    when = _parse(text)
    return "?" if when is None else f"{format_elapsed(now - when)} ago"


def _in(text: Any, now: datetime) -> str:
    when = _parse(text)
    if when is None:
        return "?"
    return "now" if when <= now else f"in {format_elapsed(when - now)}"


def format_status(data: Mapping[str, Any]) -> list[str]:
    now = _parse(data.get("now")) or datetime.now(UTC)
    if data["from"] == "api":
        lines = [f"from the daemon's API at {data['api_url']}"]
    else:
        lines = [
            "from the state directory and the regions (the daemon's API was not asked or did "
            f"not answer: {data.get('api_error')})"
        ]
    running = data.get("running") or []
    jobs = [
        f"{j['kind']} {j['what']}"
        + (f" (for {format_elapsed(now - s)})" if (s := _parse(j.get("started_at"))) else "")
        for j in running
    ]
    lines.append("running: " + (", ".join(jobs) if jobs else "nothing"))
    for plan_name, plan in data["plans"].items():
        lines.append(f"plan {plan_name}:")
        for name, src in plan["sources"].items():
            b, t = src["backup"], src["restore_test"]
            text = f"  {plan_name}/{name} ({src['kind']}): backup "
            if b["running"]:
                text += "RUNNING; "
            if b["last_result"] is None:
                text += "no job recorded"
            else:
                text += f"{b['last_result']} {_ago(b['last_finished_at'], now)}"
                if b["last_result"] != "success" and b["last_error"]:
                    text += f" ({b['last_error']})"
            if b["backup_id"]:
                size = (
                    f", {format_size(b['stored_bytes'])} stored"
                    if isinstance(b["stored_bytes"], int)
                    else ""
                )
                text += f"; newest {b['backup_id']} (captured {_ago(b['captured_at'], now)}{size})"
            text += f"; next backup {_in(b['next_due'], now)}"
            lines.append(text)
            test = "    restore test " + ("RUNNING; " if t["running"] else "")
            if t["last_result"] is None:
                test += "no test recorded"
            else:
                test += f"{t['last_result']} {_ago(t['tested_at'], now)}"
                if isinstance(t["rto_seconds"], int | float):
                    test += f" (RTO {format_elapsed(t['rto_seconds'])})"
            test += f"; next {_in(t['next_due'], now)}"
            lines.append(test)
        drill = plan.get("last_drill")
        if drill:
            lines.append(f"  last drill: {drill_line(drill, now)}")
        else:
            lines.append("  last drill: none found")
    regions = data.get("regions") or {}
    lines.append(
        "regions: "
        + (
            "; ".join(f"{n} ok" if p == "ok" else f"{n} UNHEALTHY: {p}" for n, p in regions.items())
            or "unknown"
        )
    )
    lines += [f"note: {note}" for note in data.get("notes") or []]
    return lines


def _seconds(value: Any) -> str:
    return format_elapsed(value) if isinstance(value, int | float) else "-"


def drill_line(drill: Mapping[str, Any], now: datetime) -> str:
    text = (
        f"{drill.get('id')} {drill.get('plan')} {str(drill.get('status')).upper()} "
        f"started {_ago(drill.get('started_at'), now)}, RTO {_seconds(drill.get('rto_seconds'))}"
        f"{'' if drill.get('rto_ok') else ' (MISSED)'}, RPO {_seconds(drill.get('rpo_seconds'))}"
        f"{'' if drill.get('rpo_ok') else ' (MISSED)'}"
    )
    if drill.get("lose_region"):
        text += f", lost region {drill['lose_region']}"
    reasons = drill.get("reasons") or []
    if reasons:
        text += ": " + ", ".join(
            str(r.get("code")) if isinstance(r, dict) else str(r) for r in reasons
        )
    return text


# -- drd drills ------------------------------------------------------------------------------


async def drills(
    config_path: Path | None,
    keys: str | None,
    *,
    action: str,
    plan: str | None,
    drill_id: str | None,
    token: str | None,
    offline: bool,
    as_json: bool,
) -> Outcome:
    from drd.verify.drill import is_drill_id

    assert config_path is not None
    _one_stdin(keys, token)
    cfg = load_config(config_path)
    if plan is not None:
        find_plan(cfg, plan)
    if drill_id is not None and not is_drill_id(drill_id):
        raise UsageError(
            f"drills show: {drill_id!r} is not a drill id (e.g. 20261128T134700Z-9f2c1a0b)"
        )
    url = api_url(cfg)
    found: Any = None
    source, why_not = "api", "--offline" if offline else "api.listen has port 0"
    if not offline and url is not None:
        api = DaemonApi(url, read_token(token))
        try:
            if action == "list":
                _, body = await api.get("/api/v1/drills" + (f"?plan={quote(plan)}" if plan else ""))
                found = list((body or {}).get("drills", []))
            else:
                code, body = await api.get(f"/api/v1/drills/{drill_id}", allow=(404,))
                found = body if code == 200 else None
        except ApiUnavailable as exc:
            why_not = str(exc)
            source = "stored"
    else:
        source = "stored"
    if source == "stored":
        found = await _stored_drills(cfg, keys, action, plan, drill_id)
    if action == "show" and found is None:
        raise UsageError(f"drills show: no drill {drill_id} (looked in: {_where(source, url)})")
    if as_json:
        print_json({"from": source, "drills": found} if action == "list" else found)
        return None
    origin = (
        f"from the daemon's API at {url}"
        if source == "api"
        else f"from the reports stored in the regions ({why_not})"
    )
    print(origin, file=sys.stderr)
    now = datetime.now(UTC)
    if action == "list":
        if not found:
            print("no drills")
        for drill in found:
            print(drill_line(drill, now))
    else:
        print("\n".join(format_drill(found, now)))
    return None


def _where(source: str, url: str | None) -> str:
    return f"the daemon at {url}" if source == "api" else "every plan's regions"


async def _stored_drills(
    cfg: Config, keys: str | None, action: str, plan: str | None, drill_id: str | None
) -> Any:
    from drd.daemon.drill_loop import summary
    from drd.verify.drill import read_stored_report, stored_drill_ids

    keyring = keyring_for(cfg, keys)
    plans = [find_plan(cfg, plan)] if plan else list(cfg.plans)
    async with AsyncExitStack() as stack:
        storages = {s.name: s for s in await open_regions(stack, cfg, [])}
        if action == "show":
            assert drill_id is not None
            for p in plans:
                report = await read_stored_report(p, storages, keyring, drill_id)
                if report is not None:
                    return report
            return None
        out = []
        for p in plans:
            for found_id in (await stored_drill_ids(p, storages))[-20:]:
                report = await read_stored_report(p, storages, keyring, found_id)
                if report is not None:
                    out.append(summary(report))
    return sorted(out, key=lambda d: str(d.get("started_at")), reverse=True)


def format_drill(report: Mapping[str, Any], now: datetime) -> list[str]:
    lines = [drill_line(report, now)]
    lines.append(
        f"  targets: RTO {_seconds(report.get('rto_target_seconds'))}, "
        f"RPO {_seconds(report.get('rpo_target_seconds'))}; regions read: "
        f"{', '.join(report.get('regions_read') or []) or '-'}"
    )
    for reason in report.get("reasons") or []:
        if isinstance(reason, dict):
            where = f"{reason['source']}: " if reason.get("source") else ""
            lines.append(f"  failed: {reason.get('code')}: {where}{reason.get('message')}")
    for src in report.get("sources") or []:
        lines.append(
            f"  {src.get('source')} ({src.get('kind')}): {src.get('result')}, backup "
            f"{src.get('backup_id') or '-'} from region {src.get('region') or '-'}, ready after "
            f"{_seconds(src.get('ready_after_seconds'))}, RPO {_seconds(src.get('rpo_seconds'))}"
        )
    return lines
