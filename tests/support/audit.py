"""Reading a shipped audit object back, for tests that check what reached the regions."""

from __future__ import annotations

from typing import Any

from drd import crypto
from drd.server.audit import open_batch


def open_audit_object(keyring: crypto.Keyring, raw: bytes) -> list[dict[str, Any]]:
    """The records of a sealed audit object, verified (its key is taken from its own seal)."""
    public, _ = crypto.open_manifest(keyring, raw)
    return open_batch(keyring, raw, str(public.get("key")), str(public.get("chain")))
