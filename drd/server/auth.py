"""Bearer tokens and roles for the HTTP API.

Tokens are random 256-bit strings handed to people and systems (delivered like keys: an
environment variable or a systemd credential on the client side); drd's config holds only
their SHA-256, so a leaked config grants nothing. SHA-256 without a salt is enough here
because the tokens are random, not passwords. Lookups compare every configured hash in
constant time, so response timing does not reveal how close a guess was.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from drd.config.models import ApiToken

ROLES = ("viewer", "operator", "coordinator")
TOKEN_PREFIX = "drdt1_"  # noqa: S105 - a format marker, not a secret


@dataclass(frozen=True)
class Principal:
    name: str
    role: str

    def allows(self, needed: str) -> bool:
        """Roles are ordered: a coordinator may do what an operator may, and so on."""
        return ROLES.index(self.role) >= ROLES.index(needed)


ANONYMOUS = Principal("anonymous", "none")


def generate_token() -> str:
    raw = secrets.token_bytes(32)
    return TOKEN_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenAuthority:
    def __init__(self, tokens: Sequence[ApiToken]) -> None:
        self._tokens = [(bytes.fromhex(t.sha256), Principal(t.name, t.role)) for t in tokens]

    def authenticate(self, authorization: str | None) -> Principal | None:
        """The principal for an `Authorization: Bearer <token>` header, or None."""
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        digest = hashlib.sha256(token.strip().encode()).digest()
        found: Principal | None = None
        for expected, principal in self._tokens:
            # No early exit: every hash is compared, whatever matched.
            if hmac.compare_digest(digest, expected):
                found = principal
        return found
