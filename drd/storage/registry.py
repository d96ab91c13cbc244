"""Choosing a backend from a region's URL (parsed by drd.storage.urls, which has the table of
schemes and their options).

    file:///abs/path   file:relative/path (to base_dir)   gs://bucket[/prefix]   mem://name

Cloud SDKs are imported only when a URL needs them, so a local-only deployment never loads
google-cloud-storage (nor pays its import time).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from drd.errors import PermanentStorageError
from drd.storage.base import Storage
from drd.storage.urls import SCHEMES, RegionURLError, parse_region_url

if TYPE_CHECKING:
    from google.auth.credentials import Credentials


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
    """Build the backend for `url` (drd.storage.urls; the scheme may be capitalised). Raises
    ValueError for a malformed URL or option, and PermanentStorageError for gs:// without
    credentials and without a (local) endpoint."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in SCHEMES:
        # Name only the scheme: a URL may carry userinfo that must not reach a log.
        raise ValueError(
            f"unsupported storage URL scheme {scheme + ':' if scheme else '(none)'} "
            "(expected file:PATH, gs://BUCKET[/PREFIX] or mem://NAME)"
        )
    allowed = SCHEMES[scheme].options
    unknown = sorted(set(opts) - allowed)
    if unknown:
        raise ValueError(
            f"unknown option(s) for {scheme}: storage: {', '.join(unknown)} "
            f"(allowed: {', '.join(sorted(allowed))})"
        )
    try:
        region = parse_region_url(scheme + url[url.index(":") :])
    except RegionURLError as exc:
        raise ValueError(_worded(exc, scheme)) from None
    if not SCHEMES[scheme].remote and (endpoint or project or credentials):
        raise ValueError("endpoint, project and credentials apply to gs:// storage only")

    if region.scheme == "mem":
        from drd.storage.memory import MemoryStorage

        return MemoryStorage(name, **opts)
    if region.scheme == "file":
        from drd.storage.local import LocalStorage

        return LocalStorage(name, _directory(region.where, base_dir), **opts)

    bucket = region.where
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
        region.prefix,
        project=project,
        endpoint=endpoint,
        credentials=credentials,
        **opts,
    )


def _worded(error: RegionURLError, scheme: str) -> str:
    """A URL problem in the words this function's callers have always seen."""
    if error.problem == "query":
        return f"{scheme}: storage URL must not have a query or fragment"
    if error.problem == "host":
        return (
            f"file://{error.part}/... names a remote host: "
            "use file:///absolute/path or file:relative/path"
        )
    if error.problem == "no-path":
        return "file: URL has no path"
    if error.problem == "bucket":
        return f"invalid GCS bucket name {error.part!r} in gs:// URL"
    return str(error)


def _directory(path: str, base_dir: Path | None) -> Path:
    if path.startswith("/"):
        return Path(path)
    if base_dir is None:
        raise ValueError(f"relative file:{path} needs a base directory")
    return base_dir / path
