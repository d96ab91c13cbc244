"""Key delivery: how the keyring reaches the process. Keys are read once at start-up and then
held only in memory; drd never reads keys from an arbitrary file path and never writes them.

Three sources:
- `env`: an environment variable (default DRD_KEYS), for development and one-off commands. The
  variable is removed from the process environment once read, so that child processes
  (pg_dump, ...) do not inherit the keys, and overwritten in the environment block the kernel
  shows as /proc/<pid>/environ. The parent that set it (a shell, a unit's Environment=) still
  holds it: production daemons use `credential`.
- `credential`: a systemd credential, `$CREDENTIALS_DIRECTORY/<name>` (LoadCredential=,
  LoadCredentialEncrypted=, SetCredential=): the preferred way for the daemon.
- `stdin`: key strings piped on standard input (one-off restores from a password manager).

The text holds one or more `drdk1:` key strings (see drd.crypto.Keyring.parse); the first is
the primary key. Error messages name the source and what is wrong, never the key material.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from typing import TextIO

from drd.crypto import Key, Keyring, generate_key  # Key, generate_key: re-exported
from drd.errors import KeyringError
from drd.secret_source import read_credential, scrub_environment_block

__all__ = [
    "DEFAULT_CREDENTIAL",
    "DEFAULT_ENV_VAR",
    "SOURCES",
    "Key",
    "Keyring",
    "generate_key",
    "load_keyring",
    "load_keyring_from_credential",
    "load_keyring_from_env",
    "load_keyring_from_stdin",
]

DEFAULT_ENV_VAR = "DRD_KEYS"
DEFAULT_CREDENTIAL = "drd-keys"
SOURCES = ("env", "credential", "stdin")
# A key string is 66 characters: this is room for hundreds of keys plus comments, and keeps a
# wrongly piped file from being slurped whole.
MAX_KEYRING_TEXT = 64 * 1024

# Variables this process already read and removed from os.environ, for a clear second-read error.
_scrubbed: set[str] = set()


def load_keyring_from_env(
    var: str,
    environ: MutableMapping[str, str] = os.environ,
    *,
    scrub: bool = True,
) -> Keyring:
    """Parse the keys in environment variable `var`, then (scrub=True) remove the variable from
    `environ`, even when its value is malformed, so no child process inherits it."""
    value = environ.get(var)
    if value is None:
        if environ is os.environ and var in _scrubbed:
            raise KeyringError(
                f"environment variable {var} is not set: this process already read it and removed "
                "it from the environment (keys are read once, at start-up)"
            )
        raise KeyringError(f"environment variable {var} is not set: it must hold the keys")
    if scrub:
        del environ[var]
        if environ is os.environ:
            _scrubbed.add(var)
            # os.environ forgets it; the kernel's copy of the block (/proc/<pid>/environ) not.
            scrub_environment_block([var])
    origin = f"environment variable {var}"
    if len(value) > MAX_KEYRING_TEXT:
        raise KeyringError(f"{origin} is longer than {MAX_KEYRING_TEXT} characters")
    return Keyring.parse(value, origin)


def load_keyring_from_credential(name: str, credentials_dir: str | None = None) -> Keyring:
    """Parse the systemd credential `name` from `credentials_dir` (default
    $CREDENTIALS_DIRECTORY, which systemd sets for units with credentials)."""
    text = read_credential(name, what="keys", error=KeyringError, credentials_dir=credentials_dir)
    return Keyring.parse(text, f"credential {name!r}")


def load_keyring_from_stdin(stream: TextIO) -> Keyring:
    """Parse keys read from `stream` (normally sys.stdin) until end of file."""
    origin = "standard input"
    try:
        text = stream.read(MAX_KEYRING_TEXT + 1)
    except UnicodeDecodeError:
        raise KeyringError(f"{origin} is not UTF-8 text") from None
    except (OSError, ValueError) as exc:
        raise KeyringError(f"cannot read keys from {origin}: {type(exc).__name__}") from None
    if len(text) > MAX_KEYRING_TEXT:
        raise KeyringError(f"{origin} holds more than {MAX_KEYRING_TEXT} characters")
    return Keyring.parse(text, origin)


def load_keyring(source: str, name: str | None = None) -> Keyring:
    """Load the keyring from `source` ("env", "credential" or "stdin"). `name` is the variable
    (default DRD_KEYS) or credential (default drd-keys); stdin takes no name."""
    if source == "env":
        return load_keyring_from_env(name or DEFAULT_ENV_VAR)
    if source == "credential":
        return load_keyring_from_credential(name or DEFAULT_CREDENTIAL)
    if source == "stdin":
        if name:
            raise KeyringError(f"key source 'stdin' takes no name (got {name!r})")
        if sys.stdin is None:
            raise KeyringError("key source 'stdin': the process has no standard input")
        return load_keyring_from_stdin(sys.stdin)
    raise KeyringError(f"unknown key source {source!r}: expected one of {', '.join(SOURCES)}")
