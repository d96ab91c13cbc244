"""The pieces drd's HTML reports are built from: escaping, tables, inline SVG charts, the page.

A report is evidence that is mailed, archived and opened years later, offline: one file with
inline CSS and inline SVG, no script and nothing fetched from anywhere (the page's Content
Security Policy forbids both, so a viewer that honours it cannot be made to load anything).

Plan, source and check names are user input. Everything is text until `esc` turns it into
`Html`; the builders here escape every `str` they are given and insert only `Html` as it is,
so markup can only come from this module's own literals.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

#: what the page may load: nothing but its own inline styles
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2329;
margin:24px auto;max-width:1080px;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d0d7de}
h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;margin:6px 0 12px;width:100%}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f5f7}td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#116329;font-weight:600}.bad{color:#b3261e;font-weight:600}.muted{color:#57606a}
.status{display:inline-block;padding:2px 10px;border-radius:10px;color:#fff;font-weight:600}
.status.ok{background:#1a7f37}.status.bad{background:#cf222e}.status.other{background:#6e7781}
.source{font-size:12px;color:#57606a;border-top:1px solid #d0d7de;margin-top:28px;padding-top:8px}
svg{max-width:100%;height:auto}svg text{font:12px system-ui,sans-serif;fill:#1d2329}
"""


class Html(str):
    """Markup that is safe to insert as it is (built here, or escaped by `esc`)."""


def esc(value: object) -> Html:
    """Any value as text in HTML (element content and quoted attribute values alike)."""
    if isinstance(value, Html):
        return value
    return Html(html.escape("" if value is None else str(value), quote=True))


def join(parts: Iterable[object], sep: str = "") -> Html:
    return Html(sep.join(esc(p) for p in parts))


def tag(name: str, content: object = "", **attrs: object) -> Html:
    """<name attrs>content</name>; `class_` is `class`. Values and content are escaped."""
    rendered = "".join(
        f' {k.rstrip("_").replace("_", "-")}="{esc(v)}"' for k, v in attrs.items() if v is not None
    )
    return Html(f"<{name}{rendered}>{esc(content)}</{name}>")


def table(
    headers: Sequence[str], rows: Iterable[Sequence[object]], numeric: Iterable[int] = ()
) -> Html:
    """A table; columns in `numeric` are right-aligned."""
    right = set(numeric)
    head = tag("thead", tag("tr", join(tag("th", h) for h in headers))) if headers else ""
    body = join(
        tag("tr", join(tag("td", c, class_="num" if i in right else None) for i, c in enumerate(r)))
        for r in rows
    )
    return tag("table", join([head, tag("tbody", body)]))


def verdict(ok: bool | None, yes: str = "ok", no: str = "MISSED") -> Html:
    if ok is None:
        return tag("span", "not measured", class_="muted")
    return tag("span", yes if ok else no, class_="ok" if ok else "bad")


def status_badge(status: str) -> Html:
    kind = {"passed": "ok", "failed": "bad"}.get(status, "other")
    return tag("span", status.upper(), class_=f"status {kind}")


def seconds_text(seconds: float | None) -> str:
    """A duration the way a person reads it: 4.20s, 12.5min, 3.1h, 2.0d."""
    if seconds is None or not math.isfinite(seconds):
        return "not measured"
    if seconds < 120:
        return f"{seconds:.2f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def page(title: str, body: Html, *, where_from: str) -> str:
    """The whole document. `where_from` says which stored data the figures come from."""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"{tag('title', title)}<style>{_CSS}</style></head>"
        f"<body>{body}{tag('p', where_from, class_='source')}</body></html>\n"
    )


# -- charts -----------------------------------------------------------------------------------

#: phase -> bar colour (the timeline's legend is in this order)
PHASE_COLOURS: dict[str, str] = {
    "scratch_setup": "#8c959f",
    "fetch": "#0969da",
    "decrypt_decompress": "#8250df",
    "restore": "#bf8700",
    "checks": "#1a7f37",
    "teardown": "#d0d7de",
}


#: axis steps a person reads as round durations (seconds)
_STEPS = (
    *(0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30),
    *(60 * m for m in (1, 2, 5, 10, 15, 30)),
    *(3600 * h for h in (1, 2, 3, 6, 12)),
    *(86400 * d for d in (1, 2, 7, 14, 30, 90, 365)),
)


def nice_step(rough: float) -> float:
    """The smallest round duration (1 s, 5 min, 2 h, 7 d, ...) at least `rough` seconds."""
    if rough <= 0 or not math.isfinite(rough):
        return 1.0
    return float(next((step for step in _STEPS if step >= rough), math.ceil(rough)))


@dataclass(frozen=True)
class Bar:
    """One row of a timeline: `segments` are (phase, start, seconds) from the drill's start."""

    label: str
    segments: Sequence[tuple[str, float, float]]
    #: a mark at this offset (the moment the row was ready), if any
    ready: float | None = None


def timeline_svg(bars: Sequence[Bar], *, title: str, target: float | None = None) -> Html:
    """A Gantt chart in drill time (seconds from its start), one row per bar, with the target
    as a vertical line when it fits within twice the longest bar."""
    left, width, row, top = 170, 760, 28, 34
    ends = [s + d for b in bars for _, s, d in b.segments] or [1.0]
    span = max(max(ends), 1e-3)
    if target is not None and target <= 2 * span:
        span = max(span, target)
    scale = (width - left - 20) / span
    height = top + row * len(bars) + 54
    parts: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">',
        str(tag("title", title)),
    ]
    step = nice_step(span / 4)
    for i in range(int(span / step) + 1):
        t = step * i
        x = left + t * scale
        parts.append(
            f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{top + row * len(bars)}" '
            'stroke="#eaeef2"/>'
            f'<text x="{x:.1f}" y="{top - 10}" text-anchor="middle">{esc(seconds_text(t))}</text>'
        )
    for n, bar in enumerate(bars):
        y = top + n * row
        parts.append(f'<text x="{left - 8}" y="{y + 17}" text-anchor="end">{esc(bar.label)}</text>')
        for phase, start, seconds in bar.segments:
            w = max(seconds * scale, 1.0)
            parts.append(
                f'<rect x="{left + start * scale:.1f}" y="{y + 5}" width="{w:.1f}" height="16" '
                f'fill="{PHASE_COLOURS.get(phase, "#57606a")}">'
                f"{tag('title', f'{phase}: {seconds_text(seconds)}')}</rect>"
            )
        if bar.ready is not None:
            x = left + bar.ready * scale
            parts.append(
                f'<line x1="{x:.1f}" y1="{y + 2}" x2="{x:.1f}" y2="{y + 24}" stroke="#1d2329" '
                'stroke-width="2"/>'
            )
    if target is not None and target <= span:
        x = left + target * scale
        parts.append(
            f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{top + row * len(bars)}" '
            'stroke="#cf222e" stroke-dasharray="5,3"/>'
            f'<text x="{x - 4:.1f}" y="{top + row * len(bars) + 14}" text-anchor="end" '
            f'fill="#cf222e">RTO target {esc(seconds_text(target))}</text>'
        )
    x = left
    legend_y = height - 12
    for phase, colour in PHASE_COLOURS.items():
        parts.append(
            f'<rect x="{x}" y="{legend_y - 10}" width="12" height="12" fill="{colour}"/>'
            f'<text x="{x + 16}" y="{legend_y}">{esc(phase)}</text>'
        )
        x += 24 + 8 * len(phase)
    parts.append("</svg>")
    return Html("".join(parts))


@dataclass(frozen=True)
class Point:
    at: datetime
    seconds: float
    #: "drill" (a circle) or anything else (a square)
    kind: str
    label: str


def series_svg(
    points: Sequence[Point], *, title: str, start: datetime, end: datetime, target: float | None
) -> Html:
    """Values over time (x: `start`..`end`, y: seconds from 0), the target as a dashed line."""
    left, width, height, top, bottom = 80, 760, 260, 20, 40
    span = max((end - start).total_seconds(), 1.0)
    step = nice_step(max([p.seconds for p in points] + [target or 0.0, 1.0]) * 1.1 / 4)
    peak = 4 * step
    plot_h = height - top - bottom

    def xy(at: datetime, value: float) -> tuple[float, float]:
        x = left + (at - start).total_seconds() / span * (width - left - 20)
        return x, top + plot_h - value / peak * plot_h

    parts: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">',
        str(tag("title", title)),
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 20}" y2="{top + plot_h}" '
        'stroke="#57606a"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#57606a"/>',
    ]
    for i in range(5):
        value = step * i
        _, y = xy(start, value)
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{width - 20}" y2="{y:.1f}" stroke="#eaeef2"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{esc(seconds_text(value))}</text>"
        )
    for at, anchor in ((start, "start"), (start + (end - start) / 2, "middle"), (end, "end")):
        x, _ = xy(at, 0)
        parts.append(
            f'<text x="{x:.1f}" y="{height - 14}" text-anchor="{anchor}">'
            f"{esc(at.strftime('%Y-%m-%d'))}</text>"
        )
    if target is not None:
        _, y = xy(start, target)
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{width - 20}" y2="{y:.1f}" stroke="#cf222e" '
            'stroke-dasharray="5,3"/>'
            f'<text x="{width - 22}" y="{y - 4:.1f}" text-anchor="end" fill="#cf222e">'
            f"target {esc(seconds_text(target))}</text>"
        )
    for p in points:
        x, y = xy(p.at, p.seconds)
        tip = tag("title", f"{p.label}: {seconds_text(p.seconds)}")
        if p.kind == "drill":
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="#0969da">{tip}</circle>')
        else:
            parts.append(
                f'<rect x="{x - 4:.1f}" y="{y - 4:.1f}" width="8" height="8" fill="#bf8700">'
                f"{tip}</rect>"
            )
    parts.append("</svg>")
    return Html("".join(parts))
