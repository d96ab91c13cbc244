"""The plan's restore_test section: scratch environments and checks, validated with
`file:line: field: message` like the rest of the config; a scratch environment that is the
source itself is refused at validation time. Uses test_config's files and fake drd.strategies."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from drd import strategies
from drd.config.guard import path_conflict, same_database
from drd.config.loader import load_config
from drd.errors import ConfigError
from drd.restore_tests.spec import capture_queries
from drd.strategies.base import ContentDigest
from tests.unit.config.test_config import (  # noqa: F401 - fixtures
    EXAMPLE_REGISTRY,
    FAKE_REGISTRY,
    PLAN,
    TODAY,
    P,
    edit,
    findings,
    workdir,
    write,
)


@pytest.fixture
def fake_strategies() -> Iterator[None]:
    """test_config's fake kinds, and cloudsql: every kind that has scratch environments is
    known, as in the real registry (the scratch entries by kind are checked against them)."""
    with strategies.registered(*FAKE_REGISTRY.values(), EXAMPLE_REGISTRY["cloudsql"], only=True):
        yield


def with_restore_test(block: str) -> str:
    return edit(PLAN, [("retention: {max_age: 14d}\n", "retention: {max_age: 14d}\n" + block)])


NEVER = "restore tests never touch their source"
CASES = [
    pytest.param(
        "restore_test:\n  scratch:\n"
        '    main-db: {kind: postgres-server, dsn: "postgresql://postgres@localhost/billing"}\n',
        [
            f"{P}:10: restore_test.scratch.main-db.dsn: names the database of source main-db "
            f"itself (same host, port and database): {NEVER}; name the scratch server's "
            "maintenance database (e.g. dbname=postgres), drd creates its own database there"
        ],
        id="scratch-database-is-the-source",
    ),
    pytest.param(
        "restore_test:\n  scratch:\n"
        '    postgres: {kind: postgres-server, dsn: "host=127.0.0.1 port=5432 dbname=billing"}\n',
        [
            f"{P}:10: restore_test.scratch.postgres.dsn: names the database of source main-db "
            f"itself (same host, port and database): {NEVER}; name the scratch server's "
            "maintenance database (e.g. dbname=postgres), drd creates its own database there"
        ],
        id="scratch-for-the-kind-is-the-source",
    ),
    pytest.param(
        "restore_test:\n  scratch:\n    uploads: {kind: tempdir, dir: /srv/uploads/tmp}\n",
        [
            f"{P}:10: restore_test.scratch.uploads.dir: is inside the source's directory tree "
            "(source uploads): restore tests never write to their source"
        ],
        id="scratch-directory-inside-the-source",
    ),
    pytest.param(
        "restore_test:\n  scratch:\n    files: {kind: tempdir, dir: /srv/uploads}\n",
        [
            f"{P}:10: restore_test.scratch.files.dir: is the source's own path (source "
            "uploads): restore tests never write to their source"
        ],
        id="scratch-directory-is-the-source",
    ),
    pytest.param(
        "restore_test:\n  scratch:\n    main-db: {kind: tempdir}\n",
        [
            f"{P}:10: restore_test.scratch.main-db.kind: tempdir cannot hold source main-db "
            "(kind postgres; use ephemeral-postgres or postgres-server)"
        ],
        id="scratch-kind-does-not-fit-the-source",
    ),
    pytest.param(
        "restore_test:\n  scratch:\n    nope: {kind: tempdir}\n",
        [
            f"{P}:10: restore_test.scratch.nope: neither a source of this plan (main-db, "
            "uploads) nor a source kind (cloudsql, files, postgres, sqlite)"
        ],
        id="scratch-for-an-unknown-source",
    ),
    pytest.param(
        "restore_test:\n  scratch:\n    main-db: {kind: postgres-server}\n",
        [
            f"{P}:10: restore_test.scratch.main-db.dsn: field required for kind: "
            "postgres-server (its maintenance database)"
        ],
        id="scratch-server-without-dsn",
    ),
    pytest.param(
        'restore_test:\n  scratch:\n    main-db: {kind: postgres-server, dsn: "h=", dir: /x}\n',
        [
            f"{P}:10: restore_test.scratch.main-db.dir: only applies to kind: ephemeral-postgres "
            "or tempdir or ephemeral-mariadb"
        ],
        id="scratch-field-of-another-kind",
    ),
    pytest.param(
        "restore_test:\n  scratch:\n    main-db: {kind: docker}\n",
        [
            f"{P}:10: restore_test.scratch.main-db.kind: must be 'ephemeral-postgres', "
            "'postgres-server', 'tempdir', 'cloudsql-scratch-project', 'ephemeral-mariadb', "
            "'mysql-server' or 'gcs-scratch-bucket'"
        ],
        id="unknown-scratch-kind",
    ),
    pytest.param(
        "restore_test:\n  scratch:\n"
        '    postgres: {kind: postgres-server, dsn: "host=s password=x"}\n',
        [
            f"{P}:10: warning: restore_test.scratch.postgres.dsn: the DSN contains a password: "
            "put the password in PGPASSWORD/.pgpass, not the plan"
        ],
        id="scratch-dsn-with-password-is-a-warning",
    ),
    pytest.param(
        "restore_test:\n  checks:\n    uploads:\n      - sql: SELECT 1\n"
        "        expect: {non_empty: true}\n"
        "    main-db:\n      - {file: {path: a}}\n      - {name: x, command: 'true'}\n"
        "      - {name: x, command: [a, b]}\n    ghost:\n      - {command: 'true'}\n",
        [
            f"{P}:11: restore_test.checks.uploads[0].sql: sql checks do not apply to source "
            "uploads (kind files; use file, command)",
            f"{P}:14: restore_test.checks.main-db[0].file: file checks do not apply to source "
            "main-db (kind postgres; use sql, freshness, command)",
            f"{P}:16: restore_test.checks.main-db[2].name: duplicate check name 'x' (also [1])",
            f"{P}:17: restore_test.checks.ghost: not a source of this plan (main-db, uploads)",
        ],
        id="checks-that-do-not-fit",
    ),
    pytest.param(
        "restore_test:\n  checks:\n    main-db:\n      - sql: SELECT 1\n"
        "      - {file: {path: a}, command: 'true'}\n"
        "      - {freshness: {table: t, within: 1h}}\n"
        "      - {sql: SELECT 1, expect: {equals: 1, at_least: 3}}\n"
        "      - {command: [], timeout: 0s}\n",
        [
            f"{P}:11: restore_test.checks.main-db[0].expect: field required with sql",
            f"{P}:12: restore_test.checks.main-db[1].command: cannot be combined with file in "
            "one check",
            f"{P}:13: restore_test.checks.main-db[2].freshness.column: field required with table",
            f"{P}:14: restore_test.checks.main-db[3].expect.at_least: cannot be combined with "
            "equals",
            f"{P}:15: restore_test.checks.main-db[4].command: expected a command line, or a "
            "non-empty list of arguments",
            f"{P}:15: restore_test.checks.main-db[4].timeout: must be longer than 0s",
        ],
        id="malformed-checks",
    ),
    pytest.param(
        "restore_test:\n  scratch:\n    main-db: {kind: postgres-server, dsn: x, secret: y}\n",
        [
            f"{P}:10: restore_test.scratch.main-db.secret: looks like a secret: config files "
            "must not hold keys, passwords or tokens (keys come from keys.source: env, "
            "credential or stdin)"
        ],
        id="secret-looking-scratch-field",
    ),
]


@pytest.mark.parametrize(("block", "expected"), CASES)
def test_restore_test_mistakes(workdir: Path, block: str, expected: list[str]) -> None:  # noqa: F811
    assert findings(workdir, plan=with_restore_test(block)) == expected


def test_a_full_restore_test_section_loads(workdir: Path) -> None:  # noqa: F811
    block = """\
restore_test:
  every: 12h
  timeout: 20m
  also_random_older: true
  scratch:
    postgres: {kind: postgres-server, dsn: "host=10.0.0.9 dbname=postgres"}
    main-db: {kind: ephemeral-postgres, dir: scratch, user: pgtest}
    uploads: {kind: tempdir, dir: /var/tmp/drd}
  checks:
    main-db:
      - sql: SELECT sum(amount) FROM billing.ledger
        expect: {matches_source: true}
        name: ledger
      - {freshness: {table: billing.invoices, column: created_at, within: 2h}, critical: false}
      - {command: [./check.sh, --fast], timeout: 1m}
    uploads:
      - {file: {path: logo.png, min_size: 1KiB}}
"""
    write(workdir, plans={"billing.yaml": with_restore_test(block)})
    (plan,) = load_config(Path("drd.yaml"), today=TODAY).plans
    rt = plan.restore_test
    assert (rt.every, rt.timeout, rt.also_random_older) == (
        timedelta(hours=12),
        timedelta(minutes=20),
        True,
    )
    db, uploads = plan.source("main-db"), plan.source("uploads")
    assert rt.scratch_for(db).kind == "ephemeral-postgres"  # the source's own entry wins
    assert rt.scratch_for(db).dir == workdir / "scratch"  # relative to drd.yaml
    assert rt.scratch_for(uploads).dir == Path("/var/tmp/drd")
    ledger, fresh, command = rt.checks_for("main-db")
    assert ledger.display_name(1) == "ledger" and fresh.display_name(2) == "freshness-2"
    assert not fresh.critical and command.timeout == timedelta(minutes=1)
    assert rt.checks_for("uploads")[0].file is not None
    assert rt.checks_for("uploads")[0].file.min_size == 1024  # type: ignore[union-attr]
    assert list(capture_queries(rt.checks_for("main-db")).values()) == [
        "SELECT sum(amount) FROM billing.ledger"
    ]


def test_defaults(workdir: Path) -> None:  # noqa: F811
    write(workdir)
    (plan,) = load_config(Path("drd.yaml"), today=TODAY).plans
    rt = plan.restore_test
    assert rt.scratch_for(plan.source("main-db")).kind == "ephemeral-postgres"
    assert rt.scratch_for(plan.source("uploads")).kind == "tempdir"
    assert rt.checks_for("main-db") == [] and not rt.also_random_older


@pytest.mark.parametrize(
    ("scratch", "source", "same"),
    [
        ("host=localhost dbname=billing", "postgresql://127.0.0.1:5432/billing", True),
        ("host=/var/run/postgresql dbname=billing", "host=::1 dbname=billing", True),
        ("host=db1,db2 dbname=billing", "host=db2 dbname=billing", True),
        ("host=DB1 port=5432 dbname=billing", "host=db1 dbname=billing", True),
        ("host=localhost dbname=postgres", "host=localhost dbname=billing", False),
        ("host=localhost port=5433 dbname=billing", "host=localhost dbname=billing", False),
        ("host=db1 dbname=billing", "host=db2 dbname=billing", False),
        ("host=db1 user=billing", "host=db1 dbname=billing", True),  # dbname defaults to user
    ],
)
def test_same_database(scratch: str, source: str, same: bool) -> None:
    assert same_database(scratch, source) is same


def test_path_conflict(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tree)
    assert path_conflict(tree, str(tree), "files") == "is the source's own path"
    assert path_conflict(tmp_path / "link" / "sub", str(tree), "files") is not None
    assert path_conflict(tmp_path, str(tree), "files") is None  # a parent is fine
    db = tmp_path / "app.db"
    assert path_conflict(db, str(db), "sqlite") == "is the source's own path"
    assert path_conflict(tmp_path, str(db), "sqlite") is None


def test_a_kind_without_a_default_scratch_is_an_error(workdir: Path) -> None:  # noqa: F811
    """A plan whose restore test cannot run fails validation (it was a warning)."""
    plan = edit(
        with_restore_test("restore_test: {every: 24h}\n"),
        [("  - name: uploads\n", "  - {name: ledger, kind: cloudsql}\n  - name: uploads\n")],
    )
    assert findings(workdir, plan=plan) == [
        f"{P}:8: restore_test.scratch: source ledger (kind cloudsql) has no scratch "
        "environment, so its restore tests cannot run: give one ({kind: "
        "cloudsql-scratch-project, project: ...})"
    ]
    write(workdir, plans={"billing.yaml": plan})
    with pytest.raises(ConfigError, match="has no scratch environment"):
        load_config(Path("drd.yaml"), today=TODAY)


def test_content_digests_sampled_by_default_full_by_source_or_kind(
    workdir: Path,  # noqa: F811
    fake_strategies: None,
) -> None:
    plan = with_restore_test(
        "restore_test:\n  sample_rows: 500\n"
        "  content: {main-db: full, files: sampled, nosuch: full}\n"
    )
    assert findings(workdir, plan=plan) == [
        f"{P}:10: restore_test.content.nosuch: neither a source of this plan (main-db, uploads) "
        "nor the kind of one (files, postgres)"
    ]
    write(workdir, plans={"billing.yaml": plan.replace(", nosuch: full", "")})
    (loaded,) = load_config(Path("drd.yaml"), today=TODAY).plans
    rt = loaded.restore_test
    assert rt.content_for(loaded.source("main-db")) == ContentDigest("full", 500)
    assert rt.content_for(loaded.source("uploads")) == ContentDigest("sampled", 500)
    write(workdir, plans={"billing.yaml": with_restore_test("restore_test: {content: full}\n")})
    (loaded,) = load_config(Path("drd.yaml"), today=TODAY).plans
    assert loaded.restore_test.content_for(loaded.source("uploads")) == ContentDigest("full")
    bad = with_restore_test("restore_test: {content: everything, sample_rows: 0}\n")
    found = findings(workdir, plan=bad)
    assert any("restore_test.content" in f for f in found), found
    assert any("restore_test.sample_rows" in f for f in found), found
