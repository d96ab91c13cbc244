"""The audit trail: every mutating API call and every drill, as JSON lines.

Appended locally (0600, in the state directory) and shipped, sealed with the keyring like a
manifest, to every region as one object per day and host, so the trail survives the loss of
the machine and cannot be altered in a bucket unnoticed. Records never hold a token, only the
token's name and role.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from drd import crypto
from drd.storage.base import Storage

log = logging.getLogger(__name__)

AUDIT_PREFIX = "_audit"


class AuditLog:
    def __init__(
        self,
        path: Path,
        regions: Mapping[str, Storage] | None = None,
        keyring: crypto.Keyring | None = None,
    ) -> None:
        self.path = path
        self.regions = dict(regions or {})
        self.keyring = keyring
        self.host = socket.gethostname()
        self._lock = asyncio.Lock()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)

    async def record(self, event: Mapping[str, Any], now: datetime | None = None) -> None:
        when = (now or datetime.now(UTC)).astimezone(UTC)
        entry = {"time": when.isoformat(), **event}
        line = json.dumps(entry, sort_keys=True, ensure_ascii=False, default=str) + "\n"
        async with self._lock:
            await asyncio.to_thread(self._append, line)
            await self._ship(when)

    def _append(self, line: str) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self, day: str | None = None) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        records = [json.loads(line) for line in self.path.read_text().splitlines() if line]
        return [r for r in records if day is None or str(r["time"]).startswith(day)]

    def object_key(self, day: str) -> str:
        return f"{AUDIT_PREFIX}/{day}/{self.host}.json"

    async def _ship(self, when: datetime) -> None:
        """Upload the whole day's trail, sealed, to every region (best effort, logged)."""
        if not self.regions or self.keyring is None:
            return
        day = when.strftime("%Y-%m-%d")
        records = await asyncio.to_thread(self.read, day)
        public = {
            "kind": "audit",
            "day": day,
            "host": self.host,
            "key_id": self.keyring.primary.key_id,
        }
        sealed = crypto.seal_manifest(self.keyring, public, {"records": records})

        async def put(storage: Storage) -> None:
            try:
                await storage.put(self.object_key(day), sealed)
            except Exception as exc:  # the local trail still has it; the next call re-ships
                log.warning("audit: region %s: upload failed: %s", storage.name, exc)

        await asyncio.gather(*(put(s) for s in self.regions.values()))
