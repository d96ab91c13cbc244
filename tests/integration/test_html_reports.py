"""Issue 17, the DR coordinator's evidence, as a person sees it: a real drill (a PostgreSQL
source restored into an ephemeral server and a files source, regions in two fake-gcs-server
processes) writes its HTML page (`drd drill --html`), `drd report` writes the auditor's page,
and headless Chromium renders both: the DOM shows the achieved RTO, the targets, the check
names and the charts, and the screenshots are not blank (the page's own colours are there,
so its inline CSS applied).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from drd.verify.html_page import seconds_text
from tests.integration.test_drills import drill_env
from tests.integration.test_restore_tests import cleanup_scratch  # noqa: F401 - the fixture
from tests.support import chromium
from tests.support.drdenv import DrdEnv
from tests.support.fakegcs import StartRegions
from tests.support.pg import PgDatabaseFactory

pytestmark = pytest.mark.integration

PASSED_GREEN = (0x1A, 0x7F, 0x37)  # the PASSED badge (drd.verify.html_page)


def assert_looks_like_a_page(image: chromium.Image) -> None:
    assert (image.width, image.height) == chromium.WINDOW
    pixels = image.pixels()
    ink = sum(p != (255, 255, 255) for p in pixels) / len(pixels)
    assert ink > 0.02, f"only {ink:.1%} of the screenshot is not white"
    assert PASSED_GREEN in set(pixels), "no PASSED badge: the inline CSS did not apply"


def test_a_real_drill_and_the_report_render_in_chromium(
    tmp_path: Path,
    gcs_regions: StartRegions,
    pg_database_factory: PgDatabaseFactory,
    cleanup_scratch: Callable[[DrdEnv], None],  # noqa: F811
) -> None:
    chromium.require()
    servers = gcs_regions(2, ["EUROPE-WEST1", "US-CENTRAL1"])
    env = drill_env(tmp_path, servers, pg_database_factory)
    cleanup_scratch(env)
    profile = tmp_path / "chromium-profile"

    drill_page = tmp_path / "drill.html"
    proc = env.ok("drill", "billing", "--json", "--html", str(drill_page), timeout=300)
    report = json.loads(proc.stdout)
    assert report["status"] == "passed", proc.stdout + proc.stderr
    dom = chromium.dump_dom(drill_page, profile)
    assert "Failover drill of plan billing" in dom and report["id"] in dom
    assert seconds_text(report["rto_seconds"]) in dom  # the achieved RTO
    assert "10.0min" in dom and "6.0h" in dom  # the plan's targets
    for source in report["sources"]:
        for check in source["checks"]:
            assert check["name"] in dom, check
            if check["coverage"]:
                assert check["coverage"] in dom, check
    assert dom.count("<svg") == 1 and "decrypt_decompress" in dom  # the timeline
    image = chromium.screenshot(drill_page, profile, tmp_path / "drill.png")
    assert_looks_like_a_page(image)

    audit_page = tmp_path / "report.html"
    env.ok("report", "billing", "--since", "90d", "--out", str(audit_page))
    figures = json.loads(env.ok("report", "billing", "--json").stdout)
    assert figures["drills"]["runs"] == 1 and figures["drills"]["passed"] == 1
    # The drill restored two sources: two restore tests, next to their backups.
    assert figures["restore_tests"]["runs"] == 2 and figures["pass_rate"] == 1.0
    dom = chromium.dump_dom(audit_page, profile)
    assert "Restore tests and drills of plan billing" in dom and report["id"] in dom
    assert "100.0%" in dom  # the pass rate
    assert seconds_text(figures["drills"]["rto_p95_seconds"]) in dom
    assert "RPO over time" in dom and "<circle" in dom  # the drill's RPO on the chart
    image = chromium.screenshot(audit_page, profile, tmp_path / "report.png")
    assert_looks_like_a_page(image)

    # A regional outage: the report still comes out, says first that it is incomplete and
    # which region, and the exit code says so (StorageError's).
    servers[1].stop()
    partial_page = tmp_path / "partial.html"
    partial = env.run("report", "billing", "--since", "90d", "--out", str(partial_page))
    assert partial.returncode == 6, partial.stdout + partial.stderr
    assert "incomplete" in partial.stderr and "uc1" in partial.stderr
    dom = chromium.dump_dom(partial_page, profile)
    assert "INCOMPLETE" in dom and "region uc1" in dom
    data = env.run("report", "billing", "--json")
    assert data.returncode == 6
    figures = json.loads(data.stdout)
    assert figures["complete"] is False and list(figures["regions_not_read"]) == ["uc1"]
    assert figures["drills"]["runs"] == 1  # what ew1 holds is still counted
