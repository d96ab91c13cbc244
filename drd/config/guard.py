"""A restore test must never touch its source: the rule, in one place.

drd.config applies it when a plan is validated (an error naming the field), and the restore
test applies it again before it creates anything, in case a plan was built some other way.

- postgres-server: the scratch server's DSN must not name the source's own database (same host,
  port and database). The same server is fine: drd only ever creates and drops its own uniquely
  named database there.
- mysql-server: the scratch server's URL must not name the source's own database (same
  server, same database). The same server is fine, as for postgres-server: drd only creates and
  drops its own `drd_scratch_<id>` databases there. Servers compare by host and port, a local
  socket and the loopback names counting as one host.
- tempdir: the directory must not be the source path, nor lie inside the tree of a source that
  backs up a whole directory tree (files; Strategy.source_is_tree): the restore would write into
  the live tree, and its copy would end up in the next backup. A parent of the source is fine:
  drd creates a new uniquely named directory in it.
- gcs-scratch-bucket: the scratch prefix must not overlap the source's objects (same bucket on
  the same endpoint, and one prefix inside the other): the restore would write among them and
  its teardown delete them. Another prefix of the source's bucket is fine.
- cloudsql-scratch-project: the scratch project must not be the source's own project: scratch
  instances (created, restored into, deleted) never live next to the instance they copy. The
  one exception is a plan that says so in words: `pitr: clone-in-source-project` (Cloud SQL
  clones within the source's project; the clone is a new drd-scratch-<id> instance, and drd
  deletes only instances of that name).
"""

from __future__ import annotations

import getpass
import os
from pathlib import Path
from typing import Any

from drd.restore_tests.spec import ScratchSpec
from drd.strategies import get_strategy

_LOCAL_HOSTS = {"", "localhost", "127.0.0.1", "::1"}


def _server_and_db(dsn: str) -> tuple[frozenset[tuple[str, str]], str] | None:
    """({(host, port), ...}, dbname) of a DSN, with libpq's defaults; None if unparsable.

    A local socket, localhost and the loopback addresses all count as one host ("local"): on
    one machine they reach the same server."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
    except Exception:
        return None
    hosts = (params.get("host") or params.get("hostaddr") or "").split(",")
    ports = (params.get("port") or "5432").split(",")
    if len(ports) == 1:
        ports = ports * len(hosts)
    servers = set()
    for host, port in zip(hosts, ports, strict=False):
        host = host.strip()
        local = host in _LOCAL_HOSTS or host.startswith("/") or host.startswith("@")
        servers.add(("local" if local else host.lower(), port.strip() or "5432"))
    user = params.get("user") or getpass.getuser()
    return frozenset(servers), params.get("dbname") or user


def same_database(scratch_dsn: str, source_dsn: str) -> bool:
    a, b = _server_and_db(scratch_dsn), _server_and_db(source_dsn)
    if a is None or b is None:
        return False
    return a[1] == b[1] and bool(a[0] & b[0])


def _mysql_server(host: str, port: int, socket: str | None) -> tuple[str, int | None]:
    """(host, port) of a MySQL server; a socket is local, on a port nobody can tell (None)."""
    if socket:
        return "local", None
    return ("local" if host.lower() in _LOCAL_HOSTS else host.lower()), port


def same_mysql_database(scratch_url: str, source: Any) -> bool:
    """Whether a mysql-server scratch URL names the database of `source` (MysqlOptions)."""
    from drd.strategies.mysql_client import parse_server_url

    database = getattr(source, "database", None)
    if getattr(source, "kind", None) != "mysql" or not isinstance(database, str):
        return False
    try:
        server, named = parse_server_url(scratch_url, read_secret=False)
    except ValueError:
        return False
    if named != database:
        return False
    ours = _mysql_server(server.host, server.port, server.socket)
    theirs = _mysql_server(
        str(getattr(source, "host", "")), int(getattr(source, "port", 3306)), source.socket
    )
    return ours[0] == theirs[0] and (None in (ours[1], theirs[1]) or ours[1] == theirs[1])


def _real(path: Path | str) -> Path:
    return Path(os.path.realpath(os.path.abspath(path)))


def _is_tree(source_kind: str) -> bool:
    """Whether sources of this kind back up their `path` as a whole directory tree."""
    try:
        return get_strategy(source_kind).source_is_tree
    except ValueError:  # an unknown kind: drd.config reports it
        return False


def path_conflict(directory: Path, source_path: str, source_kind: str) -> str | None:
    """Why `directory` cannot hold scratch copies of the source at `source_path` (or None)."""
    scratch, source = _real(directory), _real(source_path)
    if scratch == source:
        return "is the source's own path"
    if _is_tree(source_kind) and scratch.is_relative_to(source):
        return "is inside the source's directory tree"
    return None


#: where the storage API is when no endpoint is named
GOOGLE_STORAGE_API = "https://storage.googleapis.com"


def _gcs_service(endpoint: str | None) -> str:
    """An endpoint as a service: no endpoint is Google's own, named or not."""
    return (endpoint or GOOGLE_STORAGE_API).rstrip("/").lower()


def _gcs_overlap(spec: ScratchSpec, source: Any) -> bool:
    if getattr(source, "kind", None) != "gcs-bucket" or spec.bucket != source.bucket:
        return False
    if _gcs_service(spec.endpoint) != _gcs_service(source.endpoint):
        return False  # another service (an emulator): bucket names are not shared
    ours = spec.gcs_prefix
    theirs = source.prefix.strip("/") + "/" if source.prefix.strip("/") else ""
    return ours.startswith(theirs) or theirs.startswith(ours)


def refusal(spec: ScratchSpec, source: Any) -> tuple[str, str] | None:
    """(field, message) when `spec` points at `source` (a SourceOptions), else None."""
    name = getattr(source, "name", "?")
    same_project = spec.project is not None and spec.project == getattr(source, "project", None)
    if spec.kind == "cloudsql-scratch-project" and same_project:
        return (
            "project",
            f"is the project of source {name} itself: restore tests never touch their source; "
            "name a separate scratch project (drd creates and deletes its instances there)"
            + (
                "; for a point-in-time clone next to the source, say pitr: "
                "clone-in-source-project instead"
                if spec.pitr == "clone"
                else ""
            ),
        )
    if spec.kind == "postgres-server" and spec.dsn is not None:
        source_dsn = getattr(source, "dsn", None)
        if isinstance(source_dsn, str) and same_database(spec.dsn, source_dsn):
            return (
                "dsn",
                f"names the database of source {name} itself (same host, port and database): "
                "restore tests never touch their source; name the scratch server's maintenance "
                "database (e.g. dbname=postgres), drd creates its own database there",
            )
    if (
        spec.kind == "mysql-server"
        and spec.url is not None
        and same_mysql_database(spec.url, source)
    ):
        return (
            "url",
            f"names the database of source {name} itself (same server and database): "
            "restore tests never touch their source; name the scratch server only (drd "
            "creates its own database there)",
        )
    if spec.kind == "gcs-scratch-bucket" and _gcs_overlap(spec, source):
        return (
            "prefix",
            f"overlaps the objects of source {name} itself (same bucket and endpoint): restore "
            "tests never write to their source; name another bucket or a prefix outside the "
            "source's",
        )
    if spec.dir is not None:
        source_path = getattr(source, "path", None)
        if source_path is not None:
            problem = path_conflict(spec.dir, str(source_path), str(getattr(source, "kind", "")))
            if problem is not None:
                return (
                    "dir",
                    f"{problem} (source {name}): restore tests never write to their source",
                )
    return None
