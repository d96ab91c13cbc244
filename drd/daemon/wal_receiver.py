"""pg_receivewal for one physical PostgreSQL source, kept running by the daemon.

The receiver streams the source's WAL through drd's replication slot into the source's spool
directory (drd.daemon.wal_spool ships it from there). Before each start the slot is created if
it is missing. When pg_receivewal ends (the server restarted, the network went, the slot is
still held by a receiver of a drd that was killed) it is started again after a backoff that
doubles from 1 s to 60 s and resets once a run lasted a minute; every end is one log line with
the tool's last words, so a receiver that keeps failing is visible and never spins.

The child gets drd's child_environment with the DSN's settings (the password as PGPASSWORD,
the one secret it needs) and dies with drd (PR_SET_PDEATHSIG): a drd killed with SIGKILL
leaves no receiver holding the slot against its successor.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path

from drd.daemon.lifecycle import wait_any
from drd.strategies._subprocess import redact
from drd.strategies.postgres_physical import (
    dsn_secret,
    ensure_slot,
    receivewal_argv,
    receivewal_env,
)
from drd.strategies.postgres_tools import find_tool

log = logging.getLogger(__name__)

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0
#: a run this long counts as healthy: the next failure starts the backoff afresh
HEALTHY_RUN = 60.0
_PR_SET_PDEATHSIG = 1
_TAIL_LINES = 5


#: loaded here, not in the forked child, which should do as little as it can before exec
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when drd's thread that started it goes away."""
    _prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def backoff(failures: int) -> float:
    """Seconds to wait after the `failures`-th failure in a row."""
    return float(min(BACKOFF_FIRST * (1 << min(max(failures - 1, 0), 16)), BACKOFF_MAX))


class Receiver:
    """Runs pg_receivewal for one source until stopped (module docstring)."""

    def __init__(
        self,
        label: str,
        dsn: str,
        spool: Path,
        slot: str,
        *,
        pg_bin_dir: str | None = None,
        on_up: Callable[[bool], None] = lambda up: None,
        on_restart: Callable[[], None] = lambda: None,
    ) -> None:
        self.label = label
        self.dsn = dsn
        self.spool = spool
        self.slot = slot
        self.pg_bin_dir = pg_bin_dir
        self.on_up = on_up
        self.on_restart = on_restart
        self.failures = 0
        self.proc: asyncio.subprocess.Process | None = None
        self.slot_created = False

    async def run(self, stop: asyncio.Event) -> None:
        secret = [dsn_secret(self.dsn)]
        while not stop.is_set():
            began = time.monotonic()
            try:
                why = await self._run_once(stop)
            except Exception as exc:
                why = redact(str(exc) or type(exc).__name__, secret)
            self.proc = None
            self.on_up(False)
            if stop.is_set():
                return
            if time.monotonic() - began >= HEALTHY_RUN:
                self.failures = 0
            self.failures += 1
            delay = backoff(self.failures)
            self.on_restart()
            log.error(
                "%s: WAL receiver stopped (%s); starting it again in %.0fs",
                self.label,
                why,
                delay,
            )
            await wait_any([stop], delay)

    async def _run_once(self, stop: asyncio.Event) -> str:
        tool = await find_tool("pg_receivewal", self.pg_bin_dir)
        if tool is None:
            place = self.pg_bin_dir or "/usr/lib/postgresql/*/bin or PATH"
            return f"no working pg_receivewal found in {place}"
        if await ensure_slot(self.dsn, self.slot):
            self.slot_created = True
            log.info("%s: created physical replication slot %s", self.label, self.slot)
        argv = receivewal_argv(tool.path, self.dsn, self.spool, self.slot)
        proc = self.proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=receivewal_env(self.dsn),
            preexec_fn=_die_with_parent,
        )
        self.on_up(True)
        tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                tail.append(line)
        code = await proc.wait()
        said = redact(" | ".join(tail), [dsn_secret(self.dsn)]) or "nothing"
        return f"pg_receivewal exited with status {code}: {said}"

    async def close(self, grace: float = 5.0) -> None:
        """Stop the child: SIGTERM (it flushes what it received), SIGKILL after `grace`."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
