"""Secrets delivered at process start, and keeping them out of reach afterwards.

Reading: an environment variable, a systemd credential ($CREDENTIALS_DIRECTORY/<name>, from
LoadCredential=/LoadCredentialEncrypted=), or standard input. There is deliberately no way to
name an arbitrary file: secrets never live in the config or next to it. Values are returned to
the caller and never logged.

Out of reach: a variable a secret was read from leaves os.environ at once (so no child inherits
it) and its bytes are overwritten in the environment block the kernel keeps at the top of the
stack (what /proc/<pid>/environ shows: unsetenv() does not touch it). `protect_process` makes
the process non-dumpable with a core limit of 0, so neither a core file nor a same-user
ptrace/`/proc/<pid>/mem` reader sees the keys. `child_environment` is the one way a child's
environment is built. `redact_target` is how a DSN or URL is shown.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import resource
import stat
import sys
from collections.abc import Iterable, Mapping
from typing import TextIO

from drd.errors import ConfigError, DrdError

log = logging.getLogger(__name__)

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


def credential_path(name: str, *, what: str, directory: str | None = None) -> str:
    """The path of systemd credential `name`, for libraries that read a file themselves (the
    TLS key): checked to be a regular file in $CREDENTIALS_DIRECTORY (a private, unswappable
    directory systemd makes for this service alone)."""
    if not name or name in {".", ".."} or "/" in name or "\0" in name or len(name) > 255:
        raise ConfigError(f"{what}: invalid credential name {name!r}: a plain file name (no '/')")
    directory = directory or os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise ConfigError(
            f"{what}: cannot load credential {name!r}: $CREDENTIALS_DIRECTORY is not set (pass "
            f"it with LoadCredential={name}:... in the systemd unit)"
        )
    path = os.path.join(directory, name)
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise ConfigError(f"{what}: credential {name!r} in {directory}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{what}: credential {name!r} in {directory} is not a regular file")
    return path


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
        value = take_from_environment(name) if environ is None else env.get(name)
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


# Secrets this process took out of its environment, by variable name: a second read of the same
# variable (every job reads its source's password anew) gets the value from here. A variable set
# again later (a test, a re-exec) wins over what was kept.
_taken: dict[str, str] = {}


def take_from_environment(name: str) -> str | None:
    """The value of environment variable `name`, removed from os.environ (and so from every
    child's environment) and overwritten in the kernel's copy of the environment block."""
    value = os.environ.pop(name, None)
    if value is not None:
        _taken[name] = value
        scrub_environment_block([name])
        return value
    return _taken.get(name)


def secret_variables() -> frozenset[str]:
    """The environment variables this process read a secret from."""
    return frozenset(_taken)


def child_environment(
    extra: Mapping[str, str] | None = None, *, drop: Iterable[str] = ()
) -> dict[str, str]:
    """A child process's environment: this process's, without any variable a secret was read
    from, without drd's own DRD_* settings (DRD_KEYS among them) and without `drop`, plus
    `extra` (the one secret that child needs, e.g. PGPASSWORD)."""
    dropped = {*_taken, *drop}
    env = {k: v for k, v in os.environ.items() if k not in dropped and not k.startswith("DRD_")}
    env.update(extra or {})
    return env


def _environment_block() -> tuple[int, int] | None:
    """(start, end) of the environment block in this process's memory, from /proc/self/stat
    (fields 50 and 51, env_start and env_end; see proc(5))."""
    try:
        with open("/proc/self/stat", "rb") as f:
            stat_line = f.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may itself hold spaces or ')'.
    fields = stat_line[stat_line.rindex(b")") + 2 :].split()
    try:
        start, end = int(fields[50 - 3]), int(fields[51 - 3])
    except (IndexError, ValueError):
        return None
    return (start, end) if 0 < start < end else None


def scrub_environment_block(names: Iterable[str]) -> bool:
    """Overwrite `NAME=value` of each of `names` with NUL bytes in the environment block the
    kernel shows as /proc/self/environ. Returns False where that could not be done (no /proc:
    then the value stays readable there by this user and root, and a warning says so)."""
    wanted = {n.encode() for n in names}
    block = _environment_block()
    if block is None:
        log.warning(
            "cannot scrub the environment block (no /proc/self/stat): a secret read "
            "from the environment stays readable in /proc/%d/environ",
            os.getpid(),
        )
        return False
    start, end = block
    try:
        # /proc/self/mem rather than a pointer: a write to an unmapped or read-only page is an
        # OSError here, never a crash. Opened before protect_process() makes us non-dumpable.
        with open("/proc/self/mem", "r+b", buffering=0) as mem:
            mem.seek(start)
            raw = mem.read(end - start)
            offset = 0
            for entry in raw.split(b"\0"):
                key = entry.partition(b"=")[0]
                if key in wanted and b"=" in entry:
                    mem.seek(start + offset)
                    mem.write(b"\0" * len(entry))
                offset += len(entry) + 1
    except OSError as exc:
        log.warning(
            "cannot scrub the environment block (%s): a secret read from the "
            "environment stays readable in /proc/%d/environ",
            exc.strerror,
            os.getpid(),
        )
        return False
    return True


_PR_SET_DUMPABLE = 4


def protect_process() -> list[str]:
    """Make this process non-dumpable (no core file, no same-user ptrace or /proc/<pid>/mem
    reader) with a core-file limit of 0. Returns what could not be done, for one warning; under
    the shipped unit setrlimit() is filtered (~@resources) and LimitCORE=0 does it instead."""
    problems: list[str] = []
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
        if soft != 0 or hard != 0:
            try:
                resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            except (ValueError, OSError):
                try:
                    resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
                except (ValueError, OSError) as exc:
                    problems.append(f"core-file limit stays {soft} ({exc})")
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            problems.append(f"prctl(PR_SET_DUMPABLE, 0) failed: {os.strerror(ctypes.get_errno())}")
    except (OSError, AttributeError) as exc:
        problems.append(f"prctl(PR_SET_DUMPABLE, 0) unavailable: {exc}")
    return problems


# key=value DSN passwords (libpq), and user:password@ in URLs.
_KV_PASSWORD = re.compile(r"(?i)(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")
_URL_PASSWORD = re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^/@:\s]*:)([^@/\s]*)(@)")


def redact_target(text: str) -> str:
    """A DSN or URL as it may be shown: a password in it replaced by '***'. `password=env:VAR`
    (a reference, not a secret) is shown as it is."""

    def kv(m: re.Match[str]) -> str:
        value = m.group(2)
        if re.fullmatch(r"(env|credential):[\w.@-]+", value):
            return m.group(0)
        return m.group(1) + "***"

    text = _KV_PASSWORD.sub(kv, text)
    return _URL_PASSWORD.sub(lambda m: m.group(1) + "***" + m.group(3), text)
