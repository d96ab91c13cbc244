"""Reading a shipped day of the audit trail back (drd.server.audit seals one object per day and
host into every region), for tests that check what reached the regions."""

from __future__ import annotations

from typing import Any

from drd import crypto


def open_audit_object(keyring: crypto.Keyring, raw: bytes) -> list[dict[str, Any]]:
    """Verify and read a shipped day of audit records."""
    _, body = crypto.open_manifest(keyring, raw)
    records = body.get("records", [])
    assert isinstance(records, list)
    return records
