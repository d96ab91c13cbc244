"""Where a backup's objects live inside a region, and what a backup id looks like.

    <plan>/<source>/<backup_id>/data.drd        the encrypted, compressed dump
    <plan>/<source>/<backup_id>/manifest.json   written last: its presence commits the backup

Backup ids sort by capture time (UTC, second resolution) and carry 32 random bits so two
backups in the same second never collide: 20261128T134700Z-9f2c1a0b.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

DATA_OBJECT = "data.drd"
MANIFEST_OBJECT = "manifest.json"

_ID_RE = re.compile(r"^(\d{8}T\d{6}Z)-([0-9a-f]{8})$")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def new_backup_id(now: datetime) -> str:
    return f"{now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


def is_backup_id(text: str) -> bool:
    return _ID_RE.match(text) is not None


def backup_id_time(backup_id: str) -> datetime:
    m = _ID_RE.match(backup_id)
    if m is None:
        raise ValueError(f"not a backup id: {backup_id!r}")
    return datetime.strptime(m.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def check_name(kind: str, name: str) -> str:
    """Plan and source names become key prefixes: keep them to a safe alphabet."""
    if not _NAME_RE.match(name):
        raise ValueError(f"invalid {kind} name {name!r}: use [a-z0-9][a-z0-9_-]{{0,62}}")
    return name


@dataclass(frozen=True)
class SourceRef:
    """A plan's source, the unit that has backups: `plan/source`."""

    plan: str
    source: str

    @classmethod
    def parse(cls, text: str) -> SourceRef:
        plan, sep, source = text.partition("/")
        if not sep:
            raise ValueError(f"expected PLAN/SOURCE, got {text!r}")
        return cls(check_name("plan", plan), check_name("source", source))

    @property
    def prefix(self) -> str:
        return f"{self.plan}/{self.source}/"

    def backup_prefix(self, backup_id: str) -> str:
        return f"{self.prefix}{backup_id}/"

    def data_key(self, backup_id: str) -> str:
        return self.backup_prefix(backup_id) + DATA_OBJECT

    def manifest_key(self, backup_id: str) -> str:
        return self.backup_prefix(backup_id) + MANIFEST_OBJECT

    def __str__(self) -> str:
        return f"{self.plan}/{self.source}"
