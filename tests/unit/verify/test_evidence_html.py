"""The auditor's page (drd.verify.evidence_html): the figures it shows are figures()'s, the RPO
chart is inline SVG, every run is a row, names are escaped, and it says where it read them."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from drd.verify.evidence_html import render_evidence_html
from drd.verify.figures import FROM_HISTORY, Run, figures

END = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def test_the_page_shows_the_figures_the_chart_and_every_run() -> None:
    runs = [
        Run(
            "restore-test",
            END - timedelta(days=d),
            "passed",
            source="db",
            ident=f"b{d}",
            rto_seconds=float(d),
            rpo_seconds=3600.0 * d,
        )
        for d in range(1, 11)
    ]
    runs.append(
        Run(
            "restore-test",
            END - timedelta(days=20),
            "failed",
            source="<script>",
            reasons=("check_failed",),
            origin=FROM_HISTORY,
        )
    )
    runs.append(
        Run(
            "drill",
            END - timedelta(days=30),
            "passed",
            ident="20261101T120000Z-00000000",
            rto_seconds=700.0,
            rpo_seconds=7200.0,
        )
    )
    fig = figures(
        "billing", runs, end=END, window=timedelta(days=90), rto_target=600.0, rpo_target=6 * 3600.0
    )
    page = render_evidence_html(
        fig,
        counts={"regions": 11, "history": 1},
        problems=["r0:x: <forged>"],
        where_from="Figures from <somewhere>.",
    )
    text = re.sub(r"<[^>]+>", " ", page)
    assert "Restore tests and drills of plan billing" in text
    assert "91.7%" in text  # 11 of 12 decided runs passed
    # Restore tests: RTOs 1..10 s, p50 5 s, p95 10 s; the drill's 700 s misses the 600 s target.
    assert "5.00s" in text and "10.00s" in text and "11.7min" in text and "MISSED" in text
    assert "worst RPO measured" in text and "10.0h" in text
    svg = page[page.index("<svg") : page.index("</svg>")]
    assert svg.count("<rect") == 10 and svg.count("<circle") == 1  # tests and the drill
    assert "target 6.0h" in svg
    assert text.count("check_failed") == 1 and "20261101T120000Z-00000000" in text
    assert "<script" not in page and "&lt;script&gt;" in page
    assert "&lt;forged&gt;" in page and "&lt;somewhere&gt;" in page
    assert "1 from history, 11 from regions" in text


def test_an_empty_window_says_so() -> None:
    fig = figures("p", [], end=END, window=timedelta(days=90), rto_target=60.0, rpo_target=60.0)
    text = re.sub(r"<[^>]+>", " ", render_evidence_html(fig, counts={}, where_from="x"))
    assert "no decided run" in text and "No RPO was measured in the window." in text
    assert "Every run (0)" in text
