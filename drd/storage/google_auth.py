"""Google credentials and API endpoints, for every drd client of a Google API: gs:// regions
(drd.storage.regions), the gcs-bucket and cloudsql strategies, and drd.config's checks.

Credentials are always explicit:
- `{source: env, name: VAR}` / `{source: credential, name: NAME}`: a service-account JSON key
  delivered like drd's keys (an environment variable or a systemd credential), read when the
  client is built.
- `{source: anonymous}`: only with an endpoint on a loopback address (an emulator or a local
  fake API).
Never ambient discovery: google.auth.default() probes the GCE metadata server.

The loopback rule: without real credentials, or over plain http, drd talks only to an endpoint
on a loopback address (127.0.0.0/8, ::1, localhost).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal, Self
from urllib.parse import SplitResult, urlsplit

from pydantic import BaseModel, ConfigDict, model_validator

from drd.errors import ConfigError
from drd.fields import secret_name_problem
from drd.secret_source import read_secret

if TYPE_CHECKING:
    from google.auth.credentials import Credentials

STORAGE_SCOPES = ("https://www.googleapis.com/auth/devstorage.read_write",)
CLOUD_PLATFORM_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
PLAIN_HTTP_REFUSED = "plain http is only allowed to a loopback address"


# --------------------------------------------------------------------------------------------
# The loopback rule


def is_loopback_host(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: the only places drd talks to without real credentials."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback_url(url: str) -> bool:
    return is_loopback_host(urlsplit(url).hostname or "")


def anonymous_allowed(endpoint: str | None) -> bool:
    """Anonymous credentials only for an explicit endpoint on a loopback address."""
    if not endpoint:
        return False
    return is_loopback_url(endpoint)


def plain_http_off_loopback(endpoint: str) -> bool:
    """An http:// (not https://) endpoint that is not on a loopback address: refused."""
    return urlsplit(endpoint).scheme == "http" and not is_loopback_url(endpoint)


# --------------------------------------------------------------------------------------------
# Endpoints


def split_endpoint(value: str) -> SplitResult:
    """An API endpoint, scheme://host[:port] and nothing else (ValueError otherwise)."""
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError("invalid port in the endpoint URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http(s) URL, e.g. http://127.0.0.1:4443")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError("expected scheme://host[:port] only, no path, query or user")
    return parts


def check_endpoint(value: str | None) -> str | None:
    """An API endpoint: scheme://host[:port]; plain http only to a loopback address. Returned
    without a trailing '/'."""
    if value is None:
        return value
    split_endpoint(value)
    if plain_http_off_loopback(value):
        raise ValueError(PLAIN_HTTP_REFUSED)
    return value.rstrip("/")


# --------------------------------------------------------------------------------------------
# Credentials


class GoogleCredentials(BaseModel):
    """Where a Google API client's credentials come from (module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Literal["env", "credential", "anonymous"]
    name: str | None = None

    @model_validator(mode="after")
    def _name_fits_source(self) -> Self:
        problem = secret_name_problem(self.source, self.name)
        if problem is not None:
            raise ValueError(f"name: {problem}")
        return self


def anonymous_credentials() -> Credentials:
    """google.auth's anonymous credentials (for an emulator: see anonymous_allowed)."""
    from google.auth.credentials import AnonymousCredentials

    return AnonymousCredentials()  # type: ignore[no-untyped-call]


def build_credentials(
    creds: GoogleCredentials | Mapping[str, str],
    endpoint: str | None,
    *,
    scopes: Sequence[str],
    what: str,
    missing: str = "credentials required",
) -> Credentials:
    """google.auth credentials as `creds` says; ConfigError when that is not possible. A
    mapping without a source means anonymous with an endpoint, else nothing (`missing` then
    says what is required)."""
    source: str
    name: str | None
    if isinstance(creds, GoogleCredentials):
        source, name = creds.source, creds.name
    else:
        source, name = creds.get("source", "anonymous" if endpoint else ""), creds.get("name")
    if source == "anonymous":
        if not anonymous_allowed(endpoint):
            raise ConfigError(f"{what}: anonymous credentials only with a loopback endpoint")
        return anonymous_credentials()
    if source in ("env", "credential"):
        from google.oauth2 import service_account

        text = read_secret(source, name, what=what)
        try:
            info = json.loads(text)
            return service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call,no-any-return]
                info, scopes=list(scopes)
            )
        except (ValueError, KeyError) as exc:
            raise ConfigError(
                f"{what}: not a service-account JSON key ({type(exc).__name__})"
            ) from None
    raise ConfigError(f"{what}: {missing} (source: env, credential or anonymous)")
