"""Reading secrets that are delivered at process start: an environment variable, a systemd
credential ($CREDENTIALS_DIRECTORY/<name>, from LoadCredential=/LoadCredentialEncrypted=), or
standard input. There is deliberately no way to name an arbitrary file: secrets never live in
the config or next to it. Values are returned to the caller and never logged.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Mapping
from typing import TextIO

from drd.errors import ConfigError, DrdError

SOURCES = ("env", "credential", "stdin")
# Room for a service-account JSON or hundreds of keys; keeps a wrongly named file from being
# slurped whole.
MAX_SECRET_BYTES = 64 * 1024


def read_credential(
    name: str,
    *,
    what: str,
    error: type[DrdError],
    credentials_dir: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> str:
    """Read systemd credential `name` from `credentials_dir` (default $CREDENTIALS_DIRECTORY).

    Errors are raised as `error` (ConfigError, KeyringError, ...) and never quote the content.
    """
    if not name or name in {".", ".."} or "/" in name or "\0" in name or len(name) > 255:
        raise error(f"{what}: invalid credential name {name!r}: a plain file name (no '/')")
    origin = f"credential {name!r}"
    if credentials_dir is None:
        credentials_dir = (os.environ if environ is None else environ).get("CREDENTIALS_DIRECTORY")
        if not credentials_dir:
            raise error(
                f"{what}: cannot load {origin}: $CREDENTIALS_DIRECTORY is not set (pass it with "
                f"LoadCredential={name}:... or SetCredential= in the systemd unit)"
            )
    path = os.path.join(credentials_dir, name)
    try:
        # O_NOFOLLOW: the credential must be the file systemd placed there, not a link to some
        # other file; O_NONBLOCK: opening a FIFO must not hang start-up (checked right after).
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise error(f"{what}: {origin} not found in {credentials_dir}") from None
    except OSError as exc:
        raise error(f"{what}: cannot open {origin} in {credentials_dir}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise error(f"{what}: {origin} in {credentials_dir} is not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            raw = f.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise error(f"{what}: cannot read {origin}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(raw) > MAX_SECRET_BYTES:
        raise error(f"{what}: {origin} is larger than {MAX_SECRET_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        # The exception's own text would quote bytes of the credential: not repeated here.
        raise error(f"{what}: {origin} is not UTF-8 text") from None
    if not text.strip():
        raise error(f"{what}: {origin} is empty")
    return text


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
        return read_credential(name or "", what=what, error=ConfigError, environ=env)
    if source == "stdin":
        stream = stdin if stdin is not None else sys.stdin
        value = stream.read()
        if not value.strip():
            raise ConfigError(f"{what}: nothing was read from standard input")
        return value
    raise ConfigError(f"{what}: unknown secret source {source!r} (use one of {', '.join(SOURCES)})")
