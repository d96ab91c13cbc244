"""How the command line asks the running daemon (`drd status`, `drd drills`): its HTTP API at
the config's `api.listen`, with a bearer token when one is given.

The token comes from `--token SOURCE` (env:VAR, credential:NAME or stdin, like --keys) or else
the DRD_TOKEN environment variable; without one, only a daemon with `public_read` answers. It
is sent in the Authorization header and nowhere else: never logged, never in an error.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp

from drd.config.models import Config
from drd.errors import UsageError
from drd.secret_source import read_secret, take_from_environment

TOKEN_VARIABLE = "DRD_TOKEN"  # noqa: S105 - the variable's name, not a token
_TIMEOUT = 5.0


def read_token(source: str | None) -> str | None:
    """The API token from `--token SOURCE`, else $DRD_TOKEN; None when neither is given."""
    if source:
        kind, _, name = source.partition(":")
        return _checked(read_secret(kind, name or None, what="API token (--token)"), "--token")
    value = take_from_environment(TOKEN_VARIABLE) if TOKEN_VARIABLE in os.environ else None
    # An empty variable is one left unset by a script, not a token.
    return _checked(value, f"${TOKEN_VARIABLE}") if value else None


def _checked(value: str, where: str) -> str:
    token = value.strip()
    if not token or any(c.isspace() for c in token):
        # Never quote it: a malformed token is still a secret.
        raise UsageError(f"{where}: the token read is empty or contains whitespace")
    return token


def api_url(cfg: Config) -> str | None:
    """Where the daemon of this config listens; None when it cannot be known (port 0)."""
    host, port = cfg.api.host, cfg.api.port
    if port == 0:
        return None
    # A wildcard listener is reached on loopback.
    wildcard = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104
    host = wildcard.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if cfg.api.tls else 'http'}://{host}:{port}"


class ApiUnavailable(Exception):
    """The daemon did not answer, or refused (the message says which, without the token)."""


@dataclass
class DaemonApi:
    url: str
    token: str | None = None

    async def get(self, path: str, *, allow: tuple[int, ...] = ()) -> tuple[int, Any]:
        """GET `path` and its JSON body. Statuses other than 200 (and `allow`) raise
        ApiUnavailable naming the status and the daemon's message."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        ctx = ssl.create_default_context() if self.url.startswith("https:") else None
        timeout = aiohttp.ClientTimeout(total=_TIMEOUT)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(self.url + path, headers=headers, ssl=ctx or False) as response,
            ):
                try:
                    body = await response.json(content_type=None)
                except ValueError:
                    body = None
                if response.status != 200 and response.status not in allow:
                    raise ApiUnavailable(
                        f"{self.url}{path} answered {response.status}: {_message(body)}"
                        + (
                            f" (give a token with --token or ${TOKEN_VARIABLE})"
                            if response.status == 401
                            else ""
                        )
                    )
                return response.status, body
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ApiUnavailable(
                f"no answer from {self.url}: {type(exc).__name__}: {exc}"[:300]
            ) from None


def _message(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message", ""))[:200]
    return "no error message"
