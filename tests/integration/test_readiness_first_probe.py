"""/readyz of a real `drd run` before its first probe round is over: the HTTP server is up
(so /healthz answers) but drd is not ready until every region has been probed once. Region b
sits behind a proxy that holds the probe's one request (a listing of at most one object) for
a few seconds, so that the window is wide enough to look at; both regions are fake-gcs-server
processes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from tests.integration.test_daemon import (
    Daemon,
    daemon_factory,  # noqa: F401 - the fixture
    http_get,
    wait_for,
)
from tests.support.drdenv import DrdEnv, free_port
from tests.support.fakegcs import StartRegions
from tests.support.gcsproxy import GcsProxy

pytestmark = pytest.mark.integration

HOLD = 6.0  # seconds the probe's request waits at the proxy


@dataclass
class SlowProbe(GcsProxy):
    """Forwards everything; the region probe's listing (maxResults=1) only after HOLD."""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if "maxResults=1" in request.query_string:
            await asyncio.sleep(HOLD)
        return await super()._handle(request)


def test_not_ready_until_the_first_probe_round_is_over(
    tmp_path: Path,
    gcs_regions: StartRegions,
    daemon_factory: Callable[[DrdEnv, int], Daemon],  # noqa: F811
) -> None:
    servers = gcs_regions(2, ["EUROPE-WEST1", "US-CENTRAL1"])
    port = free_port()
    with SlowProbe(servers[1].endpoint) as slow:
        env = DrdEnv(tmp_path, api_listen=f"127.0.0.1:{port}")
        env.add_gcs_region("a", servers[0], "drd-a")
        env.add_gcs_region("b", servers[1], "drd-b", endpoint=slow.endpoint)
        data = tmp_path / "data"
        data.mkdir()
        (data / "f.txt").write_text("hello")
        env.add_plan("p", [{"name": "tree", "kind": "files", "path": str(data)}])
        env.daemon = {"region_probe": {"every": "30s", "timeout": "20s"}}
        env.write()
        d = daemon_factory(env, port)  # returns once /healthz answers

        status, body = http_get(d.base + "/readyz")
        answer = json.loads(body)
        assert status == 503, answer
        assert "waiting for the first probe round" in answer["reason"]

        def ready() -> bool:
            return http_get(d.base + "/readyz")[0] == 200

        wait_for(ready, HOLD + 30, "/readyz after the first probe round")
        regions = json.loads(http_get(d.base + "/readyz")[1])["checks"]["regions"]
        assert regions == {"a": "ok", "b": "ok"}
        assert slow.hits("GET", r"maxResults=1")  # the probe did go through the proxy
