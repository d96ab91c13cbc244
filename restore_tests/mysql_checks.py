"""The built-in checks of a restored MySQL/MariaDB copy, against what the dump itself recorded
(drd.strategies.mysql: statistics taken from the dump stream, inside its consistent snapshot):

- row_counts: every table's rows (history rows too where the dump carried them);
- schema: the information_schema fingerprint (a warning only across server versions);
- sequences: each sequence's next value, as the dump's `DO SETVAL` set it;
- objects: every view, routine, trigger and event, with its definer and definition;
- content: per-table digests of the rows' text, the same rows on both sides (the first N of each
  table in the dump's order by default, every row with `content: full`), read from the copy
  with the same dump tool and options; a different tool version makes a difference a warning;
- history: a warning when the dump could not keep a system-versioned table's history.

Each result says what it compared and how much of the data it covered; a difference names the
table or object.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from drd.restore_tests import builtin
from drd.restore_tests.results import CheckResult, failed, passed, skipped
from drd.strategies import mysql_client, mysql_stats, mysql_tools
from drd.strategies._subprocess import ToolError, stream_stdout
from drd.strategies.mysql import dump_argv, tool_failure
from drd.strategies.mysql_dump import RowCounter
from drd.strategies.statistics import error_text

_SHOW = 20


def _stats(metadata: Mapping[str, Any], part: str) -> Any:
    stats = metadata.get("statistics")
    if not isinstance(stats, Mapping):
        return None
    if isinstance(stats.get("error"), str):
        return stats
    return stats.get(part)


def _major(version: str) -> str:
    return ".".join(version.split("-")[0].split(".")[:2])


async def mysql_builtins(
    target: str, metadata: Mapping[str, Any], *, password: str | None = None
) -> list[CheckResult]:
    """Every built-in check of the copy at `target` (a mysql:// URL; `password` when the URL
    gives none)."""
    try:
        server, database = mysql_client.parse_target(target)
        if password is not None and server.password is None:
            server = mysql_client.Server(
                server.host, server.port, server.user, server.socket, password, None
            )
        tool = await mysql_tools.find_tool("client")
        if tool is None:
            raise RuntimeError("no mariadb/mysql client found")
        client = mysql_client.Client(server, tool.path)
        stats = await mysql_stats.collect_statistics(client, database, metadata)
        info = await mysql_stats.schema_info(client, database)
        objects = await mysql_stats.inventory(client, database)
        kinds = info.tables()
        sequences = [n for n, k in kinds.items() if k == mysql_stats.SEQUENCE]
        values = await mysql_stats.sequence_values(client, database, sequences)
        (version,) = (await client.rows("SELECT VERSION()"))[0]
    except Exception as exc:
        why = f"cannot read the restored database: {error_text(exc)}"
        return [
            failed("row_counts", "row_counts", detail=why),
            failed("schema", "schema", detail=why),
        ]
    source_version = str(metadata.get("server_version") or "")
    comparable = not source_version or _major(source_version) == _major(str(version or ""))
    expected_counts = _stats(metadata, "row_counts")
    if isinstance(expected_counts, Mapping) and "error" not in expected_counts:
        skip = set(stats.sequences)  # older dumps counted sequences as tables of 0 rows
        expected_counts = {k: v for k, v in expected_counts.items() if k not in skip}
    results = [
        builtin.row_counts(
            expected_counts, stats.row_counts, list(metadata.get("exclude_tables") or [])
        ),
        builtin.schema(_stats(metadata, "schema"), stats.schema, comparable=comparable),
        _sequences(_stats(metadata, "sequences"), values),
        _objects(_stats(metadata, "inventory"), objects),
        await _content(client, database, metadata),
    ]
    lost = [str(t) for t in metadata.get("history_lost") or []]
    if lost:
        results.append(
            failed(
                "history",
                "history",
                critical=False,
                expected=f"the history of {len(lost)} system-versioned table(s)",
                actual="current rows only",
                detail=f"the dump tool could not dump the history of {', '.join(lost[:5])}",
            )
        )
    return results


def _sequences(expected: Any, actual: Mapping[str, list[int]]) -> CheckResult:
    name = "sequences"
    if expected is None:
        return skipped(name, name, "the backup records no sequence values (an older drd)")
    assert isinstance(expected, Mapping)
    problems = mysql_stats.sequence_differences(expected, actual)
    summary = f"{len(expected)} sequences, next values as the dump's DO SETVAL"
    if not problems:
        return passed(name, name, expected=summary, actual=f"{len(actual)} sequences equal")
    return failed(
        name,
        name,
        expected=dict(expected),
        actual=dict(actual),
        detail="; ".join(problems[:_SHOW]),
    )


def _objects(expected: Any, actual: Mapping[str, Any]) -> CheckResult:
    name = "objects"
    if expected is None:
        return skipped(name, name, "the backup records no object inventory (an older drd)")
    assert isinstance(expected, Mapping)
    counts: dict[str, int] = {}
    for key in expected:
        kind = key.split(" ", 1)[0]
        counts[kind] = counts.get(kind, 0) + 1
    summary = ", ".join(f"{n} {kind}s" for kind, n in sorted(counts.items())) or "no objects"
    summary += " (definer and definition of each)"
    problems = mysql_stats.inventory_differences(expected, actual)
    if not problems:
        return passed(name, name, expected=summary, actual=f"{len(actual)} objects equal")
    return failed(
        name,
        name,
        expected=summary,
        actual=f"{len(problems)} object(s) differ",
        detail="; ".join(problems),
    )


async def _content(
    client: mysql_client.Client, database: str, metadata: Mapping[str, Any]
) -> CheckResult:
    name = "content"
    recorded = _stats(metadata, "content")
    if recorded is None:
        return skipped(name, name, "the backup records no content digests (content: off)")
    if isinstance(recorded.get("error"), str):
        return failed(name, name, critical=False, detail=str(recorded["error"]))
    expected: Mapping[str, Any] = recorded.get("tables") or {}
    full = recorded.get("mode") == "full"
    per_table = None if full else int(recorded.get("rows_per_table") or 1000)
    tool = await mysql_tools.find_tool("dump")
    if tool is None:
        return failed(name, name, critical=False, detail="no mariadb-dump/mysqldump here")
    same_tool = tool.version == recorded.get("tool")
    history = bool(recorded.get("history"))
    # One read of the copy per way its rows were chosen: every row, the first N of each table,
    # or (one read per table) the table's key ranges.
    reads: list[tuple[list[str], list[str], RowCounter]] = []
    heads = [t for t, v in expected.items() if full or not v.get("ranges")]
    if heads:
        where = [] if full else [f"--where=1 LIMIT {per_table}"]
        reads.append(
            (
                [mysql_client.unquote_ident(t) for t in heads],
                where,
                RowCounter(0 if full else per_table),
            )
        )
    for table, want in expected.items():
        if full or not want.get("ranges"):
            continue
        plain = mysql_client.unquote_ident(table)
        clause = mysql_stats.where_ranges(str(want.get("key")), want["ranges"])
        reads.append(([plain], [f"--where={clause}"], RowCounter(0, {plain: want["ranges"]})))
    digests: dict[str, Any] = {}
    try:
        for tables, where, counter in reads:
            with mysql_client.options_file(client.server) as cnf:
                argv = dump_argv(
                    tool.path, cnf, database, history=history, extra=where, tables=tables
                )
                stream = stream_stdout(argv, mysql_client.client_env(client.server))
                async with contextlib.aclosing(stream) as chunks:
                    async for chunk in chunks:
                        counter.feed(chunk)
            digests.update(counter.digests)
    except ToolError as exc:
        text = tool_failure(exc, [client.server.password])
        return failed(name, name, detail=f"could not read the restored rows: {text}")
    problems = []
    for table in sorted(expected):
        want = expected[table]
        got = digests.get(mysql_client.unquote_ident(table))
        got_json: dict[str, Any] = (
            got.as_json() if got is not None else {"rows": 0, "digest": "0" * 32}
        )
        want = {k: want[k] for k in ("rows", "digest") if k in want}
        if want != got_json:
            problems.append(
                f"table {table}: {got_json['rows']} rows digested, digest "
                f"{got_json['digest'][:12]}; the dump had {want.get('rows')} rows, "
                f"digest {str(want.get('digest'))[:12]}"
            )
    rows = sum(int(v.get("rows") or 0) for v in expected.values())
    ranged = sum(1 for v in expected.values() if v.get("ranges"))
    if full:
        scope = "every row"
    else:
        parts = []
        if ranged:
            parts.append(
                f"{ranged} by primary-key ranges spread over the table, about {per_table} rows each"
            )
        if len(expected) > ranged:
            parts.append(f"{len(expected) - ranged} by their first {per_table} rows")
        scope = "; ".join(parts)
    summary = f"{len(expected)} tables, {rows} rows digested ({scope})"
    if not problems:
        return passed(name, name, expected=summary, actual=summary)
    detail = f"{len(problems)} table(s) differ: " + "; ".join(problems[:_SHOW])
    if not same_tool:
        detail += (
            f" (the copy was read with {tool.version}, the backup with {recorded.get('tool')}: "
            "their formatting may differ, so this is a warning only)"
        )
    return failed(
        name,
        name,
        critical=same_tool,
        expected=summary,
        actual=f"{len(problems)} of {len(expected)} tables differ",
        detail=detail,
    )
