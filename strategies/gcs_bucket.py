"""A Google Cloud Storage bucket (or a prefix in it) as a file store: `gcs-bucket`.

Dump: the objects under `gs://BUCKET/PREFIX/` are listed page by page (name order) and written
as one POSIX tar stream in PAX format, one member per object, built here directly (no
tarfile object, no thread): a PAX extended header carries what GCS knows about the object,
then the content, read in ranged requests of `chunk_size` with the generation pinned, so memory
stays at about one range whatever the object sizes. Any tar tool can list and extract the
archive; the PAX records drd reads back are

    DRD.gcs.name                  the object name relative to the prefix, exactly
    DRD.gcs.content_type          Content-Type            (and, when set:)
    DRD.gcs.content_encoding      Content-Encoding        DRD.gcs.content_language
    DRD.gcs.content_disposition   DRD.gcs.cache_control
    DRD.gcs.metadata              the custom metadata, as a JSON object
    DRD.gcs.crc32c, DRD.gcs.md5   the stored object's hashes (base64, as GCS gives them)
    DRD.gcs.generation            the generation that was read

Bytes are downloaded raw (no decompressive transcoding), so an object stored gzip-encoded is
archived and restored exactly as stored. The crc32c of what was read is checked against the
object's. GCS has no snapshot across objects: each object is archived as it was when listed (its
generation); one deleted before it was read is skipped with a warning, one replaced while it is
being read fails the dump (the next attempt will do).

restore_metadata: counts, bytes, and under `statistics.objects` the object list in the form
drd.strategies.file_digests uses (count, an order-independent digest of the whole list, and
name -> digest for up to FILE_LIST_LIMIT objects), where an object's digest covers its content
(sha256) and its properties (content type, encoding, metadata, ...).

Restore target: the same grammar as `--storage`:
`gs://BUCKET/PREFIX?endpoint=URL&project=P&credentials=env:VAR|credential:NAME|anonymous`
(anonymous only with a loopback endpoint; without `credentials` an endpoint implies anonymous,
as for --storage). GCS has no atomic rename of a prefix, so drd restores *directly* into the
target prefix, which must hold no object at all (TargetExists otherwise); every object is
created with `if_generation_match=0` (never replaces one that appeared meanwhile), every
object's upload is recorded before it starts, and on any failure (an IntegrityError in the
stream, a checksum mismatch, cancellation) every object drd created is deleted again, pinned
to the generation its upload created (an object someone else created under that name, which
made drd's upload fail, is never touched). A restore killed outright, or cancelled while an
upload was still finishing, can leave some objects under the target prefix; the next restore
into it then refuses (the prefix is not empty). Each object is spooled through a temporary
file (in memory up to 8 MiB, on disk above) so that it can be uploaded with a known size and
crc32c; disk use is bounded by the largest object.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, ClassVar, Literal, TypeVar

from pydantic import Field, field_validator

from drd.digests import Crc32c
from drd.errors import ConfigError, DrdError, RestoreError, SourceError, TargetExists
from drd.storage.google_auth import (
    STORAGE_SCOPES,
    GoogleCredentials,
    build_credentials,
    check_endpoint,
)
from drd.strategies.base import RestoreOutcome, SourceOptions, Strategy
from drd.strategies.file_digests import FILE_LIST_LIMIT, DigestList
from drd.strategies.file_digests import compare as compare_digests
from drd.strategies.gcs_tar import (
    BLOCK,
    PAX,
    PROPERTIES,
    RECORD,
    Reader,
    member_header,
    member_properties,
    object_digest,
    padding,
    read_member,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

FORMAT = "gcs-tar-pax"
SPOOL_IN_MEMORY = 8 << 20
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_SKIPPED_LISTED = 100


class GcsBucketOptions(SourceOptions):
    kind: Literal["gcs-bucket"] = "gcs-bucket"
    bucket: str = Field(pattern=_BUCKET_RE.pattern)
    #: only objects under this prefix ("" = the whole bucket); a "/" is added if missing
    prefix: str = ""
    #: GCP project (billing for requester-pays buckets); optional
    project: str | None = None
    #: storage API endpoint, e.g. a fake-gcs-server at http://127.0.0.1:4443
    endpoint: str | None = None
    #: {source: credential|env, name: ...} (a service-account JSON), or anonymous (emulators)
    credentials: GoogleCredentials
    #: bytes per ranged read
    chunk_size: int = Field(default=8 << 20, ge=256 << 10)
    #: per-request timeout and retry deadline, seconds
    timeout: float = Field(default=60.0, gt=0)

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        return check_endpoint(value)

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if value.startswith("/") or "//" in value:
            raise ValueError("an object prefix neither starts with '/' nor has '//'")
        return value


def _object_prefix(prefix: str) -> str:
    prefix = prefix.strip("/")
    return prefix + "/" if prefix else ""


def _properties(blob: Any) -> dict[str, Any]:
    props: dict[str, Any] = {p: getattr(blob, p) for p in PROPERTIES if getattr(blob, p)}
    props["metadata"] = dict(blob.metadata or {})
    return props


@dataclass
class _Bucket:
    """A google-cloud-storage client on one bucket, with explicit credentials."""

    bucket_name: str
    endpoint: str | None
    project: str | None
    credentials: Any
    timeout: float
    client: Any = field(init=False)
    bucket: Any = field(init=False)
    retry: Any = field(init=False)

    def __post_init__(self) -> None:
        from google.cloud import storage
        from google.cloud.storage.retry import DEFAULT_RETRY

        # project=None is passed explicitly: left out, the library looks for a default one.
        self.client = storage.Client(
            project=self.project,
            credentials=self.credentials,
            client_options={"api_endpoint": self.endpoint} if self.endpoint else None,
        )
        self.bucket = self.client.bucket(self.bucket_name)
        self.retry = DEFAULT_RETRY.with_timeout(self.timeout).with_delay(
            initial=0.2, maximum=4.0, multiplier=2.0
        )

    def close(self) -> None:
        self.client.close()

    def pages(self, prefix: str, max_results: int | None = None) -> Any:
        return iter(
            self.client.list_blobs(
                self.bucket,
                prefix=prefix,
                max_results=max_results,
                timeout=self.timeout,
                retry=self.retry,
            ).pages
        )


async def _call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.to_thread(fn, *args, **kwargs)


def _next_page(pages: Any) -> list[Any] | None:
    page = next(pages, None)
    return None if page is None else list(page)


def _describe(exc: BaseException) -> str:
    from google.api_core import exceptions as api_exceptions

    if isinstance(exc, api_exceptions.GoogleAPICallError):
        return f"HTTP {exc.code} {exc.message}"
    return f"{type(exc).__name__}: {exc}"[:500]


# ---------------------------------------------------------------------------------------------


@dataclass
class _Archived:
    archived: bool = False


class GcsBucketStrategy(Strategy[GcsBucketOptions]):
    kind: ClassVar[str] = "gcs-bucket"
    Options: ClassVar[type[SourceOptions]] = GcsBucketOptions
    # A scratch prefix in a scratch bucket (the objects as GCS holds them), or a local
    # directory for a quick check of contents and properties without a cloud.
    scratch_kinds: ClassVar[tuple[str, ...]] = ("tempdir", "gcs-scratch-bucket")
    check_kinds: ClassVar[tuple[str, ...]] = ("file", "command")
    restored_as: ClassVar[str | None] = "gcs-objects"
    restored_name: ClassVar[str] = "objects"

    def _open(self, where: str) -> _Bucket:
        opts = self.opts
        try:
            creds = build_credentials(
                opts.credentials, opts.endpoint, scopes=STORAGE_SCOPES, what=f"{where}: credentials"
            )
        except ConfigError as exc:
            raise SourceError(str(exc)) from None
        return _Bucket(opts.bucket, opts.endpoint, opts.project, creds, opts.timeout)

    async def dump(self) -> AsyncGenerator[bytes, None]:
        self._metadata = None
        opts = self.opts
        prefix = _object_prefix(opts.prefix)
        where = f"source {opts.name!r} (gs://{opts.bucket}/{prefix})"
        bucket = self._open(where)
        digests = DigestList(FILE_LIST_LIMIT)
        total = 0
        skipped: list[str] = []
        archive = 0
        try:
            pages = await _call(bucket.pages, prefix)
            while True:
                try:
                    page = await _call(_next_page, pages)
                except Exception as exc:
                    raise SourceError(f"{where}: listing failed: {_describe(exc)}") from None
                if page is None:
                    break
                for blob in page:
                    done = _Archived()
                    async for piece in self._archive_object(
                        bucket, blob, prefix, where, digests, done
                    ):
                        archive += len(piece)
                        yield piece
                    if done.archived:
                        total += int(blob.size or 0)
                    else:
                        skipped.append(str(blob.name)[len(prefix) :])
            tail = bytes(2 * BLOCK)
            tail += bytes(-(archive + len(tail)) % RECORD)
            yield tail
        finally:
            await _call(bucket.close)
        if skipped:
            log.warning(
                "%s: %d object(s) vanished before they were read and are not in the backup: %s",
                where,
                len(skipped),
                ", ".join(skipped[:10]),
            )
        self._metadata = {
            "format": FORMAT,
            "bucket": opts.bucket,
            "prefix": prefix,
            "objects": digests.count,
            "bytes": total,
            "skipped": skipped[:_SKIPPED_LISTED],
            "skipped_count": len(skipped),
            "statistics": {"objects": digests.as_json(), "bytes": total},
        }

    async def _archive_object(
        self,
        bucket: _Bucket,
        blob: Any,
        prefix: str,
        where: str,
        digests: DigestList,
        done: _Archived,
    ) -> AsyncIterator[bytes]:
        """The tar member of one object; nothing if it vanished before its first byte."""
        from google.api_core import exceptions as api_exceptions

        name = str(blob.name)
        rel = name[len(prefix) :]
        size = int(blob.size or 0)
        pinned = bucket.bucket.blob(name, generation=blob.generation)
        step = self.opts.chunk_size

        async def read(start: int) -> bytes:
            stop = min(start + step, size)
            data = await _call(
                pinned.download_as_bytes,
                start=start,
                end=stop - 1,
                raw_download=True,
                checksum=None,
                timeout=bucket.timeout,
                retry=bucket.retry,
            )
            if len(data) != stop - start:
                raise SourceError(f"{where}: {name}: short read at {start}")
            return bytes(data)

        try:
            first = await read(0) if size else b""
        except api_exceptions.NotFound:
            return  # deleted or replaced since the listing: skipped (reported by the caller)
        except DrdError:
            raise
        except Exception as exc:
            raise SourceError(f"{where}: reading {name} failed: {_describe(exc)}") from None
        props = _properties(blob)
        pax = {f"{PAX}name": rel, f"{PAX}generation": str(blob.generation)}
        for key in PROPERTIES:
            if key in props:
                pax[f"{PAX}{key}"] = str(props[key])
        pax[f"{PAX}metadata"] = json.dumps(props["metadata"], sort_keys=True, ensure_ascii=False)
        if blob.crc32c:
            pax[f"{PAX}crc32c"] = str(blob.crc32c)
        if blob.md5_hash:
            pax[f"{PAX}md5"] = str(blob.md5_hash)
        updated: datetime | None = blob.updated
        yield member_header(rel, size, updated.timestamp() if updated else 0, pax)
        crc, sha = Crc32c(), hashlib.sha256()
        position = 0
        data = first
        while True:
            crc.update(data)
            sha.update(data)
            position += len(data)
            if data:
                yield data
            if position >= size:
                break
            try:
                data = await read(position)
            except api_exceptions.NotFound:
                raise SourceError(
                    f"{where}: {name} was replaced or deleted while it was being read; try again"
                ) from None
            except DrdError:
                raise
            except Exception as exc:
                raise SourceError(f"{where}: reading {name} failed: {_describe(exc)}") from None
        if blob.crc32c and crc.b64() != blob.crc32c:
            raise SourceError(f"{where}: {name}: the bytes read do not match its crc32c")
        yield padding(size)
        digests.add(rel, object_digest(sha.hexdigest(), props))
        done.archived = True

    # -- restore --------------------------------------------------------------------------

    @classmethod
    async def restore(
        cls, chunks: AsyncIterator[bytes], target: str, metadata: Mapping[str, Any]
    ) -> RestoreOutcome:
        fmt = metadata.get("format", FORMAT)
        if fmt != FORMAT:
            raise RestoreError(f"restore into {target}: unsupported dump format {fmt!r}")
        if not target.startswith("gs://"):
            from drd.strategies.gcs_bucket_local import restore_to_directory

            return await restore_to_directory(chunks, Path(target), metadata)
        bucket, prefix, shown = open_target(target)
        where = f"restore into {shown}"
        written: list[Any] = []  # the blobs uploaded, or being uploaded
        digests = DigestList(FILE_LIST_LIMIT)
        total = 0
        try:
            page = await _call(_next_page, await _call(bucket.pages, prefix, 1))
            if page:
                raise TargetExists(f"{where}: there are objects under the target prefix")
            reader = Reader(chunks)
            while True:
                member = await read_member(reader)
                if member is None:
                    break
                rel, size, pax = member
                name = prefix + rel
                if not name:
                    raise RestoreError(f"{where}: an object without a name")
                digest, crc = await _upload(bucket, reader, name, size, pax, written, where)
                expected_crc = pax.get(f"{PAX}crc32c")
                if expected_crc and crc != expected_crc:
                    raise RestoreError(f"{where}: {rel}: content does not match its crc32c")
                digests.add(rel, digest)
                total += size
            await reader.drain()
            expected = (metadata.get("statistics") or {}).get("objects")
            if isinstance(expected, dict):
                problems = compare_digests(expected, digests)
                if problems:
                    raise RestoreError(f"{where}: {'; '.join(problems)}")
        except BaseException as exc:
            cleanup = asyncio.ensure_future(_delete_all(bucket, written, where))
            with contextlib.suppress(BaseException):
                await asyncio.shield(cleanup)
            await _call(bucket.close)
            if isinstance(exc, DrdError | asyncio.CancelledError):
                raise
            if isinstance(exc, Exception):
                raise RestoreError(f"{where}: {_describe(exc)}") from None
            raise
        await _call(bucket.close)
        return RestoreOutcome(
            target=shown,
            details={"objects": digests.count, "bytes": total, "prefix": prefix},
        )


def open_target(target: str) -> tuple[_Bucket, str, str]:
    """The bucket client, the object prefix ("" or ending in "/") and a printable target."""
    from drd.errors import UsageError
    from drd.storage.regions import parse_storage_arg

    try:
        spec = parse_storage_arg(target)
    except UsageError as exc:
        raise RestoreError(f"restore target: {exc}") from None
    if not spec.url.startswith("gs://"):
        raise RestoreError("restore target: expected gs://BUCKET/PREFIX?endpoint=...")
    bucket_name, _, prefix = spec.url[len("gs://") :].partition("/")
    if not _BUCKET_RE.match(bucket_name):
        raise RestoreError(f"restore target: invalid bucket name {bucket_name!r}")
    try:
        endpoint = check_endpoint(spec.endpoint)
        creds = build_credentials(
            spec.credentials, endpoint, scopes=STORAGE_SCOPES, what="restore target credentials"
        )
    except (ValueError, ConfigError) as exc:
        raise RestoreError(f"restore target: {exc}") from None
    object_prefix = _object_prefix(prefix)
    bucket = _Bucket(bucket_name, endpoint, spec.project, creds, 60.0)
    return bucket, object_prefix, f"gs://{bucket_name}/{object_prefix}"


class _HashSink:
    """A file-like sink that only hashes what a download writes into it."""

    def __init__(self) -> None:
        self.crc, self.sha, self.size = Crc32c(), hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.crc.update(data)
        self.sha.update(data)
        self.size += len(data)
        return len(data)


def read_prefix(target: str) -> tuple[DigestList, int, list[str]]:
    """Every object under a gs:// target prefix as the backup lists them (digests of content
    and properties), its bytes, and the objects whose stored crc32c does not match the bytes
    served; read in streamed downloads (blocking: run it in a thread)."""
    bucket, prefix, _shown = open_target(target)
    digests = DigestList(FILE_LIST_LIMIT)
    problems: list[str] = []
    total = 0
    try:
        for page in bucket.pages(prefix):
            for blob in page:
                sink = _HashSink()
                pinned = bucket.bucket.blob(blob.name, generation=blob.generation)
                pinned.download_to_file(
                    sink,
                    raw_download=True,
                    checksum=None,
                    timeout=bucket.timeout,
                    retry=bucket.retry,
                )
                rel = str(blob.name)[len(prefix) :]
                if blob.crc32c and sink.crc.b64() != blob.crc32c:
                    problems.append(f"{rel}: the bytes served do not match its stored crc32c")
                digests.add(rel, object_digest(sink.sha.hexdigest(), _properties(blob)))
                total += sink.size
    finally:
        bucket.close()
    return digests, total, problems


async def _upload(
    bucket: _Bucket,
    reader: Reader,
    name: str,
    size: int,
    pax: Mapping[str, str],
    written: list[Any],
    where: str,
) -> tuple[str, str]:
    """Spool one member and upload it as a new object; (its listed digest, its crc32c)."""
    props = member_properties(pax, f"{where}: {name}")
    crc, sha = Crc32c(), hashlib.sha256()
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as spool:
        async for piece in reader.pieces(size):
            crc.update(piece)
            sha.update(piece)
            if len(piece) > 64 << 10:
                await _call(spool.write, piece)
            else:
                spool.write(piece)
        await reader.read_exact(len(padding(size)))
        spool.seek(0)
        blob = bucket.bucket.blob(name)
        for key in PROPERTIES:
            if key in props:
                setattr(blob, key, props[key])
        blob.metadata = props["metadata"] or None
        written.append(blob)
        await _call(_put, bucket, blob, spool, size, props.get("content_type"))
    return object_digest(sha.hexdigest(), props), crc.b64()


def _put(bucket: _Bucket, blob: Any, spool: IO[bytes], size: int, content_type: str | None) -> None:
    blob.upload_from_file(
        spool,
        size=size,
        content_type=content_type,
        if_generation_match=0,
        checksum="crc32c",
        timeout=bucket.timeout,
        retry=bucket.retry,
    )


async def _delete_all(bucket: _Bucket, blobs: list[Any], where: str) -> None:
    """Delete the objects this restore created: each blob whose upload finished knows its
    generation, and only that generation is deleted."""
    from google.api_core import exceptions as api_exceptions

    def delete(blob: Any) -> None:
        with contextlib.suppress(api_exceptions.NotFound, api_exceptions.PreconditionFailed):
            blob.delete(
                if_generation_match=blob.generation, timeout=bucket.timeout, retry=bucket.retry
            )

    for blob in blobs:
        if not blob.generation:
            continue  # never created by this restore (refused, failed or still in flight)
        try:
            await _call(delete, blob)
        except Exception as exc:
            log.error("%s: could not delete %s again: %s", where, blob.name, _describe(exc))
