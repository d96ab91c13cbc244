"""Throwaway PostgreSQL clusters for physical backup and WAL tests.

Each cluster is initdb'd as the postgres OS user in its own directory under the system temp
directory (which that user can traverse; pytest's tmp_path cannot be), with wal_level=replica,
replication allowed from 127.0.0.1 (trust), listening on 127.0.0.1 only on a free port, and
its socket in its own directory. The fixture `pg_cluster_factory` stops and removes every
cluster it made.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

BIN = Path("/usr/lib/postgresql/15/bin")
USER = "postgres"
_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "wal_level": "replica",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "fsync": "off",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "autovacuum": "off",
    "jit": "off",
    "shared_buffers": "32MB",
    "max_connections": "40",
    "log_min_messages": "warning",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def as_postgres(*argv: str, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    cmd = ["runuser", "-u", USER, "--", *argv] if os.geteuid() == 0 else list(argv)
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kwargs)


def chown_to_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        account = pwd.getpwnam(USER)
        os.chown(path, account.pw_uid, account.pw_gid)


@dataclass
class Cluster:
    root: Path
    port: int
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def dsn(self, dbname: str = "postgres", **extra: str) -> str:
        return psycopg.conninfo.make_conninfo(
            "", host="127.0.0.1", port=str(self.port), user=USER, dbname=dbname, **extra
        )

    def start(self) -> None:
        as_postgres(str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            as_postgres(
                str(BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop", check=False
            )

    def sql(
        self, query: str, params: Any = None, dbname: str = "postgres"
    ) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn(dbname), autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def one(self, query: str, params: Any = None, dbname: str = "postgres") -> Any:
        return self.sql(query, params, dbname)[0][0]

    def now(self) -> datetime:
        return self.one("SELECT clock_timestamp()").astimezone(UTC)

    def switch_wal(self) -> None:
        self.sql("SELECT pg_switch_wal()")

    def pgbench(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "pgbench"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, *args],
            check=True,
            capture_output=True,
            text=True,
        )


def make_cluster(extra: dict[str, str] | None = None, initdb_args: tuple[str, ...] = ()) -> Cluster:
    root = Path(tempfile.mkdtemp(prefix="drd-test-pg-"))
    root.chmod(0o700)
    chown_to_postgres(root)
    cluster = Cluster(root, _free_port(), {**_SETTINGS, **(extra or {})})
    as_postgres(
        str(BIN / "initdb"),
        "-D",
        str(cluster.data),
        "-A",
        "trust",
        "-U",
        USER,
        "--no-sync",
        "-E",
        "UTF8",
        "--locale=C",
        *initdb_args,
    )
    lines = [f"{k} = {v}" for k, v in cluster.settings.items()]
    lines += [f"port = {cluster.port}", f"unix_socket_directories = '{root}'"]
    with open(cluster.data / "postgresql.conf", "a") as conf:
        conf.write("\n".join(lines) + "\n")
    for _ in range(3):
        try:
            cluster.start()
            break
        except subprocess.CalledProcessError:
            if "Address already in use" not in cluster.log.read_text(errors="replace"):
                raise
            cluster.port = _free_port()
            with open(cluster.data / "postgresql.conf", "a") as conf:
                conf.write(f"port = {cluster.port}\n")
    return cluster


def remove_cluster(cluster: Cluster) -> None:
    cluster.stop("immediate")
    shutil.rmtree(cluster.root, ignore_errors=True)


class ClusterFactory:
    def __init__(self) -> None:
        self.clusters: list[Cluster] = []
        self.dirs: list[Path] = []

    def __call__(self, initdb_args: tuple[str, ...] = (), **settings: str) -> Cluster:
        """A new running cluster; `initdb_args` e.g. ("--wal-segsize=1",) for 1 MiB segments."""
        cluster = make_cluster(settings, initdb_args)
        self.clusters.append(cluster)
        return cluster

    def scratch_dir(self, prefix: str = "drd-test-restore-") -> Path:
        """An empty directory the postgres user can use (restored data directories go in it)."""
        path = Path(tempfile.mkdtemp(prefix=prefix))
        path.chmod(0o755)
        self.dirs.append(path)
        return path

    def cleanup(self) -> None:
        for path in self.dirs:
            for pid_file in path.glob("*/postmaster.pid"):
                as_postgres(
                    str(BIN / "pg_ctl"),
                    "-D",
                    str(pid_file.parent),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                    check=False,
                )
            shutil.rmtree(path, ignore_errors=True)
        for cluster in self.clusters:
            with contextlib.suppress(Exception):
                remove_cluster(cluster)


@pytest.fixture(name="pg_cluster_factory")
def pg_cluster_factory_fixture() -> Iterator[ClusterFactory]:
    factory = ClusterFactory()
    try:
        yield factory
    finally:
        factory.cleanup()


def wait_until(predicate: Any, timeout: float = 30.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)
