"""A region in a Google Cloud Storage bucket (google-cloud-storage, JSON API).

Uploads (`open_writer`, `put`) speak the resumable-upload protocol directly on the session URI
that the library creates, because the contract needs three things the library's writers do not
give together: the object must appear only when commit() sends the final chunk, abort() must
cancel the session, and recovery and retries must stay within a deadline we choose.

- write() keeps the pieces it is given (no copy: the fan-out hands every region the same
  bytes objects); each full `chunk_size` (a multiple of 256 KiB) goes out as a non-final chunk
  (`Content-Range: bytes a-b/*`) sent straight from those pieces. Bytes are dropped only once
  the server confirms them (308 + `Range`), so after a timeout or a reset we ask the server
  what it has (`bytes */*`) and resend from there, within `retry_deadline`. Memory: one chunk
  plus one piece per region.
- commit() sends the rest with the total size and `X-Goog-Hash: crc32c=...` (computed locally
  while streaming), so real GCS refuses to finalize bytes that do not match: HTTP 400 ("Provided
  CRC32C ... doesn't match calculated CRC32C ..."). The bytes were damaged on the way, not
  refused for good: that is a ChecksumMismatch, a TransientStorageError (the upload starts over,
  `put` does so itself). It then checks the finalized object's size and crc32c against the
  local values, the same check a second time (the emulators ignore X-Goog-Hash); on a mismatch
  it deletes that generation (`if_generation_match`, so a concurrent newer object survives) and
  raises ChecksumMismatch too.
- abort() sends DELETE to the session URI (real GCS: 499, the session is gone).
- A create-only upload (`if_absent`) opens its session with `ifGenerationMatch=0`: real GCS
  answers the final chunk with 412 when the name is taken, and keeps the existing object
  (ObjectExists). fake-gcs-server ignores preconditions on resumable uploads: callers that
  must never overwrite (repair) also look first, and tests say which check they exercise.

Every blocking call runs on this region's own small thread pool, so a dead region cannot use up
the threads other regions and local I/O need. Library calls get an explicit per-request timeout
and a retry bounded by `retry_deadline` (the library default retries for 120 s).
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import contextlib
import contextvars
import functools
import logging
import re
import time
import warnings
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from datetime import timedelta
from typing import Any, TypeVar

import requests  # type: ignore[import-untyped,unused-ignore]
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import Credentials
from google.auth.transport.requests import AuthorizedSession
from google.cloud import storage
from google.cloud.storage.exceptions import DataCorruption
from google.cloud.storage.retry import DEFAULT_RETRY

from drd.bytequeue import ByteQueue, Piece
from drd.digests import Crc32c
from drd.errors import (
    ChecksumMismatch,
    ObjectExists,
    ObjectNotFound,
    PermanentStorageError,
    StorageError,
    TransientStorageError,
)
from drd.layout import DATA_OBJECT, MANIFEST_OBJECT
from drd.storage.base import (
    DeletionSettings,
    ObjectInfo,
    ObjectWriter,
    Storage,
    validate_key,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

MIB = 1024 * 1024
CHUNK_UNIT = 256 * 1024  # GCS requires non-final resumable chunks in multiples of this
DEFAULT_CHUNK_SIZE = 16 * MIB
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}
_NETWORK_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    ConnectionError,
    TimeoutError,
    auth_exceptions.TransportError,
)
# A session URI authorizes uploads on its own: keep it out of messages and logs.
_UPLOAD_ID = re.compile(r"upload_id=[^&\s'\"]+")


def _redact(text: str) -> str:
    return _UPLOAD_ID.sub("upload_id=<redacted>", text)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, api_exceptions.RetryError):
        cause = f": {_describe(exc.cause)}" if exc.cause else ""
        return f"gave up retrying{cause}"
    if isinstance(exc, api_exceptions.GoogleAPICallError):
        return f"HTTP {exc.code} {exc.message}"
    return _redact(f"{type(exc).__name__}: {exc}")[:500]


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (api_exceptions.RetryError, DataCorruption, *_NETWORK_ERRORS)):
        return True
    if isinstance(exc, api_exceptions.GoogleAPICallError):
        return exc.code in _RETRY_STATUS or (exc.code or 0) >= 500
    return False


# New buckets get this soft-delete duration unless told otherwise; assumed when a bucket's
# settings cannot be read.
GCS_DEFAULT_SOFT_DELETE = timedelta(days=7)
# Lifecycle conditions that only narrow a rule by name or time; any other condition
# (storage class, custom time, created before, newer versions) means the rule may never
# delete drd's objects, so it is not counted on.
_BOUNDING_CONDITIONS = {
    "age",
    "daysSinceNoncurrentTime",
    "isLive",
    "matchesPrefix",
    "matchesSuffix",
}


def deletion_settings_from_bucket(bucket: Any, object_prefix: str = "") -> DeletionSettings:
    """DeletionSettings from a google.cloud.storage Bucket (its properties as loaded).

    Lifecycle Delete rules count only when they certainly apply to every object drd writes
    under `object_prefix`; their bounds are upper bounds (a rule on `age` deletes a noncurrent
    version at most that long after drd's delete, since the object was created before)."""
    noncurrent: timedelta | None = None
    live: timedelta | None = None
    with warnings.catch_warnings():
        # Rule types this library version does not know are warned about; they are not Delete.
        warnings.simplefilter("ignore", UserWarning)
        rules = [dict(rule) for rule in bucket.lifecycle_rules]
    for rule in rules:
        if (rule.get("action") or {}).get("type") != "Delete":
            continue
        bounds = _delete_rule_bounds(dict(rule.get("condition") or {}), object_prefix)
        if bounds is None:
            continue
        live_bound, noncurrent_bound = bounds
        if live_bound is not None:
            live = live_bound if live is None else min(live, live_bound)
        if noncurrent_bound is not None:
            noncurrent = (
                noncurrent_bound if noncurrent is None else min(noncurrent, noncurrent_bound)
            )
    soft = bucket.soft_delete_policy.retention_duration_seconds or 0
    return DeletionSettings(
        soft_delete=timedelta(seconds=int(soft)),
        versioning=bool(bucket.versioning_enabled),
        noncurrent_deleted_after=noncurrent,
        live_deleted_after=live,
        retention_period=timedelta(seconds=int(bucket.retention_period or 0)),
        event_based_hold=bool(bucket.default_event_based_hold),
        object_retention=bucket.object_retention_mode == "Enabled",
        storage_class=bucket.storage_class,
        # Autoclass without a terminal class named ends in NEARLINE (the GCS default).
        autoclass_terminal=(
            (bucket.autoclass_terminal_storage_class or "NEARLINE")
            if bucket.autoclass_enabled
            else None
        ),
        note=f"gs://{bucket.name}",
    )


def _delete_rule_bounds(
    condition: dict[str, Any], object_prefix: str
) -> tuple[timedelta | None, timedelta | None] | None:
    """(age at which live objects are deleted, time after a delete until the noncurrent version
    is deleted) for one Delete rule; None when the rule may not apply to drd's objects."""
    if set(condition) - _BOUNDING_CONDITIONS:
        return None
    prefixes = condition.get("matchesPrefix")
    if prefixes is not None and not any(object_prefix.startswith(p) for p in prefixes):
        return None
    suffixes = condition.get("matchesSuffix")
    if suffixes is not None and not all(
        any(name.endswith(suffix) for suffix in suffixes) for name in (DATA_OBJECT, MANIFEST_OBJECT)
    ):
        return None
    age = condition.get("age")
    since_noncurrent = condition.get("daysSinceNoncurrentTime")
    is_live = condition.get("isLive")
    live = timedelta(days=int(age)) if age is not None and since_noncurrent is None else None
    if live is None and age is None and since_noncurrent is None:
        live = timedelta(0)
    days = max(int(age or 0), int(since_noncurrent or 0))
    noncurrent = timedelta(days=days)
    return (
        live if is_live is not False else None,
        noncurrent if is_live is not True else None,
    )


class _RetryableStatus(Exception):
    """A 408/429/5xx answer inside the upload protocol."""


# GCS's answer to a finalizing chunk whose X-Goog-Hash does not match what it received, e.g.
# 'Provided CRC32C "AAAAAA==" doesn't match calculated CRC32C "mnG7TA=="' (MD5 likewise).
_CHECKSUM_REFUSED = re.compile(r"(crc32c|md5)\b.{0,120}\b(match|mismatch|differ)", re.I | re.S)
#: attempts of one whole-object `put` whose bytes arrived damaged
_PUT_ATTEMPTS = 3


class _Body:
    """A request body made of pieces. requests sends any sized iterable as is, with a
    Content-Length of len() (urllib3 writes the pieces one by one): no joined copy."""

    def __init__(self, parts: list[Piece]) -> None:
        self._parts = parts
        self._length = sum(len(p) for p in parts)

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[Piece]:
        return iter(self._parts)


class _ResumableUpload:
    """The resumable-upload protocol on one session URI. Blocking: runs on a pool thread.

    `pending` holds the bytes from `persisted` on, which the server has not confirmed yet.
    """

    def __init__(
        self, http: Any, url: str, *, chunk_size: int, timeout: float, deadline: float
    ) -> None:
        self._http = http
        self._url = url
        self.chunk_size = chunk_size
        self._timeout = timeout
        self._deadline = deadline
        self.persisted = 0
        self.pending = ByteQueue()

    def send(self, total: int | None = None, crc32c: str | None = None) -> dict[str, Any] | None:
        """Send full chunks, or with `total` everything and finalize; the object resource then."""
        while total is not None or self.pending.size >= self.chunk_size:
            count = self.pending.size if total is not None else self.chunk_size
            resource = self._exchange(count, total, crc32c)
            if resource is not None:
                if total is None:
                    raise PermanentStorageError("the server finalized the upload before commit")
                return resource
        return None

    def cancel(self) -> None:
        self._http.request("DELETE", self._url, timeout=min(self._timeout, 10.0))

    def _exchange(self, count: int, total: int | None, crc32c: str | None) -> dict[str, Any] | None:
        """One chunk, retried until `deadline`; a retry first asks the server what it kept."""
        give_up = time.monotonic() + self._deadline
        delay = 0.2
        in_doubt = False
        while True:
            try:
                if in_doubt:
                    # Returns after resyncing: the caller recomputes what is left to send.
                    return self._handle(self._put(b"", "bytes */*", {}))
                start, end = self.persisted, self.persisted + count - 1
                size = "*" if total is None else str(total)
                headers = {"X-Goog-Hash": f"crc32c={crc32c}"} if crc32c else {}
                span = f"bytes {start}-{end}/{size}" if count else f"bytes */{size}"
                # An empty _Body would be sent chunked (no length): b"" has Content-Length 0.
                body = _Body(self.pending.peek(count)) if count else b""
                return self._handle(self._put(body, span, headers), finalizing=bool(crc32c))
            except (*_NETWORK_ERRORS, _RetryableStatus) as exc:
                if time.monotonic() + delay > give_up:
                    raise TransientStorageError(
                        f"upload gave up after {self._deadline:g}s: {_describe(exc)}"
                    ) from None
                log.debug("resumable upload: retrying after %s", _describe(exc))
                time.sleep(delay)
                delay = min(delay * 2, 4.0)
                in_doubt = True

    def _put(self, body: bytes | _Body, content_range: str, headers: dict[str, str]) -> Any:
        return self._http.request(
            "PUT",
            self._url,
            data=body,
            headers={"Content-Range": content_range, **headers},
            timeout=(self._timeout, self._timeout),
        )

    def _handle(self, response: Any, *, finalizing: bool = False) -> dict[str, Any] | None:
        status = int(response.status_code)
        if status == 308:
            confirmed_range = response.headers.get("Range", "")  # "bytes=0-N"; none: nothing kept
            confirmed = int(confirmed_range.rpartition("-")[2]) + 1 if confirmed_range else 0
            if not self.persisted <= confirmed <= self.persisted + self.pending.size:
                raise PermanentStorageError(
                    f"the server reports {confirmed} bytes received, expected "
                    f"{self.persisted}..{self.persisted + self.pending.size}"
                )
            self.pending.drop(confirmed - self.persisted)
            self.persisted = confirmed
            return None
        if status in (200, 201):
            resource: dict[str, Any] = response.json()
            return resource
        if status in _RETRY_STATUS or status >= 500:
            raise _RetryableStatus(f"HTTP {status}")
        message = _redact(response.text[:300])
        if status == 412:
            raise ObjectExists("an object exists under this name already (create-only upload)")
        if status == 400 and finalizing and _CHECKSUM_REFUSED.search(response.text or ""):
            raise ChecksumMismatch(
                f"the server refused the upload's checksum (HTTP 400: {message}): the bytes were "
                "damaged on the way; a new upload is needed"
            )
        if status in (404, 410):
            # The session expired or the server lost it (a restarted emulator does that).
            # Only a new upload from the first byte can continue.
            raise TransientStorageError(f"upload session lost (HTTP {status}): {message}")
        raise PermanentStorageError(f"upload refused (HTTP {status}): {message}")


class GCSWriter(ObjectWriter):
    def __init__(
        self, storage: GCSStorage, key: str, upload: _ResumableUpload, metadata: dict[str, str]
    ) -> None:
        self._storage = storage
        self._key = key
        self._upload = upload
        self._metadata = metadata
        self._crc = Crc32c()
        self._size = 0
        self._state = "open"

    def _check_open(self) -> None:
        if self._state != "open":
            raise PermanentStorageError(
                f"region {self._storage.name}: writer for {self._key!r} is {self._state}"
            )

    async def write(self, data: bytes) -> None:
        self._check_open()
        self._crc.update(data)
        self._size += len(data)
        self._upload.pending.append(data)
        if self._upload.pending.size < self._upload.chunk_size:
            return  # nothing to send yet: no thread hop
        try:
            await self._storage._run("write", self._key, self._upload.send)
        except BaseException:
            self._state = "failed"  # also on cancellation: the thread may still be sending
            raise

    async def commit(self) -> ObjectInfo:
        self._check_open()
        crc = self._crc.b64()
        try:
            resource = await self._storage._run(
                "commit", self._key, self._upload.send, self._size, crc
            )
        except BaseException:
            self._state = "failed"
            raise
        assert resource is not None
        stored_size, stored_crc = int(resource.get("size", -1)), resource.get("crc32c")
        if (stored_size, stored_crc) != (self._size, crc):
            self._state = "failed"
            generation = int(resource.get("generation", 0))
            try:
                await self._storage._run(
                    "delete",
                    self._key,
                    self._storage._delete_generation,
                    self._key,
                    generation,
                )
            except StorageError as exc:
                log.warning("region %s: %s", self._storage.name, exc)
            raise ChecksumMismatch(
                f"region {self._storage.name}: commit {self._key!r}: stored object "
                f"({stored_size} bytes, crc32c {stored_crc}) does not match what was sent "
                f"({self._size} bytes, crc32c {crc}); deleted it"
            )
        self._state = "committed"
        metadata = resource.get("metadata") or self._metadata
        return ObjectInfo(self._key, self._size, f"crc32c:{crc}", dict(metadata))

    async def abort(self) -> None:
        if self._state not in ("open", "failed"):
            return
        self._state = "aborted"
        self._upload.pending.clear()
        try:
            await self._storage._run("abort", self._key, self._upload.cancel)
        except StorageError as exc:
            # Best effort: an abandoned session never becomes an object and expires in a week.
            log.debug("region %s: cancelling upload of %r: %s", self._storage.name, self._key, exc)


class GCSStorage(Storage):
    def __init__(
        self,
        name: str,
        bucket: str,
        prefix: str = "",
        *,
        project: str | None = None,
        endpoint: str | None = None,
        credentials: Credentials,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        timeout: float = 60.0,
        retry_deadline: float | None = None,
        max_workers: int = 8,
    ) -> None:
        """`timeout` bounds each HTTP request; `retry_deadline` (default: `timeout`) bounds the
        retries of one operation or one upload chunk. `credentials` are required: this class
        never looks for ambient credentials (that probes the GCE metadata server)."""
        if chunk_size <= 0 or chunk_size % CHUNK_UNIT:
            raise ValueError(f"chunk_size must be a positive multiple of {CHUNK_UNIT}")
        if credentials is None:
            raise PermanentStorageError(f"region {name}: GCS needs explicit credentials")
        prefix = prefix.strip("/")
        if prefix:
            validate_key(prefix)
        self.name = name
        self.bucket_name = bucket
        self.prefix = prefix
        self._object_prefix = prefix + "/" if prefix else ""
        self._chunk_size = chunk_size
        self._timeout = timeout
        self._deadline = timeout if retry_deadline is None else retry_deadline
        self._retry = DEFAULT_RETRY.with_timeout(self._deadline).with_delay(
            initial=0.2, maximum=4.0, multiplier=2.0
        )
        # project=None must be passed explicitly: left out, the library looks up a default one.
        self._client = storage.Client(
            project=project,
            credentials=credentials,
            client_options={"api_endpoint": endpoint} if endpoint else None,
        )
        self._bucket = self._client.bucket(bucket)
        # Our own session for the upload protocol (the client's is private API).
        self._http: Any = AuthorizedSession(credentials)  # type: ignore[no-untyped-call]
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix=f"gcs-{name}"
        )

    # -- helpers -----------------------------------------------------------------------------

    def _object_name(self, key: str) -> str:
        return self._object_prefix + validate_key(key)

    def _error(self, exc: BaseException, op: str, key: str) -> StorageError:
        where = f"region {self.name}: {op} gs://{self.bucket_name}/{self._object_prefix}{key}"
        if isinstance(exc, StorageError):
            return type(exc)(f"{where}: {exc}")
        if isinstance(exc, api_exceptions.NotFound):
            if op in ("get", "stat", "read"):
                return ObjectNotFound(f"{where}: object not found")
            return PermanentStorageError(f"{where}: bucket not found ({_describe(exc)})")
        cls = TransientStorageError if _is_transient(exc) else PermanentStorageError
        return cls(f"{where} failed: {_describe(exc)}")

    async def _run(self, op: str, key: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking call on this region's pool; map whatever it raises to StorageError."""
        call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, call)
        except Exception as exc:
            error = self._error(exc, op, key)
            # Our own upload errors were already redacted; keep the raw cause (it may carry
            # a session URI) out of tracebacks.
            raise error from (None if isinstance(exc, StorageError) else exc)

    def _info(self, key: str, blob: Any) -> ObjectInfo:
        checksum = f"crc32c:{blob.crc32c}" if blob.crc32c else None
        return ObjectInfo(key, int(blob.size or 0), checksum, dict(blob.metadata or {}))

    def _delete_generation(self, key: str, generation: int) -> None:
        # Gone already, or replaced by a newer object that is not ours to delete: fine.
        with contextlib.suppress(api_exceptions.NotFound, api_exceptions.PreconditionFailed):
            self._bucket.blob(self._object_name(key)).delete(
                if_generation_match=generation or None, timeout=self._timeout, retry=self._retry
            )

    # -- the Storage interface ---------------------------------------------------------------

    async def open_writer(
        self, key: str, metadata: Mapping[str, str] | None = None, *, if_absent: bool = False
    ) -> ObjectWriter:
        blob = self._bucket.blob(self._object_name(key))
        blob.metadata = dict(metadata) if metadata else None
        url = await self._run(
            "open_writer",
            key,
            blob.create_resumable_upload_session,
            content_type="application/octet-stream",
            checksum=None,  # we checksum ourselves, over the whole stream
            if_generation_match=0 if if_absent else None,
            timeout=self._timeout,
            retry=self._retry,
        )
        upload = _ResumableUpload(
            self._http,
            str(url),
            chunk_size=self._chunk_size,
            timeout=self._timeout,
            deadline=self._deadline,
        )
        return GCSWriter(self, key, upload, dict(metadata or {}))

    async def put(
        self,
        key: str,
        data: bytes,
        metadata: Mapping[str, str] | None = None,
        *,
        if_absent: bool = False,
    ) -> ObjectInfo:
        # The same path as streaming uploads: one upload protocol, one verification. The bytes
        # are at hand, so an upload they reached damaged is simply made again.
        for attempt in range(1, _PUT_ATTEMPTS + 1):
            writer = await self.open_writer(key, metadata, if_absent=if_absent)
            try:
                await writer.write(data)
                return await writer.commit()
            except ChecksumMismatch as exc:
                if attempt == _PUT_ATTEMPTS:
                    raise
                log.warning("region %s: put %r: %s; uploading again", self.name, key, exc)
            finally:
                await writer.abort()  # no-op after a successful commit
        raise AssertionError("unreachable")

    async def get(self, key: str) -> bytes:
        blob = self._bucket.blob(self._object_name(key))
        data = await self._run(
            "get",
            key,
            blob.download_as_bytes,
            raw_download=True,
            checksum="crc32c",  # whole-object download: the library checks it (DataCorruption)
            timeout=self._timeout,
            retry=self._retry,
        )
        return bytes(data)

    async def open_reader(
        self, key: str, offset: int = 0, length: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must not be negative")
        name = self._object_name(key)
        meta = await self._run("read", key, self._get_blob, name)
        size, generation, stored_crc = int(meta.size or 0), meta.generation, meta.crc32c
        end = size if length is None else min(size, offset + length)
        # Pin the generation: an overwrite mid-read gives 404, never a mix of two objects.
        blob = self._bucket.blob(name, generation=generation)
        whole = offset == 0 and end == size
        crc = Crc32c()
        position = offset
        while position < end:
            stop = min(position + self._chunk_size, end)
            data = await self._run(
                "read",
                key,
                blob.download_as_bytes,
                start=position,
                end=stop - 1,  # inclusive
                raw_download=True,
                checksum=None,  # a range has no stored checksum; the whole stream is checked below
                timeout=self._timeout,
                retry=self._retry,
            )
            if len(data) != stop - position:
                raise TransientStorageError(
                    f"region {self.name}: read {key!r}: got {len(data)} bytes at {position}, "
                    f"expected {stop - position}"
                )
            if whole:
                crc.update(data)
            position = stop
            yield bytes(data)
        if whole and stored_crc and crc.b64() != stored_crc:
            raise TransientStorageError(
                f"region {self.name}: read {key!r}: bytes read do not match the stored crc32c"
            )

    def _get_blob(self, name: str) -> Any:
        blob = self._bucket.get_blob(name, timeout=self._timeout, retry=self._retry)
        if blob is None:
            raise ObjectNotFound("object not found")
        return blob

    async def stat(self, key: str) -> ObjectInfo:
        blob = await self._run("stat", key, self._get_blob, self._object_name(key))
        return self._info(key, blob)

    async def list(self, prefix: str = "") -> builtins.list[ObjectInfo]:
        return await self._run("list", prefix, self._list, prefix)

    def _list(self, prefix: str) -> builtins.list[ObjectInfo]:
        found = []
        blobs = self._client.list_blobs(
            self._bucket,
            prefix=self._object_prefix + prefix,
            fields="items(name,size,crc32c,metadata),nextPageToken",
            timeout=self._timeout,
            retry=self._retry,
        )
        for blob in blobs:
            key = str(blob.name)[len(self._object_prefix) :]
            try:
                validate_key(key)
            except PermanentStorageError:
                continue  # e.g. a "folder/" placeholder made by the console: not ours
            found.append(self._info(key, blob))
        return sorted(found, key=lambda info: info.key)

    async def delete(self, key: str) -> None:
        blob = self._bucket.blob(self._object_name(key))
        await self._run("delete", key, self._delete, blob)

    def _delete(self, blob: Any) -> None:
        # Deleting a missing object is not an error (and a retried delete may find it gone).
        with contextlib.suppress(api_exceptions.NotFound):
            blob.delete(timeout=self._timeout, retry=self._retry)

    async def check(self) -> None:
        """One listing request, no retries: a health probe answers fast, even for a dead
        region. Needs only storage.objects.list, which the daemon needs anyway."""
        await self._run("check", "", self._check)

    def _check(self) -> None:
        blobs = self._client.list_blobs(
            self._bucket,
            prefix=self._object_prefix,
            max_results=1,
            fields="items(name),nextPageToken",
            timeout=self._timeout,
            retry=None,
        )
        for _ in blobs:
            break

    async def deletion_settings(self) -> DeletionSettings:
        """The bucket's soft delete, versioning, lifecycle, retention and hold settings. Needs
        storage.buckets.get; without it the GCS default (7 days of soft delete) is assumed and
        the settings are marked unknown."""
        bucket = await self._run("deletion_settings", "", self._get_bucket_settings)
        if bucket is None:
            return DeletionSettings(
                soft_delete=GCS_DEFAULT_SOFT_DELETE,
                known=False,
                note=f"gs://{self.bucket_name}: no permission to read the bucket's settings "
                "(storage.buckets.get); assuming the GCS default soft delete",
            )
        return deletion_settings_from_bucket(bucket, self._object_prefix)

    def _get_bucket_settings(self) -> Any:
        try:
            return self._client.get_bucket(
                self.bucket_name, timeout=self._timeout, retry=self._retry
            )
        except api_exceptions.Forbidden:
            return None

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()
        self._client.close()
