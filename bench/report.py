"""Summaries of the measured runs: medians and spread, ratios to the floor and to each peer,
the targets, and the rendering of bench/RESULTS.md and the JSON results."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MB = 1_000_000
MIB = 1024 * 1024

# The issues' targets (ratios of medians in one run) and peak RSS.
BACKUP_TARGET = 1.05  # drd-local backup / floor-zstd's
GCS_BACKUP_TARGET = 1.10  # drd-gcs backup / a google-client-alone upload of the same bytes
RESTORE_TARGET = 0.60  # logical restore / the single-job floor's, same TOAST setting
RSS_TARGET_BYTES = 200 * MIB
LOGICAL_DRD = ("drd-local", "drd-gcs")
DRD_TOOLS = (*LOGICAL_DRD, "drd-physical")
LOGICAL_PEERS = ("gpg", "restic")
PEERS = (*LOGICAL_PEERS, "pgbackrest")
REFERENCES = ("floor", "floor-zstd", "floor-parallel")
#: the row GCS_BACKUP_TARGET compares with (not part of this harness yet)
GCS_REFERENCE = "gcs-client"


@dataclass
class Spread:
    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values), len(values))

    def as_dict(self) -> dict[str, float]:
        return {"median": self.median, "min": self.low, "max": self.high, "n": self.n}


@dataclass
class OpSummary:
    """One tool, one operation (backup or restore), over the repetitions."""

    tool: str
    op: str
    wall: Spread
    cpu: Spread
    machine_cpu: Spread | None
    rss_tool: int | None
    rss_pg: int | None
    stored: int | None
    copies: int = 1
    notes: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "tool": self.tool,
            "op": self.op,
            "wall_s": self.wall.as_dict(),
            "cpu_s": self.cpu.as_dict(),
            "machine_cpu_s": self.machine_cpu.as_dict() if self.machine_cpu else None,
            "peak_rss_tool_bytes": self.rss_tool,
            "peak_rss_pg_bytes": self.rss_pg,
            "stored_bytes_per_copy": self.stored,
            "copies": self.copies,
        }


def summarize(runs: Sequence[dict[str, Any]]) -> dict[tuple[str, str], OpSummary]:
    """`runs`: one dict per measured run (see bench.cli), successful ones only."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        if run.get("error") is None:
            groups.setdefault((run["tool"], run["op"]), []).append(run)
    out: dict[tuple[str, str], OpSummary] = {}
    for (tool, op), items in groups.items():
        machine = [r["machine_cpu_s"] for r in items if r.get("machine_cpu_s") is not None]
        rss_tool = [r["peak_rss_tool_bytes"] for r in items if r["peak_rss_tool_bytes"]]
        rss_pg = [r["peak_rss_pg_bytes"] for r in items if r["peak_rss_pg_bytes"]]
        stored = [r["stored_bytes"] for r in items if r.get("stored_bytes") is not None]
        out[(tool, op)] = OpSummary(
            tool,
            op,
            Spread.of([r["wall_s"] for r in items]),
            Spread.of([r["cpu_s"] for r in items]),
            Spread.of(machine) if machine else None,
            max(rss_tool) if rss_tool else None,
            max(rss_pg) if rss_pg else None,
            int(statistics.median(stored)) if stored else None,
            int(items[0].get("notes", {}).get("copies", 1)),
        )
    return out


def ratio(summaries: dict[tuple[str, str], OpSummary], a: str, b: str, op: str) -> float | None:
    sa, sb = summaries.get((a, op)), summaries.get((b, op))
    if sa is None or sb is None or sb.wall.median <= 0:
        return None
    return sa.wall.median / sb.wall.median


def _target(
    summaries: dict[tuple[str, str], OpSummary],
    tool: str,
    other: str,
    op: str,
    limit: float,
    text: str,
    *,
    strict: bool = False,
    bound: str = "",
) -> dict[str, Any] | None:
    """`tool`'s median over `other`'s must be <= `limit` (< with `strict`); None when either
    row was not measured (a tool left out of the run). A missed target says why: `bound`
    (what limits it, from the analysis in README.md), and whether the two rows' min-max
    ranges overlap, i.e. whether this run can tell them apart at all."""
    r = ratio(summaries, tool, other, op)
    if r is None:
        return None
    met = r < limit if strict else r <= limit
    why = []
    if not met:
        mine, theirs = summaries[(tool, op)].wall, summaries[(other, op)].wall
        if limit == 1.0 and mine.low <= theirs.high and theirs.low <= mine.high:
            why.append("the min-max ranges overlap: not separable in this run")
        if bound:
            why.append(bound)
    return {
        "target": text,
        "value": f"{r:.2f}x {other}'s time",
        "met": met,
        "why": "; ".join(why),
    }


# What bounds each target when it is missed (measured and argued in bench/README.md).
BOUND_BACKUP = (
    "CPU on 2 cores: beyond zstd drd encrypts, hashes the dump and the ciphertext and writes "
    "and checks two copies (~0.8 core-s per GB)"
)
BOUND_LOGICAL_RESTORE = (
    "one server backend: a drd logical backup is one in-order stream, so pg_restore loads one "
    "table after another; needs the parallel-restore format (issue 19, point 1)"
)
BOUND_PEER_RESTORE = (
    "the same single backend as the peer's, plus drd's fixed cost (~0.7 s: start, catalog, "
    "staging database, rename)"
)


def targets(
    summaries: dict[tuple[str, str], OpSummary], memory: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Each target of the issues with the measured value and whether it was met (`met` None:
    not measured in this run, and `value` says why)."""
    wanted: list[dict[str, Any] | None] = [
        _target(
            summaries,
            "drd-local",
            "floor-zstd",
            "backup",
            BACKUP_TARGET,
            f"drd-local backup <= {BACKUP_TARGET:.2f}x floor-zstd",
            bound=BOUND_BACKUP,
        )
    ]
    if ("drd-gcs", "backup") in summaries:
        wanted.append(
            _target(
                summaries,
                "drd-gcs",
                GCS_REFERENCE,
                "backup",
                GCS_BACKUP_TARGET,
                f"drd-gcs backup <= {GCS_BACKUP_TARGET:.2f}x the google client alone",
            )
            or {
                "target": f"drd-gcs backup <= {GCS_BACKUP_TARGET:.2f}x the google client alone",
                "value": f"no {GCS_REFERENCE} row in this run",
                "met": None,
                "why": "the reference row (the same bytes uploaded by the google client alone) "
                "is not part of this harness yet",
            }
        )
    wanted += [
        _target(
            summaries,
            "drd-local",
            peer,
            "backup",
            1.0,
            f"drd-local backup ahead of {peer}",
            strict=True,
        )
        for peer in PEERS
    ]
    for tool in LOGICAL_DRD:
        wanted.append(
            _target(
                summaries,
                tool,
                "floor",
                "restore",
                RESTORE_TARGET,
                f"{tool} restore <= {RESTORE_TARGET:.2f}x the floor (same TOAST setting)",
                bound=BOUND_LOGICAL_RESTORE,
            )
        )
        wanted.append(
            _target(
                summaries,
                tool,
                "floor-parallel",
                "restore",
                1.0,
                f"{tool} restore no slower than floor-parallel",
                bound=BOUND_LOGICAL_RESTORE,
            )
        )
        wanted += [
            _target(
                summaries,
                tool,
                peer,
                "restore",
                1.0,
                f"{tool} restore ahead of {peer}",
                strict=True,
                bound=BOUND_PEER_RESTORE,
            )
            for peer in LOGICAL_PEERS
        ]
    for op in ("backup", "restore"):
        wanted.append(
            _target(
                summaries,
                "drd-physical",
                "pgbackrest",
                op,
                1.0,
                f"drd-physical {op} faster than pgbackrest's",
                strict=True,
            )
        )
    found = [t for t in wanted if t is not None]
    rss = [
        (s.tool, s.op, s.rss_tool)
        for s in summaries.values()
        if s.tool in DRD_TOOLS and s.rss_tool is not None
    ]
    rss += [(m["tool"], f"{m['op']} @ {m['size_mb']} MB", m["peak_rss_bytes"]) for m in memory]
    if rss:
        worst = max(rss, key=lambda item: item[2])
        found.append(
            {
                "target": "drd peak RSS < 200 MB at every size",
                "value": f"max {worst[2] / MIB:.0f} MiB ({worst[0]} {worst[1]})",
                "met": worst[2] < RSS_TARGET_BYTES,
            }
        )
    by_size: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for m in memory:
        by_size.setdefault((m["tool"], m["op"]), []).append((m["size_mb"], m["peak_rss_bytes"]))
    growth = []
    for (tool, op), points in sorted(by_size.items()):
        if len(points) >= 2:
            points.sort()
            (small_size, small), (big_size, big) = points[0], points[-1]
            growth.append((tool, op, small_size, small, big_size, big))
    if growth:
        # "Does not grow": the largest database's peak within 15% (or 16 MiB) of the smallest's.
        worst_growth = max(growth, key=lambda g: g[5] - g[3])
        tool, op, small_size, small, big_size, big = worst_growth
        found.append(
            {
                "target": "drd peak RSS does not grow with database size",
                "value": f"{tool} {op}: {small / MIB:.0f} MiB @ {small_size} MB -> "
                f"{big / MIB:.0f} MiB @ {big_size} MB",
                "met": all(g[5] <= max(g[3] * 1.15, g[3] + 16 * MIB) for g in growth),
            }
        )
    return found


# ------------------------------------------------------------------------------ rendering


def _mib(n: int | None) -> str:
    return "-" if not n else f"{n / MIB:.0f}"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / MB:,.0f} MB" if n >= 10 * MB else f"{n / MB:.1f} MB"


def _secs(s: Spread) -> str:
    if s.n == 1:
        return f"{s.median:.2f}"
    return f"{s.median:.2f} ({s.low:.2f}-{s.high:.2f})"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def render_markdown(results: dict[str, Any]) -> str:
    meta, dataset = results["meta"], results["dataset"]
    summaries = {(s["tool"], s["op"]): s for s in results["summary"]}
    lines = [
        "# drd benchmark results",
        "",
        "Generated by `make bench` (`python -m bench`); method and analysis in "
        "[README.md](README.md). Do not edit by hand: the next run rewrites this file.",
        "",
        f"- date: {meta['date']}",
        f"- machine: {meta['cpu_model']}, {meta['cores']} cores, "
        f"{meta['memory_gib']:.0f} GiB RAM; {meta['kernel']}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}",
        f"- database: `{dataset['name']}`, {_size(dataset['on_disk_bytes'])} on disk, "
        f"`pg_dump -Fc -Z0` output {_size(dataset['dump_bytes'])}; warm cache",
        f"- {meta['reps']} repetitions, tools interleaved (order rotated each repetition); "
        "times are medians (min-max)",
        f"- drd: zstd level {meta['drd_zstd_level']}, AES-256-GCM, 1 MiB segments; "
        "every copy verified before the manifest is written",
        "- every logical restore session (drd's, the floors', the peers'): TOAST compression "
        f"{meta.get('restore_toast_compression', 'server default')}, as drd's restore sets it",
        "",
    ]
    measured = [r for r in results.get("runs", []) if r.get("error") is None]
    if measured:
        repeated = sum(1 for r in measured if r.get("attempts", 1) > 1)
        disturbed = [
            f"{r['tool']} {r['op']} rep {r['rep'] + 1}" for r in measured if r.get("disturbed")
        ]
        lines += [
            f"- shared machine: {repeated} of {len(measured)} runs were repeated because other "
            "processes used the CPU meanwhile; "
            + (
                f"still disturbed after the retries, kept: {', '.join(disturbed)}"
                if disturbed
                else "none was left disturbed"
            ),
            "",
        ]
    if results.get("unavailable"):
        lines += ["Not measured here:", ""]
        lines += [f"- {tool}: {why}" for tool, why in results["unavailable"].items()]
        lines.append("")
    if results.get("failures"):
        lines += ["Failed runs (excluded from the medians):", ""]
        lines += [
            f"- {f['tool']} {f['op']} rep {f['rep']}: {f['error']}" for f in results["failures"]
        ]
        lines.append("")

    for op in ("backup", "restore"):
        floor = summaries.get(("floor", op))
        lines += [
            f"## {op.capitalize()}",
            "",
            "| tool | wall s | x floor | CPU s (tool + pg) | machine CPU s | peak RSS tool MiB "
            "| peak RSS pg MiB | stored per copy | copies |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for s in results["summary"]:
            if s["op"] != op:
                continue
            wall = Spread(**_spread_args(s["wall_s"]))
            cpu = Spread(**_spread_args(s["cpu_s"]))
            machine = s["machine_cpu_s"]
            x_floor = wall.median / floor["wall_s"]["median"] if floor else None
            machine_cell = "-" if machine is None else f"{machine['median']:.2f}"
            lines.append(
                f"| {s['tool']} | {_secs(wall)} | {_x(x_floor)} | {cpu.median:.2f} | "
                f"{machine_cell} | "
                f"{_mib(s['peak_rss_tool_bytes'])} | {_mib(s['peak_rss_pg_bytes'])} | "
                f"{_size(s['stored_bytes_per_copy']) if op == 'backup' else '-'} | "
                f"{s['copies'] if op == 'backup' else '-'} |"
            )
        lines.append("")
    lines += _ratio_table(results)
    lines += [
        "## Targets",
        "",
        "| target | measured | met | why not (when missed) |",
        "|---|---|---|---|",
    ]
    for t in results["targets"]:
        met = "not measured" if t["met"] is None else "yes" if t["met"] else "**no**"
        lines.append(f"| {t['target']} | {t['value']} | {met} | {t.get('why', '')} |")
    lines.append("")
    if results.get("memory"):
        lines += [
            "## Peak RSS of the drd process by database size",
            "",
            "| size | operation | drd peak RSS MiB | pg_dump / pg_restore peak RSS MiB | wall s |",
            "|---|---|---|---|---|",
        ]
        for m in results["memory"]:
            lines.append(
                f"| {m['size_mb']} MB | {m['tool']} {m['op']} | {_mib(m['peak_rss_bytes'])} | "
                f"{_mib(m['peak_rss_pg_bytes'])} | {m['wall_s']:.2f} |"
            )
        lines.append("")
    if results.get("stages"):
        lines += [
            "## drd's byte transforms alone (one core, in memory, real dump bytes)",
            "",
            "| stage | MiB/s (of its input) | in MiB | out MiB |",
            "|---|---|---|---|",
        ]
        for st in results["stages"]:
            lines.append(
                f"| {st['stage']} | {st['mib_per_s']:.0f} | {st['input_bytes'] / MIB:.0f} | "
                f"{st['output_bytes'] / MIB:.0f} |"
            )
        lines.append("")
    lines += [
        "Columns: *wall s* from the first process's start to the last one's exit (restores "
        "include creating the target database; the physical ones, pgBackRest's and "
        "drd-physical's, include starting the restored cluster and waiting until it accepts "
        "writes). *CPU s*: user+system time of every process the tool ran (drd: the drd "
        "process plus its pg_dump/pg_restore; peers: every pipeline "
        "stage), not the PostgreSQL server's. *machine CPU s*: busy time of all cores during "
        "the run from /proc/stat, server and kernel included (2 cores give at most 2 s per "
        "second). *peak RSS tool*: the largest ru_maxrss among the tool's own processes "
        "(drd: the drd process alone); *pg*: pg_dump / pg_restore / psql (drd-physical: "
        "pg_basebackup / tar).",
        "",
    ]
    return "\n".join(lines)


def _spread_args(d: dict[str, float]) -> dict[str, Any]:
    return {"median": d["median"], "low": d["min"], "high": d["max"], "n": int(d["n"])}


def _ratio_table(results: dict[str, Any]) -> list[str]:
    summaries = {(s["tool"], s["op"]): s for s in results["summary"]}
    others = [t for t in (*REFERENCES, *PEERS) if (t, "backup") in summaries]
    lines = [
        "## Ratios (drd's median wall time / the other's; below 1.00 means drd is faster)",
        "",
        "| drd | operation | " + " | ".join(others) + " |",
        "|---|---|" + "---|" * len(others),
    ]
    for tool in DRD_TOOLS:
        for op in ("backup", "restore"):
            mine = summaries.get((tool, op))
            if mine is None:
                continue
            cells = []
            for other in others:
                theirs = summaries.get((other, op))
                cells.append(
                    _x(mine["wall_s"]["median"] / theirs["wall_s"]["median"]) if theirs else "-"
                )
            lines.append(f"| {tool} | {op} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def rerender(results_json: Path, results_md: Path) -> None:
    """The tables and targets again from the runs a results.json holds, without measuring:
    for a change of the generator (same runs, same medians)."""
    results = json.loads(results_json.read_text())
    summaries = summarize(results["runs"])
    results["summary"] = [s.as_dict() for s in summaries.values()]
    results["targets"] = targets(summaries, results["memory"])
    results_json.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    results_md.write_text(render_markdown(results))


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    rerender(here / "results.json", here / "RESULTS.md")
