"""The contenders. Each one backs up the benchmark database and restores it into a new
database (or, for pgBackRest, a new cluster), measured the same way.

- floor:       `pg_dump -Fc -Z0` to /dev/null; `pg_restore` from a local uncompressed dump file
- floor-zstd:  `pg_dump -Fc -Z0 | zstd -1` to a file; `zstd -d | pg_restore`: a reference, not a
               peer (no encryption, one copy): what compressing at drd's level costs by itself
- drd-local:   drd's CLI, two local-directory regions; restore from one of them
- drd-gcs:     drd's CLI, two fake-gcs-server regions; restore from one of them
- gpg:         `pg_dump -Fc | gpg --symmetric` (the classic cron script); `gpg -d | pg_restore`
- restic:      `pg_dump | restic backup --stdin`; `restic dump | psql`
- floor-parallel: `pg_dump -Fd -Z0 -j N` to a directory; `pg_restore -j N` from it (N = cores)
- drd-physical: drd's `postgres-physical` source (pg_basebackup) of the same throwaway cluster
               pgBackRest backs up, two local regions; restore to the end of the base backup
               into a new data directory, started (`--start`) until it accepts writes
- pgbackrest:  full physical backup of a throwaway cluster holding the same data; restore into a
               new data directory, start it and wait until recovery has finished

Every restore goes into a fresh target, is checked (row counts of the two big tables) outside the
timed section, and dropped afterwards. Every restore of a logical dump uses the same flags drd
uses (`--single-transaction --exit-on-error`, or psql's equivalents; floor-parallel cannot run
`-j` in one transaction), and the same TOAST compression drd's restore session sets
(`default_toast_compression=lz4` where the server offers it, through PGOPTIONS), so that the
numbers compare the tools, not restore options.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import psycopg
import yaml
from psycopg import sql

from bench.dataset import PG_BIN, Dataset, admin_dsn, dsn_for
from bench.measure import Measurement, Stage, run_drd, run_pipeline, timed, tree_size
from bench.services import (
    FakeGcs,
    ThrowawayCluster,
    as_postgres,
    chown_postgres,
    free_port,
    run_as_postgres,
    run_checked,
)

PASSPHRASE = "drd-bench-not-a-secret-passphrase"
CHECK_TABLES = ("pgbench_accounts", "bench_docs")


@dataclass
class RunContext:
    """What every tool may use during one benchmark run."""

    dataset: Dataset
    work: Path  # scratch space for this run (dumps, repositories, configs)
    data: Path  # kept across runs (the pgBackRest cluster)
    token: str  # unique per run: restore target names
    python: str = sys.executable
    repo_root: Path = Path(__file__).resolve().parent.parent
    #: what several tools of this run use together (the physical contenders' cluster)
    shared: dict[str, Any] = field(default_factory=dict)

    def target_name(self, tool: str, rep: int) -> str:
        return f"drd_bench_r_{self.token}_{tool.replace('-', '_')}_{rep}"

    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DRD_")}
        env.update(NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
        # drd and the peers must never go looking for ambient Google credentials.
        env.update(GCE_METADATA_HOST="127.0.0.1:9", GCE_METADATA_IP="127.0.0.1:9")
        env["NO_GCE_CHECK"] = "True"
        return env


class Tool(ABC):
    name: ClassVar[str]
    description: ClassVar[str]
    #: roles of the processes whose peak RSS is "the tool's own"
    restore_kind: ClassVar[str] = "logical"

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx

    def unavailable(self) -> str | None:
        """Why this tool cannot run here, or None."""
        return None

    def setup(self) -> None:  # noqa: B027 - an optional hook
        """Once per run, untimed."""

    def before_rep(self, rep: int) -> None:  # noqa: B027 - an optional hook
        """Before each repetition's backup, untimed (e.g. a fresh repository)."""

    @abstractmethod
    def backup(self, rep: int) -> Measurement: ...

    @abstractmethod
    def restore(self, rep: int) -> Measurement:
        """Restore the backup of `rep` into a fresh target; leaves it for verify()."""

    def verify(self, rep: int) -> None:
        """Untimed: the restored target holds the data; raise if not."""
        check_counts(self.ctx.dataset.dsn, dsn_for(self.ctx.target_name(self.name, rep)))

    def drop_target(self, rep: int) -> None:
        drop_database(self.ctx.target_name(self.name, rep))

    def after_rep(self, rep: int) -> None:  # noqa: B027 - an optional hook
        """After each repetition's restore, untimed."""

    def teardown(self) -> None:  # noqa: B027 - an optional hook
        """Once per run, also after a failure."""


# ------------------------------------------------------------------------------ helpers


def pg(tool: str) -> str:
    return f"{PG_BIN}/{tool}"


def create_database(name: str) -> None:
    with psycopg.connect(admin_dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))


def drop_database(name: str, dsn: str | None = None) -> None:
    with psycopg.connect(dsn or admin_dsn(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def counts(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        out = {}
        for table in CHECK_TABLES:
            row = conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
            ).fetchone()
            assert row is not None
            out[table] = int(row[0])
    return out


def check_counts(source_dsn: str, restored_dsn: str) -> None:
    expected, found = counts(source_dsn), counts(restored_dsn)
    if expected != found:
        raise RuntimeError(f"restored rows {found} != source rows {expected}")


def restore_flags() -> list[str]:
    return ["--exit-on-error", "--single-transaction", "--no-password"]


@functools.cache
def restore_toast_compression() -> str | None:
    """What drd's restore session sets (strategies/postgres.py: lz4 where the server offers
    it): every logical restore here gets the same, or the floor pays for pglz and drd does not."""
    with psycopg.connect(admin_dsn(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'"
        ).fetchone()
    return "lz4" if row is not None and row[0] else None


def restore_env() -> dict[str, str]:
    """The environment of a peer's or floor's restore client (pg_restore, psql)."""
    env = dict(os.environ)
    toast = restore_toast_compression()
    if toast is not None:
        setting = f"-c default_toast_compression={toast}"
        env["PGOPTIONS"] = f"{env['PGOPTIONS']} {setting}" if env.get("PGOPTIONS") else setting
    return env


def pg_restore_from(
    ctx: RunContext, tool: str, rep: int, source: Path, decoders: list[Stage]
) -> Measurement:
    """CREATE DATABASE for this repetition, then `source | decoders... | pg_restore`."""
    target = ctx.target_name(tool, rep)
    m = timed(lambda: create_database(target))
    restore = Stage(
        [pg("pg_restore"), *restore_flags(), f"--dbname={dsn_for(target)}"],
        "pg_restore",
        # pg_restore is the floor's tool itself; behind a decoder it is the peer's PostgreSQL
        # client, reported apart (ProcUsage roles).
        role="pg" if decoders else "tool",
        env=restore_env(),
    )
    m.add(run_pipeline([*decoders, restore], stdin_path=source))
    return m


# ------------------------------------------------------------------------------ the floor


class Floor(Tool):
    name = "floor"
    description = "pg_dump -Fc -Z0 > /dev/null; pg_restore from a local uncompressed file"

    def setup(self) -> None:
        # The restore input, made once (untimed): the same dump drd's pipeline starts from.
        self.dump_file = self.ctx.work / "floor.dump"
        run_pipeline(
            [Stage([pg("pg_dump"), "-Fc", "-Z0", f"--dbname={self.ctx.dataset.dsn}"], "pg_dump")],
            stdout_path=self.dump_file,
        )

    def backup(self, rep: int) -> Measurement:
        m = run_pipeline(
            [Stage([pg("pg_dump"), "-Fc", "-Z0", f"--dbname={self.ctx.dataset.dsn}"], "pg_dump")]
        )
        m.stored_bytes = self.dump_file.stat().st_size
        return m

    def restore(self, rep: int) -> Measurement:
        return pg_restore_from(self.ctx, self.name, rep, self.dump_file, [])


class _DumpThroughFilter(Tool):
    """`pg_dump ARGS | encode > file`, restored by `decode < file | pg_restore`; the file is
    removed after each repetition. `program` is what must be installed."""

    program: ClassVar[str]
    dump_args: ClassVar[tuple[str, ...]]
    out_name: ClassVar[str]

    def unavailable(self) -> str | None:
        return None if shutil.which(self.program) else f"{self.program} is not installed"

    def setup(self) -> None:
        self.out = self.ctx.work / self.out_name

    @abstractmethod
    def encode(self) -> Stage: ...

    @abstractmethod
    def decode(self) -> Stage: ...

    def backup(self, rep: int) -> Measurement:
        dump = [pg("pg_dump"), *self.dump_args, f"--dbname={self.ctx.dataset.dsn}"]
        m = run_pipeline([Stage(dump, "pg_dump", "pg"), self.encode()], stdout_path=self.out)
        m.stored_bytes = self.out.stat().st_size
        return m

    def restore(self, rep: int) -> Measurement:
        return pg_restore_from(self.ctx, self.name, rep, self.out, [self.decode()])

    def after_rep(self, rep: int) -> None:
        self.out.unlink(missing_ok=True)


class FloorZstd(_DumpThroughFilter):
    name = "floor-zstd"
    description = "pg_dump -Fc -Z0 | zstd -1 > file; zstd -d | pg_restore (no encryption)"
    program = "zstd"
    dump_args = ("-Fc", "-Z0")
    out_name = "floor.dump.zst"

    def encode(self) -> Stage:
        # One thread, as drd compresses: a second would compete for the same 2 cores.
        return Stage(["zstd", "-1", "-T1", "-q", "-c"], "zstd")

    def decode(self) -> Stage:
        return Stage(["zstd", "-d", "-q", "-c"], "zstd")


class FloorParallel(Tool):
    """What PostgreSQL's own tools reach with every core: a directory archive, one file per
    table, dumped and restored by N workers (N = cores). Not a peer either: no compression, no
    encryption, one copy, and a seekable directory on the same disk."""

    name = "floor-parallel"
    description = "pg_dump -Fd -Z0 -j N to a directory; pg_restore -j N from it (N = cores)"

    def setup(self) -> None:
        self.jobs = os.cpu_count() or 1
        self.out = self.ctx.work / "floor-parallel.dir"

    def before_rep(self, rep: int) -> None:
        shutil.rmtree(self.out, ignore_errors=True)  # pg_dump -Fd refuses an existing one

    def backup(self, rep: int) -> Measurement:
        dump = [
            *(pg("pg_dump"), "-Fd", "-Z0", "-j", str(self.jobs)),
            *("-f", str(self.out), f"--dbname={self.ctx.dataset.dsn}"),
        ]
        m = run_pipeline([Stage(dump, "pg_dump")])
        m.stored_bytes = tree_size(self.out)
        m.notes["jobs"] = self.jobs
        return m

    def restore(self, rep: int) -> Measurement:
        target = self.ctx.target_name(self.name, rep)
        m = timed(lambda: create_database(target))
        # --single-transaction and --jobs exclude each other: each worker commits its own.
        argv = [
            *(pg("pg_restore"), "-j", str(self.jobs), "--exit-on-error", "--no-password"),
            *(f"--dbname={dsn_for(target)}", str(self.out)),
        ]
        m.add(run_pipeline([Stage(argv, "pg_restore", env=restore_env())]))
        m.notes["jobs"] = self.jobs
        return m

    def after_rep(self, rep: int) -> None:
        shutil.rmtree(self.out, ignore_errors=True)

    def teardown(self) -> None:
        if hasattr(self, "out"):
            shutil.rmtree(self.out, ignore_errors=True)


# ------------------------------------------------------------------------------ drd


class _Drd(Tool):
    plan: ClassVar[str]
    regions: ClassVar[tuple[str, str]]
    config: Path

    def setup(self) -> None:
        self.home = self.ctx.work / "drd"
        self.home.mkdir(parents=True, exist_ok=True)
        self.key = subprocess.run(
            [self.ctx.python, "-m", "drd.cli.main", "keygen", "--quiet"],
            check=True,
            capture_output=True,
            text=True,
            env=self.ctx.base_env(),
        ).stdout.strip()

    def env(self) -> dict[str, str]:
        env = self.ctx.base_env()
        env["DRD_KEYS"] = self.key
        env["PYTHONPATH"] = str(self.ctx.repo_root)  # bench.drd_probe, also from other cwds
        return env

    def write_config(
        self, regions: list[dict[str, object]], source: dict[str, object] | None = None
    ) -> Path:
        plans = self.home / "plans"
        plans.mkdir(exist_ok=True)
        plan = {
            "name": self.plan,
            "owner": "bench@example.com",
            "reviewed_on": "2026-06-01",
            "targets": {"rpo": "6h", "rto": "1h"},
            "schedule": {"every": "4h"},
            "storage": {"regions": [r["name"] for r in regions], "min_copies": len(regions)},
            "sources": [source or {"name": "db", "kind": "postgres", "dsn": self.ctx.dataset.dsn}],
        }
        (plans / f"{self.plan}.yaml").write_text(yaml.safe_dump(plan))
        config = {
            "state_dir": str(self.home / f"state-{self.plan}"),
            "plans": [f"plans/{self.plan}.yaml"],
            "keys": {"source": "env", "name": "DRD_KEYS"},
            "regions": regions,
        }
        path = self.home / f"{self.plan}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    def drd(self, *args: str, child: str) -> tuple[Measurement, str]:
        return run_drd(
            self.ctx.python,
            ["--config", str(self.config), *args],
            env=self.env(),
            cwd=self.home,
            child_name=child,
        )

    def backup(self, rep: int) -> Measurement:
        m, out = self.drd("backup", f"{self.plan}/db", child="pg_dump")
        if f"ok {self.plan}/db@" not in out:
            raise RuntimeError(f"drd backup did not report success: {out}")
        m.stored_bytes = self.stored_per_copy()
        m.notes["copies"] = len(self.regions)
        return m

    def restore(self, rep: int) -> Measurement:
        region = self.regions[rep % len(self.regions)]
        target = dsn_for(self.ctx.target_name(self.name, rep))
        m, out = self.drd(
            "restore", f"{self.plan}/db", "--to", target, "--region", region, child="pg_restore"
        )
        if f"from region {region}" not in out:
            raise RuntimeError(f"drd restore did not read region {region}: {out}")
        m.notes["region"] = region
        return m

    @abstractmethod
    def stored_per_copy(self) -> int: ...


class DrdLocal(_Drd):
    name = "drd-local"
    description = "drd backup to two local-directory regions; restore from one"
    plan = "bench-local"
    regions = ("local-a", "local-b")

    def setup(self) -> None:
        super().setup()
        self.roots = {r: self.home / "regions" / r for r in self.regions}
        self.config = self.write_config(
            [{"name": r, "url": f"file:{path}"} for r, path in self.roots.items()]
        )

    def before_rep(self, rep: int) -> None:
        for path in self.roots.values():
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir(parents=True)

    def stored_per_copy(self) -> int:
        return tree_size(self.roots[self.regions[0]])

    def teardown(self) -> None:
        for path in getattr(self, "roots", {}).values():
            shutil.rmtree(path, ignore_errors=True)


class DrdGcs(_Drd):
    name = "drd-gcs"
    description = "drd backup to two fake-gcs-server regions (default 16 MiB chunks); restore"
    plan = "bench-gcs"
    regions = ("gcs-a", "gcs-b")

    def setup(self) -> None:
        super().setup()
        self.servers = {
            r: FakeGcs(loc, self.ctx.work / f"fake-gcs-{r}.log")
            for r, loc in zip(self.regions, ("EUROPE-WEST1", "US-CENTRAL1"), strict=True)
        }
        regions: list[dict[str, object]] = []
        for r, server in self.servers.items():
            server.start()
            server.create_bucket(f"bench-{r}")
            regions.append(
                {
                    "name": r,
                    "url": f"gs://bench-{r}/drd",
                    "project": "bench",
                    "endpoint": server.endpoint,
                    "credentials": {"source": "anonymous"},
                }
            )
        self.config = self.write_config(regions)

    def before_rep(self, rep: int) -> None:
        for r, server in self.servers.items():
            server.empty_bucket(f"bench-{r}")

    def _emulator_cpu(self) -> float:
        return sum(server.cpu_seconds() for server in self.servers.values())

    def backup(self, rep: int) -> Measurement:
        before = self._emulator_cpu()
        m = super().backup(rep)
        m.notes["emulator_cpu_s"] = self._emulator_cpu() - before
        return m

    def restore(self, rep: int) -> Measurement:
        before = self._emulator_cpu()
        m = super().restore(rep)
        m.notes["emulator_cpu_s"] = self._emulator_cpu() - before
        return m

    def stored_per_copy(self) -> int:
        r = self.regions[0]
        return self.servers[r].stored_bytes(f"bench-{r}")

    def teardown(self) -> None:
        for server in getattr(self, "servers", {}).values():
            server.stop()


# ------------------------------------------------------------------------------ peers


class GpgPeer(_DumpThroughFilter):
    name = "gpg"
    description = "pg_dump -Fc | gpg --symmetric (AES256, gpg defaults otherwise) to a file"
    program = "gpg"
    dump_args = ("-Fc",)  # pg_dump's default compression, as the classic script has it
    out_name = "gpg-backup.dump.gpg"

    def setup(self) -> None:
        super().setup()
        self.home = self.ctx.work / "gnupg"
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.passfile = self.ctx.work / "gpg-passphrase"
        self.passfile.write_text(PASSPHRASE)

    def gpg(self, *args: str) -> list[str]:
        return [
            "gpg",
            "--homedir",
            str(self.home),
            "--batch",
            "--yes",
            "--quiet",
            "--pinentry-mode",
            "loopback",
            "--passphrase-file",
            str(self.passfile),
            "--no-symkey-cache",
            *args,
        ]

    def encode(self) -> Stage:
        return Stage(self.gpg("--symmetric", "--cipher-algo", "AES256", "-o", "-"), "gpg")

    def decode(self) -> Stage:
        return Stage(self.gpg("--decrypt"), "gpg")

    def teardown(self) -> None:
        # gpg starts an agent for the passphrase even with --no-symkey-cache; it daemonizes.
        if hasattr(self, "home"):
            subprocess.run(
                ["gpgconf", "--homedir", str(self.home), "--kill", "gpg-agent"],
                capture_output=True,
                check=False,
            )


class ResticPeer(Tool):
    name = "restic"
    description = "pg_dump | restic backup --stdin (fresh repository each repetition)"

    def unavailable(self) -> str | None:
        return None if shutil.which("restic") else "restic is not installed"

    def setup(self) -> None:
        self.repo = self.ctx.work / "restic-repo"
        self.cache = self.ctx.work / "restic-cache"

    def env(self) -> dict[str, str]:
        env = self.ctx.base_env()
        env.update(
            RESTIC_REPOSITORY=str(self.repo),
            RESTIC_PASSWORD=PASSPHRASE,
            RESTIC_CACHE_DIR=str(self.cache),
        )
        return env

    def before_rep(self, rep: int) -> None:
        # A fresh repository: a full backup, like every other contender's. (Into an existing
        # repository restic would deduplicate unchanged data, a different measurement.)
        shutil.rmtree(self.repo, ignore_errors=True)
        shutil.rmtree(self.cache, ignore_errors=True)
        subprocess.run(
            ["restic", "init", "--repository-version", "2"],
            check=True,
            capture_output=True,
            env=self.env(),
        )

    def backup(self, rep: int) -> Measurement:
        m = run_pipeline(
            [
                Stage([pg("pg_dump"), f"--dbname={self.ctx.dataset.dsn}"], "pg_dump", "pg"),
                Stage(
                    ["restic", "backup", "--quiet", "--stdin", "--stdin-filename", "db.sql"],
                    "restic",
                    env=self.env(),
                ),
            ]
        )
        m.stored_bytes = tree_size(self.repo)
        return m

    def restore(self, rep: int) -> Measurement:
        target = self.ctx.target_name(self.name, rep)
        m = timed(lambda: create_database(target))
        m.add(
            run_pipeline(
                [
                    Stage(
                        ["restic", "dump", "--quiet", "latest", "db.sql"], "restic", env=self.env()
                    ),
                    Stage(
                        [
                            *(pg("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1"),
                            *("--single-transaction", "-o", "/dev/null"),
                            f"--dbname={dsn_for(target)}",
                        ],
                        "psql",
                        "pg",
                        env=restore_env(),
                    ),
                ]
            )
        )
        return m

    def teardown(self) -> None:
        for path in (getattr(self, "repo", None), getattr(self, "cache", None)):
            if path is not None:
                shutil.rmtree(path, ignore_errors=True)


class PhysicalCluster:
    """The cluster both physical contenders (pgBackRest, drd-physical) back up. pgBackRest needs
    WAL archiving, which means a restart of the server: instead of reconfiguring the shared
    system cluster, a throwaway cluster of our own, loaded once with the same database (pg_dump
    | pg_restore) and kept under bench/data. One per run and size: the first contender that
    needs it starts it, the last one stops it, so both measure the same files."""

    stanza = "bench"

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.root = ctx.data / f"pgbackrest-{ctx.dataset.size_mb}mb"
        self.repo = self.root / "repo"
        self.conf = self.root / "pgbackrest.conf"
        self.cluster = ThrowawayCluster(self.root / "cluster", self.stanza, self.conf)
        # Without pgBackRest nothing reads the archive, and a failing archive_command would
        # keep every WAL segment in pg_wal.
        self.archive = shutil.which("pgbackrest") is not None
        self.users = 0

    @classmethod
    def of(cls, ctx: RunContext) -> PhysicalCluster:
        found = ctx.shared.get("physical-cluster")
        if not isinstance(found, PhysicalCluster):
            found = ctx.shared["physical-cluster"] = cls(ctx)
        return found

    def acquire(self) -> PhysicalCluster:
        if self.users == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            chown_postgres(self.root)
            reach = as_postgres(["test", "-x", str(self.root)])
            if subprocess.run(reach, capture_output=True, check=False).returncode != 0:
                raise RuntimeError(
                    f"--data {self.ctx.data}: the postgres user cannot reach {self.root} "
                    "(the cluster runs as postgres: every directory above it needs o+x)"
                )
            for d in (self.root / "log", self.root / "lock", self.root / "spool"):
                d.mkdir(exist_ok=True)
                chown_postgres(d)
            self.cluster.ensure_initialized()
            self.cluster.start(archive=self.archive)
            self.write_conf()
            if self.archive:
                self.fresh_repo()
            self._load_once()
        self.users += 1
        return self

    def release(self) -> None:
        self.users -= 1
        if self.users == 0:
            self.cluster.stop()
            shutil.rmtree(self.repo, ignore_errors=True)

    def write_conf(self) -> None:
        self.conf.write_text(
            "[global]\n"
            f"repo1-path={self.repo}\n"
            "repo1-cipher-type=aes-256-cbc\n"
            f"repo1-cipher-pass={PASSPHRASE}\n"
            "repo1-retention-full=1\n"
            "start-fast=y\n"
            # The default 60 s for the backup's last WAL segment to be archived was too short
            # on a slow shared host: the backup failed instead of being measured.
            "archive-timeout=600\n"
            "log-level-console=warn\n"
            "log-level-file=off\n"
            f"log-path={self.root / 'log'}\n"
            f"lock-path={self.root / 'lock'}\n"
            f"spool-path={self.root / 'spool'}\n"
            f"\n[{self.stanza}]\n"
            f"pg1-path={self.cluster.data}\n"
            f"pg1-port={self.cluster.port}\n"
            f"pg1-socket-path={self.cluster.sock}\n"
            "pg1-user=postgres\n"
        )
        chown_postgres(self.conf)

    def fresh_repo(self) -> None:
        """An empty pgBackRest repository with its stanza: archive-push works from now on."""
        if self.repo.exists():
            shutil.rmtree(self.repo)
        self.repo.mkdir()
        chown_postgres(self.repo)
        run_checked(self.pgbackrest("stanza-create"))

    def pgbackrest(self, *args: str) -> list[str]:
        return as_postgres(
            ["pgbackrest", f"--config={self.conf}", f"--stanza={self.stanza}", *args]
        )

    def _load_once(self) -> None:
        name = self.ctx.dataset.name
        dsn = self.cluster.dsn(name)
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                if conn.execute("SELECT to_regclass('drd_bench_meta')").fetchone() == (
                    "drd_bench_meta",
                ):
                    return
        except psycopg.Error:
            pass
        drop_database(name, self.cluster.dsn())
        with psycopg.connect(self.cluster.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        # drd_bench_meta is restored last-ish, but only a successful pg_restore counts.
        run_pipeline(
            [
                Stage([pg("pg_dump"), "-Fc", "-Z0", f"--dbname={self.ctx.dataset.dsn}"], "pg_dump"),
                Stage([pg("pg_restore"), *restore_flags(), f"--dbname={dsn}"], "pg_restore"),
            ]
        )
        with psycopg.connect(self.cluster.dsn(), autocommit=True) as conn:
            conn.execute("CHECKPOINT")


class _RestoredCluster:
    """A data directory a physical restore made, started on its own port."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.port = 0

    def dsn(self, dbname: str = "postgres") -> str:
        return psycopg.conninfo.make_conninfo(
            "", host="127.0.0.1", port=str(self.port), user="postgres", dbname=dbname
        )

    def remove(self) -> None:
        if (self.path / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError):
                run_as_postgres([pg("pg_ctl"), "-D", str(self.path), "-m", "immediate", "stop"])
        shutil.rmtree(self.path, ignore_errors=True)


class PgBackRestPeer(Tool):
    """pgBackRest backs up the PhysicalCluster (the same data, in a cluster of its own)."""

    name = "pgbackrest"
    description = "pgbackrest --type=full backup of a throwaway cluster (aes-256-cbc, defaults)"
    restore_kind = "physical"

    def unavailable(self) -> str | None:
        if not shutil.which("pgbackrest"):
            return "pgbackrest is not installed"
        if os.geteuid() == 0 and not shutil.which("runuser"):
            return "runuser is missing (the cluster must run as the postgres user)"
        return None

    def setup(self) -> None:
        self.physical = PhysicalCluster.of(self.ctx).acquire()
        self.cluster = self.physical.cluster
        self.root = self.physical.root
        self.repo = self.physical.repo
        self.restored = _RestoredCluster(self.root / "restored")

    def before_rep(self, rep: int) -> None:
        # A fresh repository each repetition (a full backup never reuses an older one anyway).
        self.physical.fresh_repo()

    def backup(self, rep: int) -> Measurement:
        m = run_pipeline([Stage(self.physical.pgbackrest("--type=full", "backup"), "pgbackrest")])
        m.stored_bytes = tree_size(self.repo)
        return m

    def restore(self, rep: int) -> Measurement:
        self.restored.remove()
        self.restored.path.mkdir(mode=0o700)
        chown_postgres(self.restored.path)
        self.restored.port = free_port()
        log = self.root / "restored.log"
        log.write_text("")
        chown_postgres(log)
        # RTO: until the restored server has replayed the archive and accepts writes.
        restore = self.physical.pgbackrest(f"--pg1-path={self.restored.path}", "restore")
        m = run_pipeline([Stage(restore, "pgbackrest")])
        opts = self.cluster.server_options(self.restored.port, archive=False)
        m.add(
            run_pipeline(
                [
                    Stage(
                        as_postgres(
                            [
                                *(pg("pg_ctl"), "-D", str(self.restored.path), "-l", str(log)),
                                *("-w", "-t", "600", "-o", opts, "start"),
                            ]
                        ),
                        "pg_ctl",
                        "pg",
                    )
                ]
            )
        )
        m.add(timed(lambda: self._wait_promoted(self.restored.dsn())))
        return m

    @staticmethod
    def _wait_promoted(dsn: str) -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            with contextlib.suppress(psycopg.OperationalError):
                with psycopg.connect(dsn, autocommit=True) as conn:
                    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                if row == (False,):
                    return
            time.sleep(0.05)
        raise RuntimeError("the restored cluster did not finish recovery in 600 s")

    def verify(self, rep: int) -> None:
        check_counts(self.ctx.dataset.dsn, self.restored.dsn(self.ctx.dataset.name))

    def drop_target(self, rep: int) -> None:
        self.restored.remove()

    def teardown(self) -> None:
        if hasattr(self, "physical"):
            self.restored.remove()
            self.physical.release()


class DrdPhysical(_Drd):
    """drd's `postgres-physical` source of the PhysicalCluster pgBackRest backs up: a base
    backup (pg_basebackup tar through drd's compression, encryption and fan-out) to two local
    regions; restored to the end of that base backup (`--backup ID`: no archived WAL needed)
    into a new data directory, started by drd (`--start`) until it accepts writes, as
    pgBackRest's restore is measured. `archive: command`: the backup CLI runs no WAL receiver,
    and the cluster's archive_command already belongs to pgBackRest."""

    name = "drd-physical"
    description = "drd backup of a postgres-physical source (pg_basebackup) to two local regions"
    plan = "bench-physical"
    regions = ("phys-a", "phys-b")
    restore_kind = "physical"

    def unavailable(self) -> str | None:
        if os.geteuid() == 0 and not shutil.which("runuser"):
            return "runuser is missing (the cluster must run as the postgres user)"
        return None

    def setup(self) -> None:
        super().setup()
        self.physical = PhysicalCluster.of(self.ctx).acquire()
        self.cluster = self.physical.cluster
        self.roots = {r: self.home / "regions" / r for r in self.regions}
        source: dict[str, object] = {
            "name": "db",
            "kind": "postgres-physical",
            "dsn": self.cluster.dsn(),
            "archive": "command",
        }
        self.config = self.write_config(
            [{"name": r, "url": f"file:{path}"} for r, path in self.roots.items()], source
        )
        self.restored = _RestoredCluster(self.physical.root / "drd-restored")
        self.backup_ids: dict[int, str] = {}

    def before_rep(self, rep: int) -> None:
        for path in self.roots.values():
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir(parents=True)

    def backup(self, rep: int) -> Measurement:
        m, out = self.drd("backup", f"{self.plan}/db", child="pg_basebackup")
        found = re.search(rf"^ok {re.escape(self.plan)}/db@(\S+?):", out, re.M)
        if found is None:
            raise RuntimeError(f"drd backup did not report success: {out}")
        self.backup_ids[rep] = found.group(1)
        m.stored_bytes = self.stored_per_copy()
        m.notes["copies"] = len(self.regions)
        return m

    def restore(self, rep: int) -> Measurement:
        region = self.regions[rep % len(self.regions)]
        self.restored.remove()
        self.restored.port = free_port()
        m, out = self.drd(
            *("restore", f"{self.plan}/db", "--to", str(self.restored.path)),
            *("--backup", self.backup_ids[rep], "--region", region),
            *("--start", "--port", str(self.restored.port)),
            child="tar",
        )
        if f"from region {region}" not in out or "running and promoted" not in out:
            raise RuntimeError(f"drd restore did not start the copy from region {region}: {out}")
        m.notes["region"] = region
        return m

    def verify(self, rep: int) -> None:
        check_counts(self.ctx.dataset.dsn, self.restored.dsn(self.ctx.dataset.name))

    def drop_target(self, rep: int) -> None:
        self.restored.remove()

    def stored_per_copy(self) -> int:
        return tree_size(self.roots[self.regions[0]])

    def teardown(self) -> None:
        if hasattr(self, "physical"):
            self.restored.remove()
            self.physical.release()
        for path in getattr(self, "roots", {}).values():
            shutil.rmtree(path, ignore_errors=True)


ALL_TOOLS: dict[str, type[Tool]] = {
    t.name: t
    for t in (
        Floor,
        FloorZstd,
        FloorParallel,
        DrdLocal,
        DrdGcs,
        DrdPhysical,
        GpgPeer,
        ResticPeer,
        PgBackRestPeer,
    )
}
