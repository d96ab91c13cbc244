"""sd_notify datagrams reach a real AF_UNIX socket; without NOTIFY_SOCKET nothing happens."""

from __future__ import annotations

import socket
from pathlib import Path

from drd.daemon.sdnotify import Notifier


def test_ready_stopping_watchdog_reach_the_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(2)
        n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000"})
        assert n.enabled and n.watchdog_interval == 5.0
        n.ready("2 sources")
        assert server.recv(4096) == b"READY=1\nSTATUS=2 sources"
        n.watchdog()
        assert server.recv(4096) == b"WATCHDOG=1"
        n.stopping()
        assert server.recv(4096) == b"STOPPING=1"


def test_abstract_socket_names(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(f"\0drd-test-{tmp_path.name}")
        server.settimeout(2)
        Notifier({"NOTIFY_SOCKET": f"@drd-test-{tmp_path.name}"}).ready()
        assert server.recv(4096) == b"READY=1"


def test_disabled_without_notify_socket() -> None:
    n = Notifier({})
    assert not n.enabled and n.watchdog_interval is None
    n.ready()
    n.watchdog()  # no socket, no error
