"""MySQL / MariaDB statistics for restore tests, in the shape drd.strategies.statistics defines
for every kind:

- the schema fingerprint over information_schema (tables, columns, indexes, constraints, foreign
  keys, views, routines, triggers, events; no database names): {digest, parts}, taken the same
  way on the source (before and after the dump) and on a restored copy;
- exact row counts per table of a restored copy (`COUNT(*)`), keyed by the quoted table name,
  to compare with the counts the dump stream itself had (drd.strategies.mysql_dump);
- the results of the plan's "matches the source" queries, each in a read-only consistent
  snapshot.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from drd.strategies.mysql_client import Client, ClientError, ident, lit
from drd.strategies.statistics import digest, error_text, result_value

# Table types whose data lives in the table (RENAME TABLE moves them); views are recreated.
VIEW = "VIEW"

_SCHEMA_QUERIES: dict[str, str] = {
    "tables": "SELECT JSON_ARRAY(TABLE_NAME, TABLE_TYPE, ENGINE, TABLE_COLLATION) "
    "FROM information_schema.TABLES WHERE TABLE_SCHEMA = {db} ORDER BY TABLE_NAME",
    "columns": "SELECT JSON_ARRAY(TABLE_NAME, COLUMN_NAME, ORDINAL_POSITION, COLUMN_DEFAULT, "
    "IS_NULLABLE, COLUMN_TYPE, CHARACTER_SET_NAME, COLLATION_NAME, EXTRA, "
    "GENERATION_EXPRESSION) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = {db} "
    "ORDER BY TABLE_NAME, ORDINAL_POSITION",
    "indexes": "SELECT JSON_ARRAY(TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX, COLUMN_NAME, "
    "NON_UNIQUE, SUB_PART, INDEX_TYPE) FROM information_schema.STATISTICS "
    "WHERE TABLE_SCHEMA = {db} ORDER BY TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX",
    "constraints": "SELECT JSON_ARRAY(TABLE_NAME, CONSTRAINT_NAME, CONSTRAINT_TYPE) "
    "FROM information_schema.TABLE_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = {db} "
    "ORDER BY TABLE_NAME, CONSTRAINT_NAME, CONSTRAINT_TYPE",
    "foreign_keys": "SELECT JSON_ARRAY(TABLE_NAME, CONSTRAINT_NAME, REFERENCED_TABLE_NAME, "
    "UPDATE_RULE, DELETE_RULE) FROM information_schema.REFERENTIAL_CONSTRAINTS "
    "WHERE CONSTRAINT_SCHEMA = {db} ORDER BY TABLE_NAME, CONSTRAINT_NAME",
    "views": "SELECT JSON_ARRAY(TABLE_NAME, CHECK_OPTION, IS_UPDATABLE, SECURITY_TYPE) "
    "FROM information_schema.VIEWS WHERE TABLE_SCHEMA = {db} ORDER BY TABLE_NAME",
    "routines": "SELECT JSON_ARRAY(ROUTINE_NAME, ROUTINE_TYPE, DTD_IDENTIFIER, "
    "ROUTINE_DEFINITION, IS_DETERMINISTIC, SQL_DATA_ACCESS, SECURITY_TYPE) "
    "FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = {db} "
    "ORDER BY ROUTINE_TYPE, ROUTINE_NAME",
    "triggers": "SELECT JSON_ARRAY(TRIGGER_NAME, EVENT_OBJECT_TABLE, ACTION_TIMING, "
    "EVENT_MANIPULATION, ACTION_ORDER, ACTION_STATEMENT) FROM information_schema.TRIGGERS "
    "WHERE TRIGGER_SCHEMA = {db} ORDER BY EVENT_OBJECT_TABLE, TRIGGER_NAME",
    "events": "SELECT JSON_ARRAY(EVENT_NAME, EVENT_DEFINITION, EVENT_TYPE, INTERVAL_VALUE, "
    "INTERVAL_FIELD) FROM information_schema.EVENTS WHERE EVENT_SCHEMA = {db} "
    "ORDER BY EVENT_NAME",
}
# The column holding the table name in each section (to leave excluded tables out).
_TABLE_COLUMN = {
    "tables": 0,
    "columns": 0,
    "indexes": 0,
    "constraints": 0,
    "foreign_keys": 0,
    "views": 0,
    "triggers": 1,
}


@dataclass
class SchemaInfo:
    """The schema of one database as plain rows, per section."""

    sections: dict[str, list[list[Any]]]

    def fingerprint(self) -> dict[str, Any]:
        """{"digest": sha256, "parts": {section: sha256}} (the shape drd.strategies.statistics
        uses for every kind)."""
        parts = {name: digest(self.sections[name]) for name in sorted(self.sections)}
        return {"digest": digest(sorted(parts.items())), "parts": parts}

    def tables(self) -> dict[str, str]:
        """{table name: TABLE_TYPE} (BASE TABLE, VIEW, SEQUENCE, SYSTEM VERSIONED)."""
        return {str(row[0]): str(row[1]) for row in self.sections["tables"]}


async def schema_info(client: Client, database: str, exclude: Sequence[str] = ()) -> SchemaInfo:
    # One client process for all sections: the queries' results are separated by a marker row.
    marker = f"drd-section-{secrets.token_hex(4)}"
    script = []
    for name, query in _SCHEMA_QUERIES.items():
        script.append(f"SELECT JSON_ARRAY({lit(marker)}, {lit(name)});")
        script.append(query.format(db=lit(database)) + ";")
    rows = await client.json_rows("\n".join(script))
    sections: dict[str, list[list[Any]]] = {name: [] for name in _SCHEMA_QUERIES}
    current: str | None = None
    for row in rows:
        if len(row) == 2 and row[0] == marker:
            current = str(row[1])
            continue
        assert current is not None
        sections[current].append(row)
    skip = set(exclude)
    if skip:
        for name, column in _TABLE_COLUMN.items():
            sections[name] = [r for r in sections[name] if r[column] not in skip]
    return SchemaInfo(sections)


def fingerprint_differences(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
    """The schema parts that differ between two fingerprints ([] when equal)."""
    if expected.get("digest") == actual.get("digest"):
        return []
    want, got = expected.get("parts") or {}, actual.get("parts") or {}
    return sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k)) or ["digest"]


async def row_counts(client: Client, database: str, tables: Sequence[str]) -> dict[str, int]:
    """Exact COUNT(*) of each table (one client process), keyed by the plain table name."""
    if not tables:
        return {}
    parts = [
        f"SELECT JSON_ARRAY({lit(t)}, (SELECT COUNT(*) FROM {ident(database)}.{ident(t)}));"
        for t in tables
    ]
    return {str(r[0]): int(r[1]) for r in await client.json_rows("\n".join(parts))}


@dataclass
class Statistics:
    row_counts: dict[str, int]  # keyed by the quoted table name, like postgres_stats
    schema: dict[str, Any]

    @property
    def plain_counts(self) -> dict[str, int]:
        return {name[1:-1].replace("``", "`"): n for name, n in self.row_counts.items()}

    def compare(self, metadata: Mapping[str, Any]) -> list[str]:
        """What differs from the statistics recorded at dump time ([] when all matches)."""
        recorded = metadata.get("statistics") or {}
        problems = []
        schema = recorded.get("schema")
        if isinstance(schema, dict) and "digest" in schema:
            changed = fingerprint_differences(schema, self.schema)
            if changed:
                problems.append(f"the schema differs in: {', '.join(changed)}")
        counts = recorded.get("row_counts")
        if isinstance(counts, dict) and "error" not in counts:
            for name in sorted(set(counts) | set(self.row_counts)):
                want, got = counts.get(name), self.row_counts.get(name)
                if want != got:
                    problems.append(f"table {name}: {got} rows, the dump had {want}")
        return problems


async def collect_statistics(client: Client, database: str) -> Statistics:
    info = await schema_info(client, database)
    tables = [name for name, kind in info.tables().items() if kind != VIEW]
    counts = await row_counts(client, database, tables)
    return Statistics({ident(t): n for t, n in counts.items()}, info.fingerprint())


async def capture_queries(
    client: Client, database: str, queries: Mapping[str, str]
) -> dict[str, Any]:
    """id -> {"value": ...} or {"error": ...}, each query in a read-only consistent snapshot.

    Values are the client's text form (drd.strategies.statistics.result_value); NULL and the
    string 'NULL' read the same, on both sides alike."""
    out: dict[str, Any] = {}
    for key, sql in queries.items():
        try:
            body = sql.rstrip().rstrip(";")
            script = f"START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY;\n{body};\nCOMMIT;"
            rows = await client.rows(script, database)
            out[key] = {"value": result_value(rows)}
        except (ClientError, ValueError) as exc:
            out[key] = {"error": error_text(exc)}
    return out
