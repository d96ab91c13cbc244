"""Connections to the HTTP endpoint, bounded so that nobody can stall it (no token needed to
open a socket): the probes, the metrics and the API must answer during an attack.

- A connection must send a request's headers within `header_timeout` seconds of opening (or of
  the first byte of its next request); otherwise it is closed. An idle keep-alive connection is
  closed by aiohttp's own keepalive timeout.
- At most `limit` connections are open at once, well below the process's file limit. A new
  connection at the limit evicts the oldest one that is still waiting for its headers (what a
  half-open or slowloris client holds); only when every open connection is busy with a request
  is the new one refused.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

HEADER_TIMEOUT_SECONDS = 5.0
KEEPALIVE_SECONDS = 5.0
MAX_CONNECTIONS = 512
# A quarter of the file limit at most: pg_dump pipes, region uploads and sqlite need the rest.
_SHARE_OF_FILE_LIMIT = 4
_END_OF_HEADERS = b"\r\n\r\n"


def connection_limit(wanted: int = MAX_CONNECTIONS) -> int:
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return wanted
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(8, min(wanted, soft // _SHARE_OF_FILE_LIMIT))


class _Guarded(asyncio.Protocol):
    """Wraps aiohttp's protocol for one connection; watches for the end of each request's
    headers. Everything else is passed on untouched."""

    def __init__(self, inner: Any, guard: ConnectionGuard) -> None:
        self._inner = inner
        self._guard = guard
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""
        #: waiting for a request's headers (evictable), not serving one
        self.waiting = True

    # -- the protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if not self._guard.admit(self):
            transport.abort()
            return
        self._arm()
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._guard.forget(self)
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self.waiting:
            # The first byte of the next request on a kept-alive connection.
            self.waiting = True
            self._tail = b""
            self._arm()
        seen = self._tail + data
        if _END_OF_HEADERS in seen:
            self.waiting = False
            self._disarm()
            self._guard.busy(self)
        self._tail = seen[-(len(_END_OF_HEADERS) - 1) :]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        result: bool | None = self._inner.eof_received()
        return result

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    # -- guarding ----------------------------------------------------------------------------

    def _arm(self) -> None:
        self._disarm()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._guard.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _too_slow(self) -> None:
        self._guard.closed_slow += 1
        self.close()

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.abort()


class ConnectionGuard:
    """The protocol factory aiohttp's server is wrapped in."""

    def __init__(
        self,
        factory: Callable[[], Any],
        *,
        limit: int | None = None,
        header_timeout: float = HEADER_TIMEOUT_SECONDS,
    ) -> None:
        self._factory = factory
        self.limit = limit or connection_limit()
        self.header_timeout = header_timeout
        # Open connections, oldest first; waiting ones are evicted first.
        self._open: OrderedDict[int, _Guarded] = OrderedDict()
        self.closed_slow = 0
        self.evicted = 0
        self.refused = 0
        self._warned = False

    def __call__(self) -> _Guarded:
        return _Guarded(self._factory(), self)

    @property
    def open(self) -> int:
        return len(self._open)

    def admit(self, conn: _Guarded) -> bool:
        if len(self._open) >= self.limit:
            victim = next((c for c in self._open.values() if c.waiting), None)
            if victim is None:
                self.refused += 1
                self._say_once()
                return False
            self.evicted += 1
            self._say_once()
            self._open.pop(id(victim), None)
            victim.close()
        self._open[id(conn)] = conn
        return True

    def busy(self, conn: _Guarded) -> None:
        """`conn` sent its headers: it moves behind the waiting ones (evicted last)."""
        if id(conn) in self._open:
            self._open.move_to_end(id(conn))

    def forget(self, conn: _Guarded) -> None:
        self._open.pop(id(conn), None)
        if not self._open:
            self._warned = False

    def _say_once(self) -> None:
        if not self._warned:  # one line per flood, not one per connection
            log.warning(
                "http: %d connections open (the limit): closing the oldest that sent no "
                "request yet; a client is holding connections open",
                self.limit,
            )
            self._warned = True


class GuardedSite(web.TCPSite):
    """aiohttp's TCP site, its protocol factory wrapped in a ConnectionGuard."""

    def __init__(
        self,
        runner: web.BaseRunner,
        *args: Any,
        guard_limit: int | None = None,
        header_timeout: float = HEADER_TIMEOUT_SECONDS,
        **kwargs: Any,
    ) -> None:
        super().__init__(runner, *args, **kwargs)
        self.guard: ConnectionGuard | None = None
        self._guard_limit = guard_limit
        self._header_timeout = header_timeout

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        self.guard = ConnectionGuard(
            server, limit=self._guard_limit, header_timeout=self._header_timeout
        )
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self.guard,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
