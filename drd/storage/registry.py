"""Choosing a backend from a region's URL.

    file:///abs/path   file:relative/path (to base_dir)   gs://bucket[/prefix]   mem://name

Cloud SDKs are imported only when a URL needs them, so a local-only deployment never loads
google-cloud-storage (nor pays its import time).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from drd.errors import PermanentStorageError
from drd.storage.base import Storage

if TYPE_CHECKING:
    from google.auth.credentials import Credentials

_OPTIONS = {
    "file": {"chunk_size", "create_root"},
    "mem": {"chunk_size"},
    "gs": {"chunk_size", "timeout", "retry_deadline", "max_workers"},
}
# Bucket names: 3-63 characters (up to 222 with dots), lowercase letters, digits, - _ .
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")


def open_storage(
    name: str,
    url: str,
    *,
    base_dir: Path | None = None,
    endpoint: str | None = None,
    project: str | None = None,
    credentials: Credentials | None = None,
    **opts: Any,
) -> Storage:
    """Build the backend for `url`. Raises ValueError for a malformed URL or option, and
    PermanentStorageError for gs:// without credentials and without a (local) endpoint."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _OPTIONS:
        # Name only the scheme: a URL may carry userinfo that must not reach a log.
        raise ValueError(
            f"unsupported storage URL scheme {scheme + ':' if scheme else '(none)'} "
            "(expected file:PATH, gs://BUCKET[/PREFIX] or mem://NAME)"
        )
    unknown = sorted(set(opts) - _OPTIONS[scheme])
    if unknown:
        allowed = ", ".join(sorted(_OPTIONS[scheme]))
        raise ValueError(
            f"unknown option(s) for {scheme}: storage: {', '.join(unknown)} (allowed: {allowed})"
        )
    if parts.query or parts.fragment:
        raise ValueError(f"{scheme}: storage URL must not have a query or fragment")
    if scheme != "gs" and (endpoint or project or credentials):
        raise ValueError("endpoint, project and credentials apply to gs:// storage only")

    if scheme == "mem":
        from drd.storage.memory import MemoryStorage

        return MemoryStorage(name, **opts)
    if scheme == "file":
        from drd.storage.local import LocalStorage

        return LocalStorage(name, _file_path(parts.netloc, unquote(parts.path), base_dir), **opts)

    bucket = parts.netloc
    if not _BUCKET_RE.match(bucket):
        raise ValueError(f"invalid GCS bucket name {bucket!r} in gs:// URL")
    if credentials is None:
        if not endpoint:
            raise PermanentStorageError(
                f"region {name}: gs://{bucket} needs explicit credentials "
                "(drd never uses ambient Google credentials)"
            )
        # Only for an explicit endpoint, i.e. a local emulator.
        from drd.storage.google_auth import anonymous_credentials

        credentials = anonymous_credentials()
    from drd.storage.gcs import GCSStorage

    return GCSStorage(
        name,
        bucket,
        unquote(parts.path).strip("/"),
        project=project,
        endpoint=endpoint,
        credentials=credentials,
        **opts,
    )


def _file_path(host: str, path: str, base_dir: Path | None) -> Path:
    if host not in ("", "localhost"):
        raise ValueError(
            f"file://{host}/... names a remote host: "
            "use file:///absolute/path or file:relative/path"
        )
    if not path:
        raise ValueError("file: URL has no path")
    if path.startswith("/"):
        return Path(path)
    if base_dir is None:
        raise ValueError(f"relative file:{path} needs a base directory")
    return base_dir / path
