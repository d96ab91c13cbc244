"""The auditor's figures (drd.verify.figures): nearest-rank percentiles, the pass rate (a
cancelled drill decides nothing), the window's bounds, restore tests and drills apart."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from drd.verify.figures import Run, figures, in_window, pass_rate, percentile

END = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def run(days_ago: float, result: str = "passed", kind: str = "restore-test", **kw: object) -> Run:
    return Run(kind=kind, started_at=END - timedelta(days=days_ago), result=result, **kw)


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        (list(range(1, 21)), 50, 10),
        (list(range(1, 21)), 95, 19),
        (list(range(1, 21)), 100, 20),
        (list(range(20, 0, -1)), 95, 19),  # order does not matter
        ([7.5], 95, 7.5),
        ([3.0, 1.0], 50, 1.0),
        ([1.0, 2.0, 3.0, 100.0], 95, 100.0),  # nearest rank: a value some run measured
        ([], 50, None),
    ],
)
def test_percentile_is_nearest_rank(values: list[float], q: float, expected: float | None) -> None:
    assert percentile(values, q) == expected


def test_percentile_refuses_a_q_outside_0_to_100() -> None:
    for q in (0, -5, 101):
        with pytest.raises(ValueError, match="q must be in"):
            percentile([1.0], q)


def test_pass_rate_counts_passed_and_failed_only() -> None:
    runs = [run(1), run(2), run(3, "failed"), run(4, "cancelled", kind="drill")]
    assert pass_rate(runs) == pytest.approx(2 / 3)
    assert pass_rate([run(1, "cancelled", kind="drill")]) is None
    assert pass_rate([]) is None


def test_the_window_includes_its_bounds_and_nothing_outside() -> None:
    runs = [run(91), run(90), run(45), run(0), run(-1)]
    kept = in_window(runs, END, timedelta(days=90))
    assert [r.started_at for r in kept] == [
        END - timedelta(days=90),
        END - timedelta(days=45),
        END,
    ]


def test_figures_split_restore_tests_and_drills_against_the_target() -> None:
    rto_target = 600.0
    tests = [run(i, rto_seconds=float(10 * i + 10), source="db") for i in range(20)]
    tests.append(run(3, "failed", source="db", reasons=("check_failed",)))
    drills = [
        run(5, kind="drill", rto_seconds=700.0, rpo_seconds=3600.0),
        run(10, kind="drill", rto_seconds=300.0, rpo_seconds=30000.0),
        run(12, "cancelled", kind="drill"),
    ]
    old = run(200, "failed", rto_seconds=99999.0)
    fig = figures(
        "billing",
        [*tests, *drills, old],
        end=END,
        window=timedelta(days=90),
        rto_target=rto_target,
        rpo_target=6 * 3600.0,
    )
    t, d = fig.by_kind["restore-test"], fig.by_kind["drill"]
    assert (t.runs, t.passed, t.failed) == (21, 20, 1)
    assert t.pass_rate == pytest.approx(20 / 21)
    # RTOs 10..200 s: nearest-rank p50 is the 10th (100 s), p95 the 19th (190 s).
    assert (t.rto_p50_seconds, t.rto_p95_seconds) == (100.0, 190.0)
    assert t.p95_ok is True and (t.rto_measured, t.rto_within_target) == (20, 20)
    assert (d.runs, d.passed, d.failed) == (3, 2, 0) and d.pass_rate == 1.0
    assert (d.rto_p50_seconds, d.rto_p95_seconds) == (300.0, 700.0)
    assert d.p95_ok is False and d.rto_within_target == 1
    assert fig.pass_rate == pytest.approx(22 / 23)
    assert fig.rpo_worst_seconds == 30000.0
    data = fig.as_json()
    assert data["window"] == {"start": "2026-09-02T12:00:00+00:00", "end": END.isoformat()}
    assert data["runs_total"] == 24 and len(data["runs"]) == 24  # not the 200-day-old one
    assert data["rpo"]["worst_ok"] is False
    assert [p["rpo_seconds"] for p in data["rpo"]["points"]] == [30000.0, 3600.0]
    assert data["drills"]["rto_p95_ok"] is False and data["restore_tests"]["rto_p95_ok"] is True


def test_figures_of_an_empty_window_say_nothing_was_measured() -> None:
    fig = figures("p", [], end=END, window=timedelta(days=1), rto_target=60.0, rpo_target=60.0)
    data = fig.as_json()
    assert data["pass_rate"] is None and data["runs"] == []
    assert data["restore_tests"]["rto_p95_seconds"] is None
    assert data["restore_tests"]["rto_p95_ok"] is None and data["rpo"]["worst_seconds"] is None
