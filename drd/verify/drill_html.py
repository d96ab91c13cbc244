"""A failover drill's one-page HTML report: the DR coordinator's evidence.

Rendered from the report's JSON (DrillReport.as_json, or a stored report read back), so the
CLI (`drd drill --html FILE`) and the API (`GET /api/v1/drills/{id}/report.html`) show the same
page for a drill that just ran and for one stored years ago. Stored reports of older drd
versions may lack fields or name them differently: every field is read through the accessors
below, and what is missing is shown as such rather than failing the page.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from drd.verify.html_page import (
    Bar,
    Html,
    esc,
    join,
    page,
    seconds_text,
    status_badge,
    table,
    tag,
    timeline_svg,
    verdict,
)

#: drawn back to back, in the order a restore test runs them (drd.verify.restore_run)
_BEFORE_READY = ("scratch_setup", "fetch", "decrypt_decompress", "restore", "checks")


def drill_id(data: Mapping[str, Any]) -> str:
    return str(data.get("id") or data.get("drill_id") or "?")


def seconds(data: Mapping[str, Any], name: str) -> float | None:
    """`<name>_seconds`, else `<name>_ms` / 1000, else None (absent or not a number)."""
    value = data.get(f"{name}_seconds")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    ms = data.get(f"{name}_ms")
    if isinstance(ms, int | float) and not isinstance(ms, bool):
        return ms / 1000
    return None


def within(achieved: float | None, target: float | None) -> bool | None:
    if achieved is None or target is None:
        return None
    return achieved <= target


def _list(data: Mapping[str, Any], name: str) -> list[Any]:
    value = data.get(name)
    return list(value) if isinstance(value, list) else []


def _dict(data: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name)
    return dict(value) if isinstance(value, dict) else {}


def _names(values: Sequence[Any]) -> str:
    return ", ".join(str(v) for v in values) or "-"


def source_bars(sources: Sequence[Mapping[str, Any]]) -> list[Bar]:
    """Each source's phases in drill time. A source that got ready ends its checks at its
    `ready_after`; one that did not starts where the previous one ended."""
    bars: list[Bar] = []
    cursor = 0.0
    for s in sources:
        phases = {k: float(v) for k, v in _dict(s, "phases").items() if isinstance(v, int | float)}
        before = sum(phases.get(p, 0.0) for p in _BEFORE_READY)
        ready = seconds(s, "ready_after")
        start = max(0.0, ready - before) if ready is not None else cursor
        segments: list[tuple[str, float, float]] = []
        at = start
        for phase in (*_BEFORE_READY, "teardown"):
            length = phases.get(phase, 0.0)
            if length > 0:
                segments.append((phase, at, length))
                at += length
        cursor = max(cursor, at)
        bars.append(Bar(str(s.get("source", "?")), segments, ready))
    return bars


def _objectives(data: Mapping[str, Any]) -> Html:
    rto, rpo = seconds(data, "rto"), seconds(data, "rpo")
    rto_target, rpo_target = seconds(data, "rto_target"), seconds(data, "rpo_target")
    rows = [
        [
            "RTO (drill start to the last check passing)",
            seconds_text(rto),
            seconds_text(rto_target),
            verdict(within(rto, rto_target)),
        ],
        [
            "RPO (age of the oldest data restored, at the drill's start)",
            seconds_text(rpo),
            seconds_text(rpo_target),
            verdict(within(rpo, rpo_target)),
        ],
    ]
    return table(["objective", "achieved", "plan's target", ""], rows, numeric=(1, 2))


def _regions(data: Mapping[str, Any]) -> Html:
    plan_regions = [str(r) for r in _list(data, "plan_regions") or _list(data, "regions_read")]
    lost = data.get("lose_region")
    read = {str(r) for r in _list(data, "regions_read")}
    data_from = {str(r) for r in _list(data, "data_read_from")}
    stored = {str(r) for r in _list(data, "stored_in")}
    rows = []
    for region in plan_regions:
        if region == lost:
            role = tag("span", "LOST (simulated): not listed, not read, not written", class_="bad")
        elif region in data_from:
            role = esc("listed; backups restored from it")
        elif region in read:
            role = esc("listed; no data needed from it")
        else:
            role = esc("not read")
        rows.append([region, role, "yes" if region in stored else "no"])
    return table(["region", "used in this drill", "report stored there"], rows)


def _sources(sources: Sequence[Mapping[str, Any]]) -> Html:
    rows = [
        [
            s.get("source", "?"),
            s.get("kind", "?"),
            status_badge(str(s.get("result", "?"))),
            s.get("backup_id") or "-",
            s.get("region") or "-",
            seconds_text(seconds(s, "rpo")),
            seconds_text(seconds(s, "ready_after")),
            seconds_text(seconds(s, "restore_rto")),
        ]
        for s in sources
    ]
    headers = ["source", "kind", "result", "backup", "region", "RPO", "ready after", "restore RTO"]
    return table(headers, rows, numeric=(5, 6, 7))


def _check_result(check: Mapping[str, Any]) -> Html:
    status = check.get("status")
    if status == "passed":
        return tag("span", "passed", class_="ok")
    if status == "failed":
        return tag("span", "FAILED" if check.get("critical", True) else "WARNING", class_="bad")
    return tag("span", str(status or "?"), class_="muted")


def _checks(sources: Sequence[Mapping[str, Any]]) -> Html:
    parts: list[Html] = []
    for s in sources:
        checks = [c for c in _list(s, "checks") if isinstance(c, dict)]
        parts.append(tag("h3", f"{s.get('source', '?')}: {len(checks)} check(s)"))
        attempts = [a for a in _list(s, "attempts") if isinstance(a, dict)]
        if attempts:
            tried = "; ".join(
                f"{a.get('region') or '-'}: {a.get('result')}"
                + (f" ({a['failure_category']})" if a.get("failure_category") else "")
                for a in attempts
            )
            parts.append(tag("p", f"regions tried, in order: {tried}"))
        if s.get("failure_category"):
            parts.append(
                tag(
                    "p",
                    f"failed: {s['failure_category']}: {s.get('failure_message') or ''}",
                    class_="bad",
                )
            )
        if not checks:
            continue
        rows = [
            [
                c.get("name", "?"),
                c.get("kind", "?"),
                _check_result(c),
                "yes" if c.get("critical", True) else "no",
                c.get("compared") or "-",
                c.get("coverage") or "-",
            ]
            for c in checks
        ]
        parts.append(table(["check", "kind", "result", "critical", "compared", "coverage"], rows))
    return join(parts)


def _history(history: Sequence[Mapping[str, Any]], current: str) -> Html:
    newest = sorted(history, key=lambda d: str(d.get("started_at", "")), reverse=True)
    rows = []
    for d in newest:
        rto, rpo = seconds(d, "rto"), seconds(d, "rpo")
        ident = drill_id(d)
        rows.append(
            [
                Html(f"<strong>{esc(ident)}</strong> (this one)") if ident == current else ident,
                d.get("started_at") or "-",
                status_badge(str(d.get("status", "?"))),
                d.get("lose_region") or "-",
                seconds_text(rto),
                verdict(d.get("rto_ok") if isinstance(d.get("rto_ok"), bool) else None),
                seconds_text(rpo),
                verdict(d.get("rpo_ok") if isinstance(d.get("rpo_ok"), bool) else None),
                _names(
                    [r.get("code", r) if isinstance(r, dict) else r for r in _list(d, "reasons")]
                ),
            ]
        )
    headers = ["drill", "started", "status", "region lost", "RTO", "", "RPO", "", "reasons"]
    return table(headers, rows, numeric=(4, 6))


def render_drill_html(data: Mapping[str, Any], history: Sequence[Mapping[str, Any]] = ()) -> str:
    """The page of one drill. `history`: summaries (or reports) of the plan's last drills."""
    ident = drill_id(data)
    plan = str(data.get("plan", "?"))
    status = str(data.get("status", "?"))
    sources = [s for s in _list(data, "sources") if isinstance(s, dict)]
    requested = _dict(data, "requested_by")
    facts = [
        ["started", data.get("started_at") or "-"],
        ["finished", data.get("finished_at") or "-"],
        ["requested by", ", ".join(f"{k} {v}" for k, v in sorted(requested.items())) or "-"],
        [
            "simulated disaster",
            f"region {data['lose_region']} lost" if data.get("lose_region") else "none",
        ],
        ["drd version", data.get("drd_version") or "-"],
    ]
    reasons = [r for r in _list(data, "reasons") if isinstance(r, dict)]
    body: list[Html] = [
        tag("h1", join([f"Failover drill of plan {plan} ", status_badge(status)])),
        tag("p", f"drill {ident}", class_="muted"),
        table([], facts),
        tag("h2", "Targets and what was achieved"),
        _objectives(data),
    ]
    if reasons:
        body.append(tag("h2", "Why it did not pass"))
        body.append(
            tag(
                "ul",
                join(
                    tag(
                        "li",
                        join(
                            [
                                tag("code", r.get("code", "?")),
                                f": {r['source']}: " if r.get("source") else ": ",
                                r.get("message", ""),
                            ]
                        ),
                    )
                    for r in reasons
                ),
            )
        )
    body += [
        tag("h2", "Timeline (seconds from the drill's start)"),
        timeline_svg(
            source_bars(sources),
            title=f"phases of each source of plan {plan}",
            target=seconds(data, "rto_target"),
        ),
        tag(
            "p",
            "Sources are restored one after another, in the plan's order. Fetching, decrypting "
            "and restoring stream into each other; their bars show each one's share of that "
            "time. The black mark is the moment the source's checks passed.",
            class_="muted",
        ),
        tag("h2", "Sources"),
        _sources(sources),
        tag("h2", "Regions"),
        _regions(data),
        tag("h2", "Checks and what they covered"),
        _checks(sources),
        tag("h2", f"The last drills of plan {plan}"),
        # The stored history may lack this drill (running, or its report not stored).
        _history([*history, *([] if ident in {drill_id(d) for d in history} else [data])], ident),
    ]
    where_from = (
        f"Figures from the sealed drill report _drills/{plan}/{ident}/report.json "
        f"(stored in: {_names(_list(data, 'stored_in'))}); the history from the drill reports "
        "stored in the plan's regions. Check values stay in the restore test reports kept "
        "with the backups."
    )
    return page(f"drill {ident} of plan {plan}: {status}", join(body), where_from=where_from)
