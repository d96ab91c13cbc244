"""The building blocks of drd's HTML pages (drd.verify.html_page): text is escaped unless it
is markup built here, and chart axes step by round durations."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from drd.verify.html_page import Html, Point, esc, nice_step, series_svg, table, tag


def test_text_is_escaped_and_markup_built_here_is_not() -> None:
    assert esc('<a href="x">&') == "&lt;a href=&quot;x&quot;&gt;&amp;"
    assert esc(None) == "" and esc(3) == "3"
    bold = tag("b", "<i>")
    assert bold == "<b>&lt;i&gt;</b>" and isinstance(bold, Html)
    assert tag("td", "x", class_='"onclick=') == '<td class="&quot;onclick=">x</td>'
    page = table(["<h>"], [["<c>", bold]])
    assert "<th>&lt;h&gt;</th>" in page and "<td>&lt;c&gt;</td>" in page
    assert "<td><b>&lt;i&gt;</b></td>" in page


@pytest.mark.parametrize(
    ("rough", "step"),
    [
        (0.003, 0.01),
        (0.7, 1.0),
        (7, 10.0),
        (50, 60.0),
        (1000, 1800.0),
        (5940, 7200.0),
        (100_000, 172800.0),
        (0, 1.0),
        (float("inf"), 1.0),
    ],
)
def test_axis_steps_are_round_durations(rough: float, step: float) -> None:
    assert nice_step(rough) == step


def test_a_series_chart_puts_every_point_within_its_axes() -> None:
    start = datetime(2026, 9, 1, tzinfo=UTC)
    end = start + timedelta(days=90)
    points = [Point(start + timedelta(days=d), 3600.0 * d, "drill", f"d{d}") for d in (0, 45, 90)]
    svg = series_svg(points, title="t", start=start, end=end, target=6 * 3600.0)
    xs = [float(x) for x in re.findall(r'<circle cx="([\d.]+)"', svg)]
    ys = [float(y) for y in re.findall(r'cy="([\d.]+)"', svg)]
    assert xs == sorted(xs) and xs[0] == 80.0 and xs[-1] == 740.0
    assert ys == sorted(ys, reverse=True) and all(20 <= y <= 220 for y in ys)
    assert "target 6.0h" in svg and "2026-09-01" in svg and "2026-11-30" in svg
