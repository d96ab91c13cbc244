"""How the postgres strategy reaches a server: a parsed libpq DSN, split into what goes into
a child's environment (the password among it) and what goes on its command line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from drd.secret_source import child_environment

# libpq connection keywords and the environment variable each one can be passed in.
_ENV_FOR_KEYWORD = {
    "host": "PGHOST",
    "hostaddr": "PGHOSTADDR",
    "port": "PGPORT",
    "user": "PGUSER",
    "password": "PGPASSWORD",
    "passfile": "PGPASSFILE",
    "service": "PGSERVICE",
    "options": "PGOPTIONS",
    "application_name": "PGAPPNAME",
    "client_encoding": "PGCLIENTENCODING",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "sslmode": "PGSSLMODE",
    "requiressl": "PGREQUIRESSL",
    "sslcompression": "PGSSLCOMPRESSION",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcrl": "PGSSLCRL",
    "sslcrldir": "PGSSLCRLDIR",
    "sslsni": "PGSSLSNI",
    "sslcertmode": "PGSSLCERTMODE",
    "requirepeer": "PGREQUIREPEER",
    "require_auth": "PGREQUIREAUTH",
    "ssl_min_protocol_version": "PGSSLMINPROTOCOLVERSION",
    "ssl_max_protocol_version": "PGSSLMAXPROTOCOLVERSION",
    "gssencmode": "PGGSSENCMODE",
    "gsslib": "PGGSSLIB",
    "gssdelegation": "PGGSSDELEGATION",
    "krbsrvname": "PGKRBSRVNAME",
    "channel_binding": "PGCHANNELBINDING",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
    "load_balance_hosts": "PGLOADBALANCEHOSTS",
}
# Secret keywords without an environment variable: refused rather than put in argv.
_SECRET_KEYWORDS = frozenset({"sslpassword"})

Owners = Literal["keep", "drop"]
ToastCompression = Literal["lz4", "server"]
_TOAST_SETTING = "default_toast_compression"


@dataclass(frozen=True)
class _Conn:
    """A parsed DSN, split into what goes into the child's environment and argv."""

    params: dict[str, str]

    @classmethod
    def parse(cls, dsn: str) -> _Conn:
        from psycopg.conninfo import conninfo_to_dict

        try:
            params = conninfo_to_dict(dsn)
        except Exception:
            # libpq quotes the offending part of the string, which may be the password.
            raise ValueError("not a valid libpq connection string") from None
        return cls({k: str(v) for k, v in params.items() if v is not None})

    @property
    def dbname(self) -> str | None:
        return self.params.get("dbname")

    @property
    def password(self) -> str | None:
        return self.params.get("password")

    def env(self) -> dict[str, str]:
        return child_environment(
            {_ENV_FOR_KEYWORD[k]: v for k, v in self.params.items() if k in _ENV_FOR_KEYWORD}
        )

    def dbname_arg(self, dbname: str | None = None) -> list[str]:
        """`--dbname=<conninfo>` with the database name and the keywords without env var."""
        from psycopg.conninfo import make_conninfo

        secret = _SECRET_KEYWORDS.intersection(self.params)
        if secret:
            raise ValueError(f"{', '.join(sorted(secret))} in the DSN is not supported")
        rest = {k: v for k, v in self.params.items() if k not in _ENV_FOR_KEYWORD}
        if dbname is not None:
            rest["dbname"] = dbname
        return [f"--dbname={make_conninfo('', **rest)}"] if rest else []

    def with_dbname(self, dbname: str) -> str:
        from psycopg.conninfo import make_conninfo

        return make_conninfo("", **{**self.params, "dbname": dbname})

    def describe(self) -> str:
        """The DSN without its password, for messages and reports."""
        from psycopg.conninfo import make_conninfo

        shown = {k: v for k, v in self.params.items() if k not in {"password", "sslpassword"}}
        return make_conninfo("", **shown)


# ---------------------------------------------------------------------------------------------
# Finding pg_dump / pg_restore
