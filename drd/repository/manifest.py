"""The manifest: what a backup is, sealed with the key-encryption key.

The public half (ids, names, times) is readable without the key so that listing and retention
work on a machine that has only the storage; it is still authenticated, as associated data of the
sealed body. The body holds everything restore needs, including the wrapped data key: without a
manifest a data object is unreadable, which is what makes deleting manifests first a
crypto-shred.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from drd import crypto
from drd.errors import IntegrityError

FORMAT = "drd-backup-1"
#: a backup that is a faithful image of its source
STATUS_OK = "ok"
#: a complete, restorable backup that is not a faithful image of its source: something could
#: not be captured consistently (a file that kept changing while read, ...); the strategy
#: metadata's "degraded" list says what
STATUS_DEGRADED = "degraded"


@dataclass(frozen=True)
class ManifestPublic:
    backup_id: str
    plan: str
    source: str
    kind: str
    key_id: str
    started_at: str  # ISO 8601 UTC: the capture time (RPO is measured from it)
    completed_at: str
    format: str = FORMAT
    #: STATUS_OK or STATUS_DEGRADED (manifests written before drd 0.3 have none: ok)
    status: str = STATUS_OK

    @property
    def started(self) -> datetime:
        return datetime.fromisoformat(self.started_at)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str) -> ManifestPublic:
        try:
            return cls(**{f: raw[f] for f in cls.__dataclass_fields__ if f in raw})
        except TypeError as exc:  # a field without a default is missing
            raise IntegrityError(f"{where}: manifest is malformed ({exc})") from None


@dataclass(frozen=True)
class ManifestBody:
    wrapped_data_key: str
    segment_size: int
    compression: str
    plaintext_size: int
    #: `<algorithm>:<hex>` (drd.digests): of the uncompressed dump
    plaintext_digest: str
    ciphertext_size: int
    #: `<algorithm>:<hex>`: of the whole data object as stored
    ciphertext_digest: str
    strategy_metadata: dict[str, Any] = field(default_factory=dict)
    drd_version: str = ""

    @property
    def degraded(self) -> list[str]:
        """Why the backup is degraded (the strategy's words); empty for a faithful one."""
        reasons = self.strategy_metadata.get("degraded")
        return [str(r) for r in reasons] if isinstance(reasons, list) else []

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str) -> ManifestBody:
        raw = dict(raw)
        # Manifests written before drd 0.2 name their (SHA-256) digests by algorithm.
        for part in ("plaintext", "ciphertext"):
            legacy = raw.pop(f"{part}_sha256", None)
            if isinstance(legacy, str) and f"{part}_digest" not in raw:
                raw[f"{part}_digest"] = f"sha256:{legacy}"
        try:
            return cls(**{f: raw[f] for f in cls.__dataclass_fields__ if f in raw})
        except TypeError as exc:
            raise IntegrityError(f"{where}: manifest body is malformed ({exc})") from None


@dataclass(frozen=True)
class Manifest:
    public: ManifestPublic
    body: ManifestBody

    def seal(self, keyring: crypto.Keyring) -> bytes:
        return crypto.seal_manifest(keyring, asdict(self.public), asdict(self.body))

    @classmethod
    def open(cls, keyring: crypto.Keyring, raw: bytes, where: str) -> Manifest:
        """Verify and parse; `where` names the object in errors (region and key)."""
        try:
            public, body = crypto.open_manifest(keyring, raw)
        except IntegrityError as exc:
            raise IntegrityError(f"{where}: {exc}") from None
        return cls(ManifestPublic.from_dict(public, where), ManifestBody.from_dict(body, where))


def read_public(raw: bytes, where: str) -> ManifestPublic:
    """The unauthenticated public half, for key-less listing and retention."""
    try:
        public = crypto.read_manifest_public(raw)
    except IntegrityError as exc:
        raise IntegrityError(f"{where}: {exc}") from None
    return ManifestPublic.from_dict(public, where)
