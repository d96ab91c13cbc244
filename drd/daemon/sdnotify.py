"""The systemd notify protocol (READY=1, RELOADING=1, STOPPING=1, WATCHDOG=1, STATUS=...),
without libsystemd.

A datagram to $NOTIFY_SOCKET; names starting with '@' are abstract sockets. When the variable
is not set (not under systemd, or in tests) every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = env.get("NOTIFY_SOCKET") or None
        usec = env.get("WATCHDOG_USEC")
        # systemd's recommendation: ping at half the watchdog interval.
        self.watchdog_interval: float | None = int(usec) / 2e6 if usec and usec.isdigit() else None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *states: str) -> None:
        if self._address is None:
            return
        address = "\0" + self._address[1:] if self._address.startswith("@") else self._address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(address)
                sock.sendall("\n".join(states).encode())
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self._address, exc)

    def ready(self, status: str = "") -> None:
        self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> None:
        """A reload begins; `ready()` says it is over (sd_notify(3): systemd shows the unit as
        reloading in between, and with Type=notify-reload waits for it)."""
        self.notify(
            "RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
        )

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")
