"""The checks every restore test runs, whatever the plan says: the stream authenticated from
its first byte to its last, and the restored copy matches the statistics taken from the source
at backup time (drd.strategies.*_stats, drd.strategies.file_digests). Pure comparisons: the runner
gathers the figures from the restored copy.

A backup without statistics (taken by an older drd) skips the comparison; statistics that
failed at backup time make a non-critical failure (nothing to compare with is a warning, not a
broken backup).
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from drd.restore_tests.results import CheckResult, failed, passed, skipped
from drd.strategies import file_digests

_SHOW = 20  # differences listed in a report


def integrity(complete: bool, ciphertext_bytes: int, plaintext_bytes: int) -> CheckResult:
    name = "integrity"
    expected = "every segment authenticates; sizes and sha256 digests match the manifest"
    compared = (
        "every stored segment authenticated (AES-GCM) and the sizes and digests of the manifest"
    )
    coverage = f"{ciphertext_bytes} stored bytes, {plaintext_bytes} restored"
    if complete:
        return passed(
            name,
            name,
            expected=expected,
            actual=f"{ciphertext_bytes} stored bytes authenticated, {plaintext_bytes} restored",
            compared=compared,
            coverage=coverage,
        )
    return failed(
        name,
        name,
        expected=expected,
        actual="the stream was not read to its authenticated end",
        compared=compared,
        coverage=coverage,
    )


def backup_status(status: str, reasons: Sequence[str]) -> CheckResult:
    """Whether the backup is a faithful image of its source. A degraded backup (something could
    not be captured consistently) restores, but the report must say what it lacks: a warning,
    not a failure (restoring it is the best the backup can do)."""
    name = "backup_status"
    if status == "ok":
        return passed(name, name, expected="ok", actual="ok")
    return failed(
        name,
        name,
        critical=False,
        expected="ok",
        actual=status,
        detail="the backup is " + status + (": " + "; ".join(reasons) if reasons else ""),
    )


def _unavailable(name: str, kind: str, stats: Any, compared: str = "") -> CheckResult | None:
    """Why the check cannot compare (no statistics, or they failed at backup time), saying
    what it would have compared; None when it can."""
    result: CheckResult | None = None
    if stats is None:
        result = skipped(name, kind, "the backup carries no statistics (taken by an older drd)")
    elif isinstance(stats, Mapping) and isinstance(stats.get("error"), str):
        result = failed(
            name,
            kind,
            critical=False,
            detail=f"could not be taken at backup time: {stats['error']}",
        )
    if result is not None:
        result.compared = compared
    return result


_QUALIFIED = re.compile(r'^("(?:[^"]|"")*"|[^."]+)\.("(?:[^"]|"")*"|[^."]+)$')


def _unquote(part: str) -> str:
    return part[1:-1].replace('""', '"') if part.startswith('"') else part


def _excluded(table: str, patterns: Sequence[str]) -> bool:
    """Whether a table (as quote_ident names it) matches a pg_dump --exclude-table pattern.

    An approximation of psql's pattern rules, enough to tell a table the plan left out from a
    table the restore lost: `*` and `?` wildcards; a pattern with a dot matches schema.table,
    one without matches the table name in any schema."""
    match = _QUALIFIED.match(table)
    schema, name = (_unquote(match.group(1)), _unquote(match.group(2))) if match else ("", table)
    for pattern in patterns:
        if "." in pattern:
            ps, _, pt = pattern.partition(".")
            if fnmatch.fnmatchcase(schema, ps.strip('"')) and fnmatch.fnmatchcase(
                name, pt.strip('"')
            ):
                return True
        elif fnmatch.fnmatchcase(name, pattern.strip('"')):
            return True
    return False


def row_counts(
    expected: Any, actual: Mapping[str, int], exclude: Sequence[str] = ()
) -> CheckResult:
    """Every table the source had (and the dump kept) came back with the same number of rows."""
    name = "row_counts"
    compared = (
        "count(*) of every table (partitions each on their own), taken in the dump's snapshot"
    )
    unavailable = _unavailable(name, name, expected, compared)
    if unavailable is not None:
        return unavailable
    assert isinstance(expected, Mapping)
    wanted = {
        t: int(n) for t, n in expected.items() if not (t not in actual and _excluded(t, exclude))
    }
    differences: dict[str, Any] = {}
    for table in sorted(set(wanted) | set(actual)):
        want, got = wanted.get(table), actual.get(table)
        if want != got:
            differences[table] = {"expected": want, "actual": got}
    rows = sum(wanted.values())
    coverage = f"{len(wanted)} tables, {rows} rows"
    if not differences:
        summary = f"{len(wanted)} tables, {rows} rows"
        return passed(
            name, name, expected=summary, actual=summary, compared=compared, coverage=coverage
        )
    shown = dict(list(differences.items())[:_SHOW])
    missing = [t for t, d in differences.items() if d["actual"] is None]
    detail = f"{len(differences)} of {len(set(wanted) | set(actual))} tables differ"
    if missing:
        detail += f" ({len(missing)} missing: {', '.join(missing[:5])})"
    return failed(
        name,
        name,
        expected={t: d["expected"] for t, d in shown.items()},
        actual={t: d["actual"] for t, d in shown.items()},
        detail=detail,
        compared=compared,
        coverage=coverage,
    )


def schema(expected: Any, actual: Mapping[str, Any], *, comparable: bool = True) -> CheckResult:
    """The schema fingerprint of the restored copy equals the source's. `comparable` is False
    when source and restore servers differ in major version: then a mismatch only warns."""
    name = "schema"
    compared = "a fingerprint of every relation, column, constraint and index"
    coverage = "relations, columns, constraints, indexes"
    unavailable = _unavailable(name, name, expected, compared)
    if unavailable is not None:
        return unavailable
    assert isinstance(expected, Mapping)
    if expected.get("digest") == actual.get("digest"):
        return passed(
            name,
            name,
            expected=expected.get("digest"),
            actual=actual.get("digest"),
            compared=compared,
            coverage=coverage,
        )
    want_parts, got_parts = expected.get("parts") or {}, actual.get("parts") or {}
    differing = sorted(
        p for p in set(want_parts) | set(got_parts) if want_parts.get(p) != got_parts.get(p)
    )
    detail = "the schema fingerprint differs"
    if differing:
        detail += f" in: {', '.join(differing)}"
    if not comparable:
        detail += " (source and scratch server differ in major version: a warning only)"
    return failed(
        name,
        name,
        critical=comparable,
        expected={"digest": expected.get("digest"), **{p: want_parts.get(p) for p in differing}},
        actual={"digest": actual.get("digest"), **{p: got_parts.get(p) for p in differing}},
        detail=detail,
        compared=compared,
        coverage=coverage,
    )


def digests(
    expected: Any, actual: file_digests.DigestList, *, privileged: bool | None = None
) -> CheckResult:
    """Every restored file has the content archived, and no file is missing or extra; for a
    tree (file_digests.TreeDigests) also every entry's type, mode, owner, mtime, symlink target,
    device numbers, xattrs/ACLs and the hard links. `privileged`: whether the restore ran as
    root (default: whether this process is root); if not, owners, privileged xattrs and device
    nodes could not be restored and are not compared. The result says what was compared."""
    name = "file_digests"
    compared = (
        "the content (sha256) of every file and the list of paths; for a tree also every "
        "entry's type, mode, owner, mtime, link target, device numbers, xattrs/ACLs, hard links"
    )
    unavailable = _unavailable(name, name, expected, compared)
    if unavailable is not None:
        return unavailable
    assert isinstance(expected, Mapping)
    want = f"{expected.get('count')} files, tree digest {str(expected.get('tree'))[:16]}"
    got = f"{actual.count} files, tree digest {actual.tree[:16]}"
    if isinstance(actual, file_digests.TreeDigests):
        if privileged is None:
            privileged = os.geteuid() == 0
        found = file_digests.compare_tree(expected, actual, privileged=privileged)
        problems = found.problems
        covered = "compared " + "; ".join(found.compared)
        if found.not_compared:
            covered += "; not compared: " + "; ".join(found.not_compared)
        entries = expected.get("entries")
        if isinstance(entries, Mapping):
            want += f", {entries.get('count')} entries"
            got += f", {actual.entries.count} entries"
    else:
        problems = file_digests.compare(dict(expected), actual)
        covered = f"compared the content (sha256) of {expected.get('count')} files"
    fields = {"compared": compared, "coverage": covered}
    if not problems:
        return passed(name, name, expected=want, actual=got, detail=covered, **fields)
    return failed(
        name,
        name,
        expected=want,
        actual=got,
        detail="; ".join(problems) + f" ({covered})",
        **fields,
    )


def objects(
    expected: Any,
    actual: file_digests.DigestList,
    actual_bytes: int,
    problems: Sequence[str],
    *,
    where: str,
) -> CheckResult:
    """Every object of the bucket prefix came back under its name with its content and
    properties, none missing or extra; read back from where the copy is (`where`: the scratch
    prefix as GCS serves it, or the local directory's files and index)."""
    name = "objects"
    compared = (
        "every object's name, content (sha256, and so its size and CRC32C), content type, "
        "encoding, language, disposition, cache control and custom metadata, and the list of "
        "names"
    )
    unavailable = _unavailable(name, name, expected, compared)
    if unavailable is not None:
        return unavailable
    assert isinstance(expected, Mapping)
    want = f"{expected.get('count')} objects, digest {str(expected.get('tree'))[:16]}"
    got = f"{actual.count} objects, {actual_bytes} bytes, digest {actual.tree[:16]}"
    found = [*problems, *file_digests.compare(dict(expected), actual)]
    coverage = f"{expected.get('count')} objects read back from {where}"
    fields: dict[str, Any] = {"compared": compared, "coverage": coverage}
    if not found:
        return passed(name, name, expected=want, actual=got, **fields)
    shown = "; ".join(found[:_SHOW]) + (
        f" and {len(found) - _SHOW} more" if len(found) > _SHOW else ""
    )
    return failed(name, name, expected=want, actual=got, detail=shown, **fields)


# ---------------------------------------------------------------------------------------------
# PostgreSQL: sequences, objects, privileges, the database's properties, large objects, content


def _listed(items: Sequence[str]) -> str:
    more = f" and {len(items) - _SHOW} more" if len(items) > _SHOW else ""
    return ", ".join(items[:_SHOW]) + more


def sequences(expected: Any, actual: Mapping[str, Any]) -> CheckResult:
    """Every sequence has the value (and is_called) the backup holds."""
    name = "sequences"
    compared = (
        "the value and is_called of every sequence, as pg_dump wrote them into the backup, "
        "with the copy's"
    )
    unavailable = _unavailable(name, name, expected, compared)
    if unavailable is not None:
        return unavailable
    assert isinstance(expected, Mapping)

    def shown(state: Any) -> str | None:
        if not isinstance(state, Mapping):
            return None
        return f"{state.get('value')}{'' if state.get('is_called') else ' (not called)'}"

    differing = [s for s in sorted(expected) if shown(expected[s]) != shown(actual.get(s))]
    coverage = f"{len(expected)} sequences"
    if not differing:
        return passed(name, name, compared=compared, coverage=coverage)
    return failed(
        name,
        name,
        expected={s: shown(expected[s]) for s in differing[:_SHOW]},
        actual={s: shown(actual.get(s)) or "missing" for s in differing[:_SHOW]},
        detail=f"{len(differing)} of {len(expected)} sequences differ: {_listed(differing)}",
        compared=compared,
        coverage=coverage,
    )


def _parts_result(
    name: str,
    expected: Any,
    actual: Mapping[str, Any],
    *,
    compared: str,
    comparable: bool,
    keep: Any = None,
) -> CheckResult:
    """Inventory parts (drd.strategies.postgres_inventory) compared entry by entry: a hard
    difference fails the test, a soft one (an extension's version, the locale) warns."""
    from drd.strategies.postgres_inventory import differences

    unavailable = _unavailable(name, name, expected, compared)
    if unavailable is not None:
        return unavailable
    assert isinstance(expected, Mapping)
    hard: list[str] = []
    warn: list[str] = []
    not_taken: list[str] = []
    unread: list[str] = []
    counts: list[str] = []
    want: dict[str, str] = {}
    got: dict[str, str] = {}
    for part, exp in expected.items():
        act = actual.get(part)
        if not isinstance(exp, Mapping) or isinstance(exp.get("error"), str):
            not_taken.append(f"{part} ({exp.get('error') if isinstance(exp, Mapping) else '?'})")
            continue
        if not isinstance(act, Mapping) or isinstance(act.get("error"), str):
            unread.append(f"{part} ({act.get('error') if isinstance(act, Mapping) else '?'})")
            continue
        if exp.get("count"):
            counts.append(f"{part} {exp['count']}")
        found = differences(part, exp, act, keep or (lambda _entry: True))
        if found is None:
            hard.append(f"{part}: differs (too many objects to name which)")
            continue
        for difference in found:
            (warn if difference.soft else hard).append(str(difference))
            if len(want) < _SHOW:
                before = "absent" if difference.how == "unexpected" else "as backed up"
                want[difference.entry] = before
                got[difference.entry] = difference.how
    coverage = ", ".join(counts) or "nothing of these kinds"
    problems = [*(f"cannot read {p} in the copy" for p in unread), *hard]
    fields: dict[str, Any] = {"compared": compared, "coverage": coverage}
    if want:
        fields.update(expected=want, actual=got)
    if problems:
        detail = f"{len(problems)} difference(s): {_listed(problems)}"
        if warn:
            detail += f"; also (warnings): {_listed(warn)}"
        if not comparable:
            detail += " (source and scratch server differ in major version: a warning only)"
        return failed(name, name, critical=comparable, detail=detail, **fields)
    if warn or not_taken:
        notes = [*warn, *(f"not taken at backup time: {p}" for p in not_taken)]
        return failed(name, name, critical=False, detail=_listed(notes), **fields)
    return passed(name, name, **fields)


def inventory(expected: Any, actual: Mapping[str, Any], *, comparable: bool = True) -> CheckResult:
    """Every function, trigger, policy, type, domain, view, materialized view (and whether it
    is populated), extension, sequence definition, rule, ... and comment came back as it was."""
    return _parts_result(
        "inventory",
        expected,
        actual,
        compared=(
            "the definition of every object that is not a table's rows: functions, triggers, "
            "policies and row-level security, types, domains, views, materialized views "
            "(populated or not), extensions, sequence definitions, rules, statistics objects, "
            "collations, casts, operators, text search, publications, foreign data, comments "
            "(extension members left out: CREATE EXTENSION recreates them)"
        ),
        comparable=comparable,
    )


def grants(
    expected: Any, actual: Any, *, owners_kept: bool, comparable: bool = True
) -> CheckResult:
    """Every object has its owner and privileges (skipped where the scratch restore drops them
    on purpose: a shared scratch server, `owners: drop`)."""
    name = "grants"
    compared = (
        "the owner and privileges (ACL, column privileges, default privileges) of every schema, "
        "relation, function, type, language, foreign server, large object and publication"
    )
    if not owners_kept:
        return skipped(
            name,
            name,
            "owners and privileges are not restored into this scratch environment (owners: "
            "drop, a shared server): nothing to compare",
            compared=compared,
        )
    if isinstance(expected, Mapping) and "error" not in expected:
        expected = {"grants": expected}
    return _parts_result(
        name, expected, {"grants": actual}, compared=compared, comparable=comparable
    )


def database(
    expected: Any, actual: Any, *, owners_kept: bool, comparable: bool = True
) -> CheckResult:
    """The database's own properties: encoding, locale, connection limit, template flag,
    comment, settings, security labels; owner, ACL and per-role settings where owners are
    kept."""
    from drd.strategies.postgres_inventory import OWNER_ENTRIES, OWNER_PREFIX

    def keep(entry: str) -> bool:
        return owners_kept or not (entry in OWNER_ENTRIES or entry.startswith(OWNER_PREFIX))

    compared = (
        "the database's encoding, locale, connection limit, template flag, comment, settings "
        "(ALTER DATABASE ... SET), security labels"
        + (", owner, ACL and per-role settings" if owners_kept else " (owners dropped here)")
    )
    if isinstance(expected, Mapping) and "error" not in expected:
        expected = {"database": expected}
    return _parts_result(
        "database",
        expected,
        {"database": actual},
        compared=compared,
        comparable=comparable,
        keep=keep,
    )


def large_objects(expected: Any, actual: Mapping[str, Any]) -> CheckResult:
    """As many large objects, of the same total size."""
    name = "large_objects"
    compared = "the number of large objects and their total size"
    unavailable = _unavailable(name, name, expected, compared)
    if unavailable is not None:
        return unavailable
    assert isinstance(expected, Mapping)
    want = {"count": expected.get("count"), "bytes": str(expected.get("bytes"))}
    got = {"count": actual.get("count"), "bytes": str(actual.get("bytes"))}
    coverage = f"{want['count']} large objects, {want['bytes']} bytes"
    if want == got:
        return passed(name, name, compared=compared, coverage=coverage)
    return failed(
        name,
        name,
        expected=want,
        actual=got,
        detail=f"{got['count']} large objects ({got['bytes']} bytes) in the copy, "
        f"{want['count']} ({want['bytes']} bytes) in the backup",
        compared=compared,
        coverage=coverage,
    )


def _key(values: Any) -> str:
    parts = [str(v) for v in values] if isinstance(values, list) else [str(values)]
    return parts[0] if len(parts) == 1 else "(" + ", ".join(parts) + ")"


def content(expected: Any, actual: Mapping[str, Any], *, comparable: bool = True) -> CheckResult:
    """The rows themselves: every table's digest (whole), or its sampled key ranges' digests,
    are the backup's (drd.strategies.postgres_content)."""
    name = "content"
    unavailable = _unavailable(name, name, expected)
    mode = expected.get("mode") if isinstance(expected, Mapping) else None
    budget = expected.get("sample_rows") if isinstance(expected, Mapping) else None
    compared = (
        "a digest of every row's values"
        if mode == "full"
        else f"digests of the rows' values: tables of up to {budget} rows whole, bigger ones "
        "in ranges of consecutive primary-key values chosen at backup time"
    )
    if unavailable is not None:
        unavailable.compared = compared
        return unavailable
    assert isinstance(expected, Mapping)
    tables: Mapping[str, Any] = expected.get("tables") or {}
    whole = sampled = 0
    whole_rows = sampled_rows = sampled_of = 0
    uncovered: list[str] = []
    problems: list[str] = []
    notes: list[str] = []
    for table in sorted(tables):
        spec = tables[table]
        found = actual.get(table) or {}
        spec_mode = spec.get("mode")
        if spec_mode == "none":
            uncovered.append(table)
            continue
        if spec_mode == "error":
            notes.append(f"{table}: not digested at backup time ({spec.get('error')})")
            continue
        if found.get("mode") == "missing":
            problems.append(f"{table}: missing")
            continue
        if found.get("mode") == "error":
            problems.append(f"{table}: cannot be read in the copy ({found.get('error')})")
            continue
        if spec_mode == "whole":
            whole += 1
            whole_rows += int(spec.get("rows") or 0)
            if found.get("rows") != spec.get("rows"):
                problems.append(
                    f"{table}: {found.get('rows')} rows in the copy, {spec.get('rows')} in the "
                    "backup"
                )
            elif found.get("digest") != spec.get("digest"):
                problems.append(f"{table}: the rows' values differ")
            continue
        sampled += 1
        ranges = spec.get("ranges") or []
        sampled_of += int(spec.get("of") or 0)
        got_ranges = found.get("ranges") or []
        for index, r in enumerate(ranges):
            sampled_rows += int(r.get("rows") or 0)
            got = got_ranges[index] if index < len(got_ranges) else {}
            if got.get("rows") != r.get("rows") or got.get("digest") != r.get("digest"):
                key = ", ".join(spec.get("key") or [])
                span = f"the rows with {key} from {_key(r.get('first'))} to {_key(r.get('last'))}"
                if got.get("rows") == r.get("rows"):
                    problems.append(f"{table}: the values of {span} differ")
                else:
                    problems.append(
                        f"{table}: {got.get('rows')} of {span} in the copy, {r.get('rows')} "
                        "in the backup"
                    )
                break
    coverage = f"{whole + sampled + len(uncovered)} tables: {whole} whole ({whole_rows} rows)"
    if sampled:
        coverage += f", {sampled} sampled ({sampled_rows} of {sampled_of} rows)"
    if uncovered:
        coverage += (
            f", {len(uncovered)} not sampled (no primary key or NOT NULL unique index: "
            f"{_listed(uncovered)}; content: full digests them)"
        )
    fields: dict[str, Any] = {"compared": compared, "coverage": coverage}
    if problems:
        detail = f"{len(problems)} table(s) differ: {_listed(problems)}"
        if not comparable:
            detail += " (source and scratch server differ in major version: a warning only)"
        return failed(name, name, critical=comparable, detail=detail, **fields)
    if notes:
        return failed(name, name, critical=False, detail=_listed(notes), **fields)
    return passed(name, name, **fields)
