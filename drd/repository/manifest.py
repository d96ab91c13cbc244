"""The manifest: what a backup is, sealed with the key-encryption key.

The public half (ids, names, times) is readable without the key so that listing and retention
work on a machine that has only the storage; it is still authenticated, as associated data of the
sealed body. The body holds everything restore needs, including the wrapped data key: without a
manifest a data object is unreadable, which is what makes deleting manifests first a
crypto-shred.

A manifest is bound to where it is stored (`<plan>/<source>/<backup_id>/manifest.json`): a
reader refuses one whose plan, source or backup id differ from its location, and version 2
also binds the location cryptographically (it is part of the associated data, so a manifest
copied to another place fails authentication). Version 1 manifests stay readable, with the
location check on their public fields.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from drd import crypto
from drd.errors import IntegrityError
from drd.layout import DATA_OBJECT, SourceRef

FORMAT = "drd-backup-2"
#: data objects written now (drd.crypto): version 2 names its own location in its header
DATA_FORMAT = crypto.FORMAT_VERSION
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
    #: the data object's format version (drd.crypto); absent in manifests of version 1 (then 1)
    data_format: int = 1

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
            body = cls(**{f: raw[f] for f in cls.__dataclass_fields__ if f in raw})
        except TypeError as exc:
            raise IntegrityError(f"{where}: manifest body is malformed ({exc})") from None
        if type(body.data_format) is not int or body.data_format not in crypto.DATA_FORMAT_VERSIONS:
            raise IntegrityError(f"{where}: unsupported data format {body.data_format!r}")
        return body


@dataclass(frozen=True)
class Manifest:
    public: ManifestPublic
    body: ManifestBody
    #: the sealed document's version: 2 is bound to its location cryptographically
    version: int = crypto.MANIFEST_VERSION

    def seal(self, keyring: crypto.Keyring) -> bytes:
        """Sealed for its own location (the plan, source and backup id it names)."""
        location = self.ref.manifest_key(self.public.backup_id)
        if self.version < 2:
            return crypto.seal_manifest(keyring, asdict(self.public), asdict(self.body))
        return crypto.seal_manifest(
            keyring, asdict(self.public), asdict(self.body), location=location
        )

    @property
    def ref(self) -> SourceRef:
        return SourceRef(self.public.plan, self.public.source)

    def data_object_name(self) -> str:
        """What the data object's header must name: its location (version 2) or `data.drd`."""
        if self.body.data_format >= 2:
            return self.ref.data_key(self.public.backup_id)
        return DATA_OBJECT

    @classmethod
    def open(
        cls, keyring: crypto.Keyring, raw: bytes, where: str, ref: SourceRef, backup_id: str
    ) -> Manifest:
        """Verify and parse the manifest stored at `ref`'s `backup_id`; `where` names the
        object in errors (region and key). A manifest of another place is an IntegrityError."""
        try:
            opened = crypto.open_sealed(keyring, raw, location=ref.manifest_key(backup_id))
        except IntegrityError as exc:
            raise IntegrityError(f"{where}: {exc}") from None
        public = ManifestPublic.from_dict(opened.public, where)
        check_location(public, ref, backup_id, where)
        return cls(public, ManifestBody.from_dict(opened.body, where), opened.version)


def check_location(public: ManifestPublic, ref: SourceRef, backup_id: str, where: str) -> None:
    """Refuse a manifest whose plan, source or backup id differ from where it is stored: a
    backup copied under another plan, source or id is not that backup."""
    if (public.plan, public.source, public.backup_id) != (ref.plan, ref.source, backup_id):
        raise IntegrityError(
            f"{where}: manifest of {public.plan}/{public.source}@{public.backup_id} stored as "
            f"{ref}@{backup_id} (copied from another place)"
        )


def read_public(raw: bytes, where: str, ref: SourceRef, backup_id: str) -> ManifestPublic:
    """The unauthenticated public half, for key-less listing and retention; still refused when
    it names another place than where it is stored."""
    try:
        public = crypto.read_manifest_public(raw)
    except IntegrityError as exc:
        raise IntegrityError(f"{where}: {exc}") from None
    found = ManifestPublic.from_dict(public, where)
    check_location(found, ref, backup_id, where)
    return found
