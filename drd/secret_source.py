"""Reading secrets that are delivered at process start: an environment variable, a systemd
credential ($CREDENTIALS_DIRECTORY/<name>, from LoadCredential=/LoadCredentialEncrypted=), or
standard input. There is deliberately no way to name an arbitrary file: secrets never live in
the config or next to it. Values are returned to the caller and never logged.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import TextIO

from drd.errors import ConfigError

SOURCES = ("env", "credential", "stdin")


def read_secret(
    source: str,
    name: str | None,
    *,
    what: str,
    environ: Mapping[str, str] | None = None,
    stdin: TextIO | None = None,
) -> str:
    """Return the secret text; `what` names it in errors ("keyring", "GCS credentials ...")."""
    env = os.environ if environ is None else environ
    if source == "env":
        if not name:
            raise ConfigError(f"{what}: source 'env' needs the variable name")
        value = env.get(name)
        if not value:
            raise ConfigError(f"{what}: environment variable {name} is not set or empty")
        return value
    if source == "credential":
        if not name or "/" in name or name in {".", ".."}:
            raise ConfigError(f"{what}: credential name must be a plain file name, got {name!r}")
        directory = env.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise ConfigError(
                f"{what}: credential {name!r} requested but $CREDENTIALS_DIRECTORY is not set "
                "(run under systemd with LoadCredential=)"
            )
        path = os.path.join(directory, name)
        try:
            with open(path, encoding="utf-8") as fh:
                value = fh.read()
        except OSError as exc:
            raise ConfigError(f"{what}: cannot read credential {name!r}: {exc.strerror}") from None
        if not value.strip():
            raise ConfigError(f"{what}: credential {name!r} is empty")
        return value
    if source == "stdin":
        stream = stdin if stdin is not None else sys.stdin
        value = stream.read()
        if not value.strip():
            raise ConfigError(f"{what}: nothing was read from standard input")
        return value
    raise ConfigError(f"{what}: unknown secret source {source!r} (use one of {', '.join(SOURCES)})")
