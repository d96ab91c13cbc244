"""A drill's HTML page (drd.verify.drill_html): what it shows (targets against the achieved
RTO/RPO, the phases per source as an SVG timeline, the checks with their coverage, the regions
used and lost, the plan's last drills), that it is self-contained, that every user-supplied
name is escaped, and that it reads reports whose fields were renamed."""

from __future__ import annotations

import html
import re
from typing import Any

from drd.verify.drill_html import render_drill_html, source_bars

HOSTILE = "<script>alert(1)</script>"


def report(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "20261204T120000Z-1a2b3c4d",
        "plan": "billing",
        "status": "passed",
        "started_at": "2026-12-04T12:00:00+00:00",
        "finished_at": "2026-12-04T12:01:10+00:00",
        "lose_region": "uc1",
        "regions_read": ["ew1", "eu2"],
        "plan_regions": ["ew1", "uc1", "eu2"],
        "data_read_from": ["ew1"],
        "stored_in": ["ew1", "eu2"],
        "rto_seconds": 64.25,
        "rpo_seconds": 3600.0,
        "rto_target_seconds": 600.0,
        "rpo_target_seconds": 21600.0,
        "reasons": [],
        "requested_by": {"user": "ann", "via": "cli"},
        "sources": [
            {
                "source": "db",
                "kind": "postgres",
                "result": "passed",
                "backup_id": "20261204T110000Z-aaaa0000",
                "region": "ew1",
                "ready_after_seconds": 40.0,
                "restore_rto_seconds": 30.0,
                "rpo_seconds": 3600.0,
                "phases": {
                    "scratch_setup": 5.0,
                    "fetch": 4.0,
                    "decrypt_decompress": 6.0,
                    "restore": 15.0,
                    "checks": 5.0,
                    "teardown": 2.0,
                },
                "checks": [
                    {
                        "name": "row_counts",
                        "kind": "row_counts",
                        "status": "passed",
                        "critical": True,
                        "compared": "count(*) of every table, in the dump and in the copy",
                        "coverage": "12 tables, 48,210 rows",
                    }
                ],
                "attempts": [{"region": "ew1", "result": "passed", "failure_category": None}],
            },
            {
                "source": "docs",
                "kind": "files",
                "result": "passed",
                "ready_after_seconds": 64.25,
                "phases": {"scratch_setup": 1.0, "fetch": 2.0, "restore": 10.0, "checks": 1.25},
                "checks": [],
            },
        ],
    }
    base.update(changes)
    return base


def text_of(page: str) -> str:
    """The page's visible text, roughly: tags dropped, entities kept."""
    return re.sub(r"<[^>]+>", " ", page)


def test_the_page_shows_targets_timeline_checks_regions_and_history() -> None:
    older = {
        "id": "20261101T120000Z-0badf00d",
        "plan": "billing",
        "status": "failed",
        "started_at": "2026-11-01T12:00:00+00:00",
        "rto_seconds": 900.0,
        "rto_ok": False,
        "rpo_seconds": 100.0,
        "rpo_ok": True,
        "reasons": ["rto_above_target"],
    }
    page = render_drill_html(report(), [older, report()])
    text = text_of(page)
    assert "Failover drill of plan billing" in text and "PASSED" in text
    assert "64.25s" in text and "10.0min" in text  # the RTO achieved, and its target
    assert "60.0min" in text and "6.0h" in text  # the RPO achieved, and its target
    assert "row_counts" in text and "12 tables, 48,210 rows" in text
    assert "count(*) of every table, in the dump and in the copy" in text
    assert "LOST (simulated)" in text
    # The history, newest first, this drill marked; the older one's failure with its reason.
    assert text.index("(this one)") < text.index("20261101T120000Z-0badf00d")
    assert "rto_above_target" in text and "MISSED" in text
    # One timeline row per source, every phase a rect, the moment each got ready marked.
    svg = page[page.index("<svg") : page.index("</svg>")]
    assert svg.count('fill="#1a7f37"') == 2 + 1  # two checks bars, one legend swatch
    assert "decrypt_decompress: 6.00s" in svg


def test_each_source_ends_its_checks_when_it_got_ready() -> None:
    bars = source_bars(report()["sources"])
    db, docs = bars
    assert [p for p, _, _ in db.segments] == [
        "scratch_setup",
        "fetch",
        "decrypt_decompress",
        "restore",
        "checks",
        "teardown",
    ]
    checks_db = next(s for s in db.segments if s[0] == "checks")
    assert checks_db[1] + checks_db[2] == 40.0 and db.ready == 40.0
    assert db.segments[0][1] == 5.0  # 40 s ready minus 35 s of phases before it
    checks_docs = next(s for s in docs.segments if s[0] == "checks")
    assert checks_docs[1] + checks_docs[2] == 64.25
    # A source that never got ready starts where the previous one ended.
    failed = [{"source": "x", "phases": {"fetch": 1.0}}, {"source": "y", "phases": {"fetch": 2.0}}]
    x, y = source_bars(failed)
    assert x.segments == [("fetch", 0.0, 1.0)] and y.segments == [("fetch", 1.0, 2.0)]
    assert x.ready is None


def test_user_supplied_names_are_escaped_everywhere() -> None:
    data = report(plan=HOSTILE, requested_by={"user": HOSTILE})
    data["sources"][0]["source"] = HOSTILE
    data["sources"][0]["checks"][0]["name"] = HOSTILE
    data["sources"][0]["checks"][0]["coverage"] = '"><img src=x onerror=alert(1)>'
    data["sources"][1]["failure_category"] = "restore_failed"
    data["sources"][1]["failure_message"] = "relation <b>x</b> & more"
    data["reasons"] = [{"code": "restore_failed", "source": HOSTILE, "message": HOSTILE}]
    page = render_drill_html(data, [data])
    assert "<script" not in page.lower()
    assert "<img" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    assert "relation &lt;b&gt;x&lt;/b&gt; &amp; more" in page
    # In the SVG too (its labels and tooltips are XML text).
    svg = page[page.index("<svg") : page.index("</svg>")]
    assert "&lt;script&gt;" in svg and "<script" not in svg


def test_the_page_is_self_contained() -> None:
    page = render_drill_html(report())
    # Nothing to load: no script, stylesheet link, image, frame or font, and a CSP that
    # forbids them; the only URL is the SVG namespace (a name, never fetched).
    for needle in ("<script", "<link", "<img", "<iframe", "@import", "url(", "src="):
        assert needle not in page.lower(), needle
    urls = set(re.findall(r"https?://[^\"' )]+", page))
    assert urls == {"http://www.w3.org/2000/svg"}
    assert "Content-Security-Policy" in page and "default-src 'none'" in html.unescape(page)
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page


def test_renamed_or_missing_fields_are_read_or_shown_as_missing() -> None:
    # Without the duplicated fields: `drill_id` only, the milliseconds only.
    data = report()
    for key in ("id", "rto_seconds", "rpo_seconds", "rto_target_seconds", "rpo_target_seconds"):
        del data[key]
    data.update(
        drill_id="20261204T120000Z-1a2b3c4d",
        rto_ms=64250,
        rpo_ms=3600000,
        rto_target_ms=600000,
        rpo_target_ms=21600000,
    )
    text = text_of(render_drill_html(data))
    assert "20261204T120000Z-1a2b3c4d" in text and "64.25s" in text and "10.0min" in text
    # A running drill with nothing measured yet, not in the stored history.
    bare = {"id": "20261204T120000Z-1a2b3c4d", "plan": "p", "status": "running"}
    other = {"id": "20261101T120000Z-0badf00d", "status": "passed", "started_at": "2026-11-01"}
    text = text_of(render_drill_html(bare, [other]))
    assert "RUNNING" in text and "not measured" in text
    assert "20261101T120000Z-0badf00d" in text and "(this one)" in text
