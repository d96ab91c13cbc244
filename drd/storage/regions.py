"""Turning region definitions (from drd.yaml, or `--storage` on the command line) into Storage.

Google credentials are always explicit (drd.storage.google_auth): a service-account JSON
delivered like a key, or anonymous credentials for a loopback emulator. Nothing here ever falls
back to ambient discovery, which would probe the GCE metadata server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from drd.errors import ConfigError, UsageError
from drd.storage.base import Storage
from drd.storage.google_auth import STORAGE_SCOPES, build_credentials
from drd.storage.registry import open_storage
from drd.storage.urls import SCHEMES

if TYPE_CHECKING:
    from google.auth.credentials import Credentials


@dataclass(frozen=True)
class RegionSpec:
    name: str
    url: str
    endpoint: str | None = None
    project: str | None = None
    # {"source": "anonymous" | "env" | "credential", "name": ...}
    credentials: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


def google_credentials(spec: RegionSpec) -> Credentials:
    """The credentials of a gs:// region (drd.storage.google_auth: always explicit)."""
    return build_credentials(
        spec.credentials,
        spec.endpoint,
        scopes=STORAGE_SCOPES,
        what=f"region {spec.name}: credentials",
        missing=f"required for {spec.url}",
    )


def open_region(spec: RegionSpec, base_dir: Path | None = None) -> Storage:
    credentials = google_credentials(spec) if spec.url.startswith("gs://") else None
    try:
        return open_storage(
            spec.name,
            spec.url,
            base_dir=base_dir,
            endpoint=spec.endpoint,
            project=spec.project,
            credentials=credentials,
            **spec.options,
        )
    except ValueError as exc:
        raise ConfigError(f"region {spec.name}: {exc}") from None


def parse_storage_arg(text: str) -> RegionSpec:
    """`--storage [NAME=]URL[?endpoint=...&project=...&credentials=env:VAR]`.

    For the 3 a.m. restore on a fresh machine: name the regions directly, no drd.yaml needed.
    The region URL itself is checked when it is opened (drd.storage.urls).
    """
    name, sep, url = text.partition("=")
    if not sep or "://" in name or ":" in name:
        name, url = "", text
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise UsageError(f"--storage {text!r}: expected file:PATH, gs://BUCKET[/PREFIX] or mem://")
    params = dict(parse_qsl(parts.query))
    bare = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    if parts.scheme == "file" and not parts.netloc:
        bare = "file:" + parts.path
    creds: dict[str, str] = {}
    if "credentials" in params:
        source, _, cred_name = params.pop("credentials").partition(":")
        creds = {"source": source, "name": cred_name}
    return RegionSpec(
        name=name or parts.netloc or Path(parts.path).name or "storage",
        url=bare,
        endpoint=params.pop("endpoint", None),
        project=params.pop("project", None),
        credentials=creds,
        options={},
    )
