"""The auditor's page of `drd report PLAN`: every restore test and drill of a plan in a window.

Built from drd.verify.figures (the same figures `drd report --json` prints), so the page and
the JSON cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from drd.verify.figures import Figures, KindFigures
from drd.verify.html_page import (
    Html,
    Point,
    join,
    page,
    seconds_text,
    series_svg,
    status_badge,
    table,
    tag,
    verdict,
)


def percent(rate: float | None) -> str:
    return "no decided run" if rate is None else f"{rate * 100:.1f}%"


def _kind_row(label: str, k: KindFigures) -> list[object]:
    return [
        label,
        k.runs,
        k.passed,
        k.failed,
        percent(k.pass_rate),
        seconds_text(k.rto_p50_seconds),
        seconds_text(k.rto_p95_seconds),
        seconds_text(k.rto_target_seconds),
        verdict(k.p95_ok),
        f"{k.rto_within_target} of {k.rto_measured}",
    ]


def render_evidence_html(
    fig: Figures,
    *,
    counts: Mapping[str, int],
    problems: Sequence[str] = (),
    regions_not_read: Mapping[str, str] | None = None,
    where_from: str,
) -> str:
    """The page; with `regions_not_read`, it says first that its figures are incomplete."""
    tests, drills = fig.by_kind["restore-test"], fig.by_kind["drill"]
    window = f"{fig.window_start:%Y-%m-%d %H:%M} to {fig.window_end:%Y-%m-%d %H:%M} UTC"
    worst = fig.rpo_worst_seconds
    summary = table(
        [],
        [
            ["window", window],
            ["runs", f"{len(fig.runs)} ({tests.runs} restore test(s), {drills.runs} drill(s))"],
            ["pass rate (passed of passed + failed)", percent(fig.pass_rate)],
            ["RTO target", seconds_text(fig.rto_target_seconds)],
            ["RPO target", seconds_text(fig.rpo_target_seconds)],
            [
                "worst RPO measured",
                join(
                    [
                        seconds_text(worst),
                        " ",
                        verdict(None if worst is None else worst <= fig.rpo_target_seconds),
                    ]
                ),
            ],
        ],
    )
    headers = [
        "",
        "runs",
        "passed",
        "failed",
        "pass rate",
        "RTO p50",
        "RTO p95",
        "RTO target",
        "p95",
        "within target",
    ]
    by_kind = table(
        headers,
        [
            _kind_row("restore tests (one source each)", tests),
            _kind_row("drills (every source of the plan)", drills),
        ],
        numeric=(1, 2, 3, 4, 5, 6, 7),
    )
    points = [
        Point(
            r.started_at,
            r.rpo_seconds,
            r.kind,
            f"{r.kind} {r.source or r.ident} {r.started_at:%Y-%m-%d %H:%M}",
        )
        for r in fig.rpo_points
        if r.rpo_seconds is not None
    ]
    runs = table(
        [
            "started (UTC)",
            "kind",
            "source",
            "backup / drill",
            "result",
            "RTO",
            "RPO",
            "region",
            "why",
            "from",
        ],
        [
            [
                f"{r.started_at:%Y-%m-%d %H:%M:%S}",
                r.kind,
                r.source or "(every source)",
                r.ident or "-",
                status_badge(r.result),
                seconds_text(r.rto_seconds),
                seconds_text(r.rpo_seconds),
                r.region or "-",
                ", ".join(r.reasons) or "-",
                r.origin,
            ]
            for r in reversed(fig.runs)
        ],
        numeric=(5, 6),
    )
    incomplete: list[Html] = []
    if regions_not_read:
        incomplete = [
            tag(
                "p",
                "INCOMPLETE: the runs stored in "
                + ", ".join(f"region {name}" for name in sorted(regions_not_read))
                + " could not be read, so every figure below comes from the other regions "
                "only. Why: "
                + "; ".join(f"{name}: {why}" for name, why in sorted(regions_not_read.items())),
                class_="bad",
            )
        ]
    body: list[Html] = [
        tag("h1", f"Restore tests and drills of plan {fig.plan}"),
        tag("p", window, class_="muted"),
        *incomplete,
        summary,
        tag("h2", "Pass rate and RTO against the target"),
        by_kind,
        tag(
            "p",
            "Percentiles are nearest-rank (a value some run measured). A restore test's RTO "
            "is one source's; a drill's is the whole plan's, sources one after another.",
            class_="muted",
        ),
        tag("h2", "RPO over time"),
        series_svg(
            points,
            title=f"RPO of plan {fig.plan}",
            start=fig.window_start,
            end=fig.window_end,
            target=fig.rpo_target_seconds,
        )
        if points
        else tag("p", "No RPO was measured in the window.", class_="muted"),
        tag(
            "p",
            "Circles: a drill's achieved RPO. Squares: a restore test of the newest backup, "
            "that backup's age when it was tested. Dashed: the plan's target.",
            class_="muted",
        ),
        tag("h2", f"Every run ({len(fig.runs)}), newest first"),
        runs,
    ]
    if problems:
        body.append(tag("h2", "Reports that could not be read (not counted)"))
        body.append(tag("ul", join(tag("li", p) for p in problems)))
    shown = ", ".join(f"{n} from {origin}" for origin, n in sorted(counts.items())) or "none"
    return page(
        f"plan {fig.plan}: restore tests and drills",
        join(body),
        where_from=f"{where_from} Runs: {shown}.",
    )
