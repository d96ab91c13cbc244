"""The error hierarchy. Every error drd raises on purpose is a DrdError.

Each class carries the process exit code the CLI uses for it; the CLI maps errors to exit codes
in exactly one place (drd.cli.main.main), and the README's exit-code table mirrors this module.
Messages must never contain key material, tokens or passwords.
"""

from __future__ import annotations

#: The exit codes that are not an error's: success, and interrupted (Ctrl-C; 128 + SIGINT).
EXIT_OK = 0
EXIT_INTERRUPTED = 130


class DrdError(Exception):
    """Base class: an expected failure with a clear message for the operator."""

    exit_code = 1


class PartialFailure(DrdError):
    """Some, not all, of the sources a command worked on failed (each one was reported)."""

    exit_code = 1


class DoctorFailed(DrdError):
    """`drd doctor` found a region that is not usable (its write-read-delete probe failed) or
    cannot destroy backups within max_age, or could not check one (its report says which)."""

    exit_code = 1


class ConfigError(DrdError):
    """The daemon config or a DR plan is invalid (file, line and field are in the message)."""

    exit_code = 3


class KeyringError(DrdError):
    """Keys are missing, malformed, or the keyring lacks the key a backup was sealed with."""

    exit_code = 4


class UnknownKey(KeyringError):
    """The key something was sealed with is not in the keyring. `key_id` names it (empty when
    the error was re-raised with a new message, as `type(exc)(message)`)."""

    def __init__(self, message: str, key_id: str = "") -> None:
        super().__init__(message)
        self.key_id = key_id


class IntegrityError(DrdError):
    """A backup failed authentication: tampered, truncated, swapped or forged."""

    exit_code = 5


class DamagedCopy(IntegrityError):
    """A region's copy is not what the verified manifest says (altered, truncated, longer)."""

    def __init__(self, message: str, *, region: str) -> None:
        super().__init__(message)
        self.region = region


class StorageError(DrdError):
    """A storage operation failed."""

    exit_code = 6


class TransientStorageError(StorageError):
    """Worth retrying: timeouts, 429/5xx, connection resets."""


class ChecksumMismatch(TransientStorageError):
    """What was stored is not what was sent (GCS refused the finalizing chunk's checksum, or
    the finalized object's checksum differs): damaged on the way, worth a new upload."""


class PermanentStorageError(StorageError):
    """Not worth retrying: permission denied, bad request, bucket missing."""


class ObjectNotFound(PermanentStorageError):
    """The object does not exist."""


class ObjectExists(PermanentStorageError):
    """A create-only write (`if_absent`) found an object under its key: nothing was written."""


class NotEnoughCopies(StorageError):
    """A backup could not be committed in min_copies regions.

    `transient` is False when every failed region failed permanently (permission denied, a
    missing bucket, a full disk): retrying the job then only repeats the failure.
    """

    def __init__(self, message: str, *, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient


class SourceError(DrdError):
    """The source could not be dumped (pg_dump failed, path unreadable, ...)."""

    exit_code = 7


class RestoreError(DrdError):
    """The restore into the target failed; the target was left as it was."""

    exit_code = 7


class MissingRoles(RestoreError):
    """Roles the backup refers to do not exist on the target server; nothing was touched.
    `roles` maps each to what the backup uses it for (owner, privileges, policy, ...)."""

    exit_code = 13

    def __init__(self, message: str, roles: dict[str, list[str]]) -> None:
        super().__init__(message)
        self.roles = roles


class BackupNotFound(DrdError):
    """No (complete) backup matches the request."""

    exit_code = 8


class OutsideWindow(BackupNotFound):
    """A point-in-time restore's target is outside every recovery window (the message names
    the windows and any gap); nothing was touched."""


class WalNotFound(DrdError):
    """`drd wal-fetch`: the archive does not hold the WAL file (PostgreSQL then looks in its
    own pg_wal, or ends recovery: that is what restore_command's exit 1 means)."""

    exit_code = 1


class WalFetchFailed(DrdError):
    """`drd wal-fetch`: a WAL file the recovery needs cannot be had intact from any region (a
    gap, or every copy refused). PostgreSQL stops recovery on exit codes above 125 instead of
    taking the file for missing, so a recovery never ends early without saying so."""

    exit_code = 126


class TargetExists(DrdError):
    """The restore target already exists; drd never overwrites."""

    exit_code = 9


class UsageError(DrdError):
    """The command line is wrong."""

    exit_code = 2


class CloudSqlError(DrdError):
    """The Cloud SQL Admin API refused a request (4xx), or gave up after retries (the HTTP
    status, when there was one, is in `code`)."""

    exit_code = 7

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class OperationFailed(CloudSqlError):
    """A Cloud SQL operation ended DONE with an error, or did not finish before its deadline."""


class LockBusy(DrdError):
    """A backup (or a restore test) of this source is already running: another task or
    process holds its lock (drd.locks)."""

    exit_code = 10


class DrillBusy(DrdError):
    """A drill of this plan is already running (`drill_id` names it; empty when drd is
    shutting down and starts none). 409 at the API."""

    exit_code = 10

    def __init__(self, message: str, drill_id: str) -> None:
        super().__init__(message)
        self.drill_id = drill_id


class RestoreTestFailed(DrdError):
    """A restore test ran and failed: the backup could not be fetched, authenticated or
    restored, a check did not hold, or the test timed out (the report says which)."""

    exit_code = 11


class StateError(DrdError):
    """drd's state directory cannot be written or read (a full disk, a read-only mount,
    permissions): job history and the local audit trail live there."""

    exit_code = 14


class DrillFailed(DrdError):
    """A failover drill ran and failed: a source did not restore or a check did not hold, or
    the achieved RTO or RPO missed the plan's target (the report says why)."""

    exit_code = 12
