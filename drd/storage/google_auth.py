"""Google credentials and endpoints for every drd client of a Google API (gs:// regions, the
gcs-bucket and cloudsql strategies): always explicit.

- `{source: env, name: VAR}` / `{source: credential, name: NAME}`: a service-account JSON key
  delivered like drd's keys (an environment variable or a systemd credential), read when the
  job runs.
- `{source: anonymous}`: only with an endpoint on a loopback address (an emulator or a local
  fake API). Never ambient discovery (google.auth.default() probes the GCE metadata server).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from typing import Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, model_validator

from drd.errors import ConfigError
from drd.fields import secret_name_problem
from drd.secret_source import read_secret

STORAGE_SCOPES = ("https://www.googleapis.com/auth/devstorage.read_write",)
CLOUD_PLATFORM_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)


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


def check_endpoint(value: str | None) -> str | None:
    """An API endpoint: scheme://host[:port]; plain http only to a loopback address."""
    if value is None:
        return value
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError("invalid port in the endpoint URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http(s) URL, e.g. http://127.0.0.1:4443")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError("expected scheme://host[:port] only, no path, query or user")
    if parts.scheme == "http" and not is_loopback_url(value):
        raise ValueError("plain http is only allowed to a loopback address")
    return value.rstrip("/")


def build_credentials(
    creds: GoogleCredentials | dict[str, str],
    endpoint: str | None,
    *,
    scopes: Sequence[str],
    what: str,
) -> Any:
    """google.auth credentials as `creds` says; ConfigError when that is not possible."""
    if isinstance(creds, dict):
        source, name = creds.get("source", "anonymous" if endpoint else ""), creds.get("name")
    else:
        source, name = creds.source, creds.name
    if source == "anonymous":
        if not endpoint or not is_loopback_url(endpoint):
            raise ConfigError(f"{what}: anonymous credentials only with a loopback endpoint")
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials()  # type: ignore[no-untyped-call]
    if source in ("env", "credential"):
        from google.oauth2 import service_account

        text = read_secret(source, name, what=what)
        try:
            info = json.loads(text)
            return service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
                info, scopes=list(scopes)
            )
        except (ValueError, KeyError) as exc:
            raise ConfigError(
                f"{what}: not a service-account JSON key ({type(exc).__name__})"
            ) from None
    raise ConfigError(f"{what}: credentials required (source: env, credential or anonymous)")
