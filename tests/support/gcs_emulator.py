"""gcp-storage-emulator: a second GCS implementation, independent of fake-gcs-server.

It differs from fake-gcs-server where real GCS does too (a bucket's soft-delete policy, the
answer to a resumable upload's status query), so drd's GCS backend is held to both. One
in-memory process per fixture, on a free loopback port.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

HOST = "127.0.0.1"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _binary() -> str | None:
    beside = Path(sys.executable).with_name("gcp-storage-emulator")
    return str(beside) if beside.exists() else shutil.which("gcp-storage-emulator")


class StorageEmulator:
    def __init__(self) -> None:
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> StorageEmulator:
        binary = _binary()
        if binary is None:
            pytest.skip("gcp-storage-emulator is not installed (pip install gcp-storage-emulator)")
        with socket.socket() as s:
            s.bind((HOST, 0))
            self.port = s.getsockname()[1]
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [binary, "start", "-H", HOST, "--port", str(self.port), "--in-memory", "-q"],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with _OPENER.open(f"{self.endpoint}/storage/v1/b?project=t", timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"gcp-storage-emulator did not start on {self.endpoint}")

    def create_bucket(self, name: str) -> None:
        request = urllib.request.Request(
            f"{self.endpoint}/storage/v1/b?project=t",
            data=f'{{"name": "{name}"}}'.encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with _OPENER.open(request, timeout=10):
            pass

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None


@pytest.fixture
def gcs_emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[StorageEmulator]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    emulator = StorageEmulator().start()
    try:
        yield emulator
    finally:
        emulator.stop()
