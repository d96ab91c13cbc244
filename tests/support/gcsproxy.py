"""A small HTTP proxy in front of fake-gcs-server, for faults the emulator never makes on its
own: answer some requests with an error status (a 503 longer than any retry deadline, GCS's
400 for a checksum that does not match at finalize), or alter a request body on its way (bytes
damaged between drd and the bucket).

It runs its own event loop in a thread, so drd under test may be this process or a `drd`
subprocess. Upload session URIs the server hands out are rewritten to point at the proxy, so
resumable uploads go through it too. Loopback only.

    with GcsProxy(server.endpoint) as proxy:
        proxy.fail("GET", r"p1/files/.*/manifest\\.json", 503)          # every time
        proxy.fail("PUT", r"upload_id=", 400, body=..., when=final_chunk, times=1)
        ... endpoint=proxy.endpoint ...
"""

from __future__ import annotations

import asyncio
import re
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

from aiohttp import ClientSession, web

HOST = "127.0.0.1"
_HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "content-encoding"}

#: (method, decoded path and query, request headers) -> does the rule apply
When = Callable[[str, str, dict[str, str]], bool]


@dataclass
class _Rule:
    method: str
    pattern: re.Pattern[str]
    status: int
    body: str
    times: int | None
    when: When | None
    hits: int = 0

    def applies(self, method: str, target: str, headers: dict[str, str]) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method not in ("*", method) or not self.pattern.search(target):
            return False
        return self.when is None or self.when(method, target, headers)


@dataclass
class GcsProxy:
    upstream: str
    port: int = 0
    rules: list[_Rule] = field(default_factory=list)
    #: (method, decoded target, status answered) of every request, in order
    log: list[tuple[str, str, int]] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def fail(
        self,
        method: str,
        pattern: str,
        status: int,
        *,
        body: str = "",
        times: int | None = None,
        when: When | None = None,
    ) -> None:
        """Answer matching requests with `status` (and `body`) instead of forwarding them."""
        message = body or f'{{"error": {{"code": {status}, "message": "injected by the proxy"}}}}'
        self.rules.append(_Rule(method, re.compile(pattern), status, message, times, when))

    def clear(self) -> None:
        self.rules.clear()

    def hits(self, method: str, pattern: str) -> list[tuple[str, str, int]]:
        regex = re.compile(pattern)
        return [entry for entry in self.log if entry[0] == method and regex.search(entry[1])]

    # -- running ---------------------------------------------------------------------------

    def __enter__(self) -> GcsProxy:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            loop.run_until_complete(self._start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="gcs-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the proxy did not start")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._loop is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> None:
        self._session = ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, HOST, self.port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    async def _stop(self) -> None:
        await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        target = urllib.parse.unquote(request.path_qs)
        headers = dict(request.headers)
        for rule in self.rules:
            if rule.applies(request.method, target, headers):
                rule.hits += 1
                await request.read()  # drain what the client sends
                self.log.append((request.method, target, rule.status))
                return web.Response(
                    status=rule.status, text=rule.body, content_type="application/json"
                )
        body = await request.read()
        forward = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=forward,
            data=body,
            allow_redirects=False,
        ) as upstream:
            payload = await upstream.read()
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS}
            if "Location" in out:
                out["Location"] = out["Location"].replace(self.upstream, self.endpoint)
            self.log.append((request.method, target, upstream.status))
            return web.Response(status=upstream.status, headers=out, body=payload)
