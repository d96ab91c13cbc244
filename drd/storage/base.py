"""The storage interface every backend implements.

A backend is one region: a flat namespace of objects addressed by '/'-separated keys. The
interface is deliberately small (after restic's backend.Backend) so that retries, metrics,
fault injection and multi-region policy can all be wrappers around it.

Contract all backends honour (checked by tests/conformance):
- An object written through `open_writer` becomes visible under its key only on `commit()`,
  atomically and complete; `abort()` (or a crash) never leaves a visible object under the key.
  A backend may leave invisible leftovers (temp files) that `list()` does not return.
- `put` is an atomic whole-object write (small objects: manifests, reports).
- `list(prefix)` returns every committed object whose key starts with `prefix`, sorted by key.
- `open_reader` streams an object (optionally a byte range) in chunks.
- Missing objects raise ObjectNotFound; transient faults raise TransientStorageError;
  everything else PermanentStorageError.
- Keys follow one rule in every backend (`validate_key`), so a key that works in one region
  works in all; an invalid key raises PermanentStorageError.
- A writer whose `write` or `commit` failed is dead: later calls raise StorageError and the
  caller starts a new upload. `abort()` after a successful `commit()` does nothing.
- A create-only write (`if_absent=True`) never replaces an object: if one exists under the key
  at commit, the commit raises ObjectExists and the existing object is left as it was. Repair
  writes this way only, so it can never overwrite a backup's copy.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from drd.errors import PermanentStorageError

# GCS limits object names to 1024 bytes of UTF-8; file systems limit a name to 255 bytes, and
# LocalStorage adds ~40 bytes of bookkeeping to a segment for its temp files.
MAX_KEY_BYTES = 1024
MAX_SEGMENT_BYTES = 200


def validate_key(key: str) -> str:
    """Return `key` if it is a valid object key, else raise PermanentStorageError.

    A key is '/'-separated non-empty segments of at most 200 bytes, 1024 bytes in all. No
    segment starts with '.': that rules out '.' and '..' and leaves dot-names to backends for
    their bookkeeping (LocalStorage's partial files). No control characters: NUL and newlines
    are invalid in file names or GCS object names.
    """
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise PermanentStorageError(f"invalid object key {key!r}: not valid UTF-8") from None
    problem = ""
    if not key:
        problem = "empty"
    elif size > MAX_KEY_BYTES:
        problem = f"longer than {MAX_KEY_BYTES} bytes"
    elif any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        problem = "contains a control character"
    else:
        for segment in key.split("/"):
            if not segment:
                problem = "has an empty segment (leading, trailing or double '/')"
            elif segment.startswith("."):
                problem = "has a segment starting with '.'"
            elif len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
                problem = f"has a segment longer than {MAX_SEGMENT_BYTES} bytes"
            if problem:
                break
    if problem:
        raise PermanentStorageError(f"invalid object key {key[:120]!r}: {problem}")
    return key


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    # Backend checksum of the stored bytes when the backend has one ("crc32c:<b64>",
    # "sha256:<hex>", ...); None when the backend does not compute one.
    checksum: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DeletionSettings:
    """What a region does with an object after `delete()`: the settings that keep deleted bytes
    around (GCS soft delete, object versioning, retention policies and holds). drd.retention.policy
    turns them into how much earlier than max_age a backup must be deleted.

    The default is what memory and local-directory regions do: the bytes are gone at once.
    """

    #: deleted objects stay restorable this long (GCS soft delete)
    soft_delete: timedelta = timedelta(0)
    #: a delete keeps the object as a noncurrent version (GCS object versioning)
    versioning: bool = False
    #: a lifecycle rule deletes noncurrent versions this long after they became noncurrent
    #: (an upper bound); None: no rule does
    noncurrent_deleted_after: timedelta | None = None
    #: a lifecycle rule deletes live objects at this age; None: no rule does
    live_deleted_after: timedelta | None = None
    #: objects cannot be deleted before this age (bucket retention policy)
    retention_period: timedelta = timedelta(0)
    #: new objects are held until someone releases them (default event-based hold)
    event_based_hold: bool = False
    #: objects may carry their own retention lock (GCS object retention)
    object_retention: bool = False
    #: the class new objects get (GCS default storage class); None: the backend has no classes
    storage_class: str | None = None
    #: GCS Autoclass: the class objects end in when not read (NEARLINE or ARCHIVE); None: off
    autoclass_terminal: str | None = None
    #: False when the settings could not be read and these values are an assumption
    known: bool = True
    #: why the settings are unknown, or where they were read
    note: str = ""


class ObjectWriter(abc.ABC):
    """A streaming upload. Not visible until commit(); abort() discards it."""

    @abc.abstractmethod
    async def write(self, data: bytes) -> None: ...

    @abc.abstractmethod
    async def commit(self) -> ObjectInfo:
        """Finish the upload, verify what the backend stored, make it visible."""

    @abc.abstractmethod
    async def abort(self) -> None:
        """Discard the upload. Safe to call more than once, after a failed write, and after
        commit (then it does nothing). Best effort: it does not raise StorageError."""


class Storage(abc.ABC):
    """One region's object store."""

    #: region name, used in logs, metrics and catalog output
    name: str

    @abc.abstractmethod
    async def open_writer(
        self, key: str, metadata: Mapping[str, str] | None = None, *, if_absent: bool = False
    ) -> ObjectWriter:
        """`if_absent`: create only; commit() raises ObjectExists if the key is taken."""

    async def put(
        self,
        key: str,
        data: bytes,
        metadata: Mapping[str, str] | None = None,
        *,
        if_absent: bool = False,
    ) -> ObjectInfo:
        """Write a whole (small) object (`if_absent`: only if no object is there yet). Default:
        the same path as streaming uploads (one upload protocol, one verification); a backend
        overrides it only to do better."""
        writer = await self.open_writer(key, metadata, if_absent=if_absent)
        try:
            await writer.write(data)
            return await writer.commit()
        finally:
            await writer.abort()  # no-op after a successful commit

    @abc.abstractmethod
    async def get(self, key: str) -> bytes:
        """Read a whole (small) object."""

    @abc.abstractmethod
    def open_reader(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        """Stream an object's bytes (an async generator: the backends here declare
        AsyncGenerator, so a caller stopping early can `aclose()` it, or use
        contextlib.aclosing, to release its file or connection at once).

        Errors, ObjectNotFound included, surface on the first iteration. A range past the end
        yields nothing; a negative offset or length raises ValueError.
        """

    @abc.abstractmethod
    async def stat(self, key: str) -> ObjectInfo: ...

    @abc.abstractmethod
    async def list(self, prefix: str = "") -> list[ObjectInfo]: ...

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Delete an object; deleting a missing object is not an error."""

    async def check(self) -> None:
        """Raise StorageError if the region is unreachable or not writable/readable."""
        await self.list("\x00drd-probe/")

    async def deletion_settings(self) -> DeletionSettings:
        """How long deleted objects linger in this region. Raises StorageError if the region
        cannot be asked. Default: deleted bytes are gone at once (memory, local directory)."""
        return DeletionSettings()

    async def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release clients and threads."""
