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
    if complete:
        return passed(
            name,
            name,
            expected=expected,
            actual=f"{ciphertext_bytes} stored bytes authenticated, {plaintext_bytes} restored",
        )
    return failed(
        name, name, expected=expected, actual="the stream was not read to its authenticated end"
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


def _unavailable(name: str, kind: str, stats: Any) -> CheckResult | None:
    if stats is None:
        return skipped(name, kind, "the backup carries no statistics (taken by an older drd)")
    if isinstance(stats, Mapping) and isinstance(stats.get("error"), str):
        return failed(
            name,
            kind,
            critical=False,
            detail=f"could not be taken at backup time: {stats['error']}",
        )
    return None


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
    unavailable = _unavailable(name, name, expected)
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
    if not differences:
        summary = f"{len(wanted)} tables, {rows} rows"
        return passed(name, name, expected=summary, actual=summary)
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
    )


def schema(expected: Any, actual: Mapping[str, Any], *, comparable: bool = True) -> CheckResult:
    """The schema fingerprint of the restored copy equals the source's. `comparable` is False
    when source and restore servers differ in major version: then a mismatch only warns."""
    name = "schema"
    unavailable = _unavailable(name, name, expected)
    if unavailable is not None:
        return unavailable
    assert isinstance(expected, Mapping)
    if expected.get("digest") == actual.get("digest"):
        return passed(name, name, expected=expected.get("digest"), actual=actual.get("digest"))
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
    unavailable = _unavailable(name, name, expected)
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
    if not problems:
        return passed(name, name, expected=want, actual=got, detail=covered)
    return failed(
        name, name, expected=want, actual=got, detail="; ".join(problems) + f" ({covered})"
    )
