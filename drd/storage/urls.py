"""Region URLs: the one parser, and the table of the schemes a region can have.

    file:PATH            a local directory: relative to the config's directory unless absolute
                         (file:///PATH and file://localhost/PATH are absolute)
    gs://BUCKET/PREFIX   a Google Cloud Storage bucket, the objects under PREFIX (optional)
    mem://NAME           in memory, for tests and demos

PATH and PREFIX are percent-decoded; a region URL has no query or fragment. drd.config checks
the regions of drd.yaml with parse_region_url, and drd.storage.registry opens them with it.

A RegionURLError says what is wrong in `problem` as well as in its message (the words drd.yaml
errors use), so that a caller can word the same problem its own way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import quote, unquote


@dataclass(frozen=True)
class Scheme:
    #: the backend options (keyword arguments of drd.storage.registry.open_storage) it takes
    options: frozenset[str]
    #: a cloud service, reached at an endpoint, in a project, with credentials
    remote: bool = False


SCHEMES: dict[str, Scheme] = {
    "file": Scheme(frozenset({"chunk_size", "create_root"})),
    "gs": Scheme(
        frozenset({"chunk_size", "timeout", "retry_deadline", "max_workers"}), remote=True
    ),
    "mem": Scheme(frozenset({"chunk_size"})),
}

#: GCS bucket names: 3-63 characters (up to 222 with dots), lowercase letters, digits, - _ .
GCS_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")

Problem = Literal["scheme", "query", "host", "no-path", "root", "bucket", "prefix"]


class RegionURLError(ValueError):
    """A region URL that cannot be parsed. `part` is the offending host or bucket name, for
    callers that show it (the message itself never repeats any part of the URL)."""

    def __init__(self, problem: Problem, message: str, part: str = "") -> None:
        super().__init__(message)
        self.problem = problem
        self.part = part


@dataclass(frozen=True)
class RegionURL:
    scheme: Literal["file", "gs", "mem"]
    #: file: the directory (percent-decoded; maybe relative); gs: the bucket; mem: the name
    where: str
    #: gs: the object prefix, percent-decoded, without slashes at either end ("" if none)
    prefix: str = ""


def parse_region_url(url: str) -> RegionURL:
    """`url` taken apart (module docstring); RegionURLError when it is not a region URL.
    Schemes are lowercase, as drd.yaml writes them."""
    scheme, sep, rest = url.partition(":")
    if "?" in rest or "#" in rest:
        raise RegionURLError("query", "a region URL cannot have a query or fragment ('?', '#')")
    if scheme == "file" and sep:
        path = unquote(rest)
        if rest.startswith("//"):
            host, slash, tail = rest[2:].partition("/")
            if host not in ("", "localhost"):
                raise RegionURLError(
                    "host", "a file: URL names a local path; it cannot name a host", host
                )
            path = slash + unquote(tail)
        if path in ("", "/"):
            raise RegionURLError(
                "no-path" if not path else "root",
                "a file: URL needs a directory, e.g. file:.drd/regions/a",
            )
        return RegionURL("file", path)
    if scheme == "gs" and rest.startswith("//"):
        bucket, _, raw_prefix = rest[2:].partition("/")
        if not GCS_BUCKET.fullmatch(bucket):
            raise RegionURLError(
                "bucket", "not a valid GCS bucket name (gs://BUCKET/PREFIX)", bucket
            )
        if "//" in raw_prefix.strip("/"):
            raise RegionURLError("prefix", "the object prefix has an empty path segment ('//')")
        return RegionURL("gs", bucket, unquote(raw_prefix).strip("/"))
    if scheme == "mem" and rest.startswith("//") and rest[2:]:
        return RegionURL("mem", rest[2:])
    raise RegionURLError(
        "scheme", "unsupported region URL: use file:PATH, gs://BUCKET/PREFIX or mem://NAME"
    )


def file_url(directory: Path) -> str:
    """The file: URL of a directory (percent-encoded as needed): parse_region_url's inverse."""
    return f"file:{quote(str(directory))}"
