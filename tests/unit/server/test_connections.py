"""The HTTP endpoint cannot be stalled (issue 14, point 2): connections that send no request
are closed after the header timeout, connections are bounded and the oldest idle one makes room
for a new one, and identical log lines in a storm are rate-limited."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from aiohttp import web

from drd.logs import RateLimit
from drd.server.connections import GuardedSite, connection_limit


async def _serve(limit: int, header_timeout: float) -> tuple[web.AppRunner, GuardedSite, int]:
    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=1)
    await runner.setup()
    site = GuardedSite(runner, "127.0.0.1", 0, guard_limit=limit, header_timeout=header_timeout)
    await site.start()
    assert site._server is not None
    port = site._server.sockets[0].getsockname()[1]
    return runner, site, port


async def _get(port: int, path: str = "/healthz") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data


async def test_half_open_connections_cannot_stall_the_probe() -> None:
    runner, site, port = await _serve(limit=20, header_timeout=30)
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(60)]
    await asyncio.sleep(0.1)
    assert site.guard is not None and site.guard.open <= 20
    started = time.monotonic()
    answer = await _get(port)
    assert answer.startswith(b"HTTP/1.1 200") and b'"ok"' in answer
    assert time.monotonic() - started < 1.0
    assert site.guard.evicted >= 40
    for _, writer in idle:
        writer.close()
    await runner.cleanup()


async def test_a_connection_without_headers_is_closed_after_the_timeout() -> None:
    runner, site, port = await _serve(limit=20, header_timeout=0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # slowloris: never finishes
    await writer.drain()
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
    assert 0.2 < time.monotonic() - started < 3
    assert site.guard is not None and site.guard.closed_slow == 1
    # A prompt client on a kept-alive connection is not cut off.
    answer = await _get(port)
    assert answer.startswith(b"HTTP/1.1 200")
    writer.close()
    await runner.cleanup()


async def test_busy_connections_are_not_evicted() -> None:
    runner, site, port = await _serve(limit=2, header_timeout=30)
    assert site.guard is not None
    held = []
    for _ in range(2):  # two connections that sent a request and keep the connection
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        await reader.readuntil(b'"ok"}')
        held.append(writer)
    # Both are busy (kept alive after a request): a third is refused rather than evict them.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert site.guard.refused == 1
    for w in [*held, writer]:
        w.close()
    await runner.cleanup()


def test_the_limit_stays_below_the_file_limit() -> None:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert connection_limit(10_000) <= max(8, soft // 4)
    assert connection_limit(16) <= 16


def test_identical_log_lines_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("drd.test.storm")
    limiter = RateLimit(burst=3, window=0.2)
    log.addFilter(limiter)
    try:
        with caplog.at_level(logging.ERROR, logger="drd.test.storm"):
            for _ in range(1000):
                log.error("socket.accept() out of system resource")
            log.error("another problem")
            time.sleep(0.25)
            log.error("socket.accept() out of system resource")
    finally:
        log.removeFilter(limiter)
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("socket.accept() out of system resource") == 3
    assert "another problem" in messages
    assert messages[-1].endswith("(and 997 more like it in the last 0s)")
