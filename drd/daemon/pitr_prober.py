"""Recording probes of an archived physical source (drd.pipeline.pitr_probes), from the WAL
loop's rounds: every `restore_test.pitr_probe.every` of the plan, one probe, appended to the
source's probe file in the state directory. A plan without `pitr_probe` records none.

A probe that fails (the server is down, a table the plan names is missing) is logged once per
distinct reason and retried at the next round: the restore tests then choose among the probes
that were recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from drd.config.models import Plan
from drd.layout import SourceRef
from drd.pipeline.pitr_probes import Probe, ProbeStore, probe_queries, take_probe
from drd.strategies._subprocess import redact
from drd.strategies.postgres_physical import dsn_secret, sql_dsn

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 30.0


@dataclass
class Prober:
    ref: SourceRef
    dsn: str = field(repr=False)
    state_dir: Path
    #: when the last probe was due (the services clock): the next is due `every` later
    probed_at: datetime | None = None
    #: the last probe recorded
    last: Probe | None = None
    _db: Any = field(default=None, repr=False)
    _problem: str | None = None

    async def maybe_probe(self, plan: Plan, now: datetime) -> Probe | None:
        """Take a probe if the plan asks for them and one is due at `now`; the probe taken."""
        spec = plan.restore_test.pitr_probe
        if spec is None:
            return None
        if self.probed_at is not None and now - self.probed_at < spec.every:
            return None
        queries = probe_queries(spec, plan.restore_test.checks_for(self.ref.source))
        try:
            probe = await asyncio.wait_for(self._take(spec.tables, queries), PROBE_TIMEOUT)
        except Exception as exc:
            why = redact(str(exc) or type(exc).__name__, [dsn_secret(self.dsn)])
            if why != self._problem:
                log.warning("%s: cannot record a point-in-time probe: %s", self.ref, why)
            self._problem = why
            await self.close()
            return None
        self._problem = None
        self.probed_at = now
        ProbeStore(self.state_dir, self.ref).add(
            probe, keep=spec.keep, now=probe.time, max_age=plan.retention.max_age
        )
        self.last = probe
        return probe

    async def _take(self, tables: list[str], queries: dict[str, str]) -> Probe:
        import psycopg

        if self._db is None or self._db.closed:
            self._db = await psycopg.AsyncConnection.connect(
                sql_dsn(self.dsn), autocommit=True, connect_timeout=10
            )
        return await take_probe(self._db, tables, queries)

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            with contextlib.suppress(Exception):
                await db.close()
