"""GCSStorage beyond the shared contract: regions as separate fake-gcs-server processes,
outages (killed, restarted, frozen servers), bounded retries, upload verification, and the
resumable-upload recovery that the emulator cannot exercise (see the last section)."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests  # type: ignore[import-untyped,unused-ignore]
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from drd.errors import (
    ObjectNotFound,
    PermanentStorageError,
    StorageError,
    TransientStorageError,
)
from drd.storage.gcs import CHUNK_UNIT, GCSStorage, _ResumableUpload
from drd.storage.registry import open_storage
from tests.support.fakegcs import FakeGcsServer, StartRegions
from tests.support.fakegcs import make_gcs_storage as make_storage

pytestmark = pytest.mark.integration

BUCKET = "drd-test"


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture
def raw_bucket(gcs_region: FakeGcsServer) -> Iterator[Any]:
    """The emulator's bucket seen directly through the library, to check object names."""
    gcs_region.create_bucket(BUCKET)
    client = storage.Client(
        project="test",
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": gcs_region.endpoint},
    )
    yield client.bucket(BUCKET)
    client.close()


# -- regions -----------------------------------------------------------------------------------


async def test_two_regions_in_one_process(gcs_regions: StartRegions) -> None:
    eu, us = gcs_regions(2, locations=["EUROPE-WEST1", "US-EAST1"])
    stores = [make_storage(eu, "eu", BUCKET), make_storage(us, "us", BUCKET)]
    try:
        assert (eu.bucket_location(BUCKET), us.bucket_location(BUCKET)) == (
            "EUROPE-WEST1",
            "US-EAST1",
        )
        await stores[0].put("k", b"in europe")
        await stores[1].put("k", b"in america")
        assert [await s.get("k") for s in stores] == [b"in europe", b"in america"]

        eu.stop()  # a regional outage leaves the other region untouched
        with pytest.raises(TransientStorageError, match="region eu"):
            await stores[0].check()
        await stores[1].check()
        assert await stores[1].get("k") == b"in america"
    finally:
        for store in stores:
            await store.close()


async def test_key_maps_under_the_prefix(raw_bucket: Any, gcs_region: FakeGcsServer) -> None:
    store = make_storage(gcs_region, "eu", BUCKET, prefix="/deploy/eu/")
    try:
        await store.put("plan/src/id/manifest.json", b"{}", {"k": "v"})
        raw_bucket.blob("deploy/euro/other").upload_from_string(b"not under the prefix")
        raw_bucket.blob("deploy/eu/folder/").upload_from_string(b"")  # a console placeholder
        names = sorted(blob.name for blob in raw_bucket.client.list_blobs(BUCKET))
        assert names == [
            "deploy/eu/folder/",
            "deploy/eu/plan/src/id/manifest.json",
            "deploy/euro/other",
        ]
        assert [i.key for i in await store.list()] == ["plan/src/id/manifest.json"]
    finally:
        await store.close()


async def test_missing_bucket_is_permanent(gcs_region: FakeGcsServer) -> None:
    store = make_storage(gcs_region, "eu", "no-such-bucket", create_bucket=False)
    try:
        with pytest.raises(PermanentStorageError, match="bucket not found"):
            await store.check()
        with pytest.raises(PermanentStorageError, match="no-such-bucket"):
            await store.open_writer("k")
    finally:
        await store.close()


async def test_registry_opens_gcs_with_an_emulator_endpoint(
    raw_bucket: Any, gcs_region: FakeGcsServer
) -> None:
    store = open_storage(
        "eu", f"gs://{BUCKET}/deploy", endpoint=gcs_region.endpoint, chunk_size=CHUNK_UNIT
    )
    try:
        assert isinstance(store, GCSStorage)
        await store.put("k", b"via the registry")
        assert raw_bucket.blob("deploy/k").download_as_bytes() == b"via the registry"
    finally:
        await store.close()


# -- outages -----------------------------------------------------------------------------------


async def test_server_killed_mid_upload(gcs_regions: StartRegions) -> None:
    (server,) = gcs_regions(1, persistent=True)
    store = make_storage(
        server, "eu", BUCKET, chunk_size=CHUNK_UNIT, timeout=1.0, retry_deadline=2.0
    )
    try:
        writer = await store.open_writer("plan/src/id/data.drd")
        await writer.write(payload(2 * CHUNK_UNIT))  # two chunks are on the server
        server.stop()
        started = time.monotonic()
        with pytest.raises(TransientStorageError) as caught:
            await writer.write(payload(CHUNK_UNIT, seed=1))
        assert time.monotonic() - started < 2.0 + 1.0 + 1.5, "bounded by the retry deadline"
        message = str(caught.value)
        assert "region eu" in message and "plan/src/id/data.drd" in message
        assert "upload_id=" not in message or "upload_id=<redacted>" in message
        with pytest.raises(StorageError):
            await writer.commit()
        started = time.monotonic()
        await writer.abort()  # best effort, and quick, with the server gone
        assert time.monotonic() - started < 1.5

        server.restart()  # the data directory survives; the upload session does not
        with pytest.raises(ObjectNotFound):
            await store.stat("plan/src/id/data.drd")
        assert await store.list() == []
    finally:
        await store.close()


async def test_restarted_server_lost_the_upload_session(gcs_regions: StartRegions) -> None:
    (server,) = gcs_regions(1, persistent=True)
    store = make_storage(server, "eu", BUCKET, chunk_size=CHUNK_UNIT, timeout=2.0)
    try:
        await store.put("kept", b"committed before the restart")
        writer = await store.open_writer("k")
        await writer.write(payload(CHUNK_UNIT))
        server.restart()
        with pytest.raises(TransientStorageError, match="session lost"):
            await writer.write(payload(CHUNK_UNIT, seed=1))
        await writer.abort()
        assert [i.key for i in await store.list()] == ["kept"]
    finally:
        await store.close()


async def test_stopped_server_check_fails_fast(gcs_region: FakeGcsServer) -> None:
    store = make_storage(gcs_region, "eu", BUCKET, timeout=30.0)
    try:
        await store.check()
        gcs_region.stop()
        started = time.monotonic()
        with pytest.raises(TransientStorageError, match="region eu"):
            await store.check()
        assert time.monotonic() - started < 1.0, "a probe does not retry"
    finally:
        await store.close()


async def test_frozen_server_times_out(gcs_region: FakeGcsServer) -> None:
    store = make_storage(gcs_region, "eu", BUCKET, timeout=1.0)
    try:
        gcs_region.pause()  # accepts connections, never answers
        started = time.monotonic()
        with pytest.raises(TransientStorageError):
            await store.check()
        assert 0.9 < time.monotonic() - started < 3.0
    finally:
        gcs_region.resume()
        await store.close()


async def test_dead_server_retries_are_bounded(gcs_region: FakeGcsServer) -> None:
    store = make_storage(gcs_region, "eu", BUCKET, timeout=1.0, retry_deadline=2.0)
    try:
        await store.put("k", b"x")
        gcs_region.stop()
        for operation in (store.stat("k"), store.get("k"), store.list(), store.open_writer("k2")):
            started = time.monotonic()
            with pytest.raises(TransientStorageError):
                await operation
            # Far below the library's 120 s, with room for a loaded machine.
            assert time.monotonic() - started < 2.0 + 8.0, "not the library's 120 s"
    finally:
        await store.close()


# -- upload verification -----------------------------------------------------------------------


async def test_upload_corrupted_in_transit_is_deleted(
    gcs_region: FakeGcsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real GCS refuses the final chunk when X-Goog-Hash does not match; the emulator ignores
    that header, which lets this test reach the second line of defence: compare, delete."""
    store = make_storage(gcs_region, "eu", BUCKET, chunk_size=CHUNK_UNIT)
    http = store._http
    send = http.request

    def flip_a_bit_in_the_last_chunk(method: str, url: str, **kwargs: Any) -> Any:
        body = kwargs.get("data")
        if method == "PUT" and body and not kwargs["headers"]["Content-Range"].endswith("/*"):
            # Chunks go out as a sized iterable of the pieces written (no joined copy).
            data = b"".join(bytes(piece) for piece in body)
            kwargs["data"] = bytes([data[0] ^ 1]) + data[1:]
        return send(method, url, **kwargs)

    monkeypatch.setattr(http, "request", flip_a_bit_in_the_last_chunk)
    try:
        writer = await store.open_writer("k")
        await writer.write(payload(CHUNK_UNIT + 100))
        with pytest.raises(TransientStorageError, match="does not match"):
            await writer.commit()
        assert await store.list() == []
    finally:
        await store.close()


# -- resumable-upload recovery -----------------------------------------------------------------
# The emulator appends every PUT body whatever its Content-Range says, and it finalizes the
# object on a status query (`bytes */*`), so it cannot show that the writer resumes correctly
# after a lost response. This fake answers the way the GCS documentation describes instead.


class _Response:
    def __init__(self, status: int, headers: dict[str, str] | None = None, body: Any = None):
        self.status_code = status
        self.headers = headers or {}
        self._body = body
        self.text = "" if body is None else str(body)

    def json(self) -> Any:
        return self._body


class GcsLikeSession:
    """Real-GCS resumable semantics: bytes land at the offsets given, 308 + Range reports
    what is kept, a status query answers without side effects."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.done = False
        self.keep_at_most: int | None = None  # keep only part of the next chunk
        self.drop_response_after_storing = 0  # then lose the response of that many PUTs
        self.fail_statuses: list[int] = []
        self.log: list[str] = []

    def _kept(self) -> _Response:
        if self.done:
            return _Response(200, body={"size": str(len(self.data))})
        headers = {"Range": f"bytes=0-{len(self.data) - 1}"} if self.data else {}
        return _Response(308, headers)

    def request(self, method: str, url: str, data: Any = b"", **kwargs: Any) -> _Response:
        # A chunk arrives as a sized iterable of pieces; its length is the Content-Length.
        length = len(data)
        data = data if isinstance(data, bytes) else b"".join(bytes(p) for p in data)
        assert len(data) == length
        content_range = kwargs["headers"]["Content-Range"]
        self.log.append(content_range)
        if self.fail_statuses:
            return _Response(self.fail_statuses.pop(0), body="try later")
        span, _, total = content_range.removeprefix("bytes ").partition("/")
        if span == "*":
            if total != "*" and int(total) == len(self.data):
                self.done = True
            return self._kept()
        start = int(span.partition("-")[0])
        assert start == len(self.data), "the client must resend from what the server kept"
        piece = data if self.keep_at_most is None else data[: self.keep_at_most]
        self.keep_at_most = None
        self.data += piece
        if total != "*" and int(total) == len(self.data):
            self.done = True
        if self.drop_response_after_storing:
            self.drop_response_after_storing -= 1
            raise requests.ConnectionError("connection reset by peer")
        return self._kept()


def _upload(session: GcsLikeSession, deadline: float = 5.0) -> _ResumableUpload:
    return _ResumableUpload(
        session, "http://127.0.0.1:9/upload", chunk_size=CHUNK_UNIT, timeout=1.0, deadline=deadline
    )


def test_resumes_after_a_lost_response_without_duplicating_bytes() -> None:
    session = GcsLikeSession()
    upload = _upload(session)
    data = payload(3 * CHUNK_UNIT + 10)
    session.drop_response_after_storing = 1
    upload.pending.append(data)
    assert upload.send() is None
    assert upload.persisted == 3 * CHUNK_UNIT
    session.drop_response_after_storing = 1  # the final chunk lands, its answer is lost
    assert upload.send(total=len(data), crc32c="x") == {"size": str(len(data))}
    assert bytes(session.data) == data
    assert session.log.count("bytes */*") == 2  # it asked instead of guessing, both times


def test_resends_what_the_server_did_not_keep() -> None:
    session = GcsLikeSession()
    upload = _upload(session)
    data = payload(2 * CHUNK_UNIT)
    session.keep_at_most = CHUNK_UNIT // 2
    upload.pending.append(data)
    upload.send()
    # half of the first chunk kept, so the next chunk starts there and is kept whole
    assert upload.persisted == CHUNK_UNIT + CHUNK_UNIT // 2
    assert session.log[:2] == [
        f"bytes 0-{CHUNK_UNIT - 1}/*",
        f"bytes {CHUNK_UNIT // 2}-{CHUNK_UNIT // 2 + CHUNK_UNIT - 1}/*",
    ]
    assert upload.send(total=len(data), crc32c="x") is not None
    assert bytes(session.data) == data


def test_retries_server_errors_then_gives_up_within_the_deadline() -> None:
    session = GcsLikeSession()
    session.fail_statuses = [503, 429]
    upload = _upload(session)
    upload.pending.append(b"small")
    assert upload.send(total=5, crc32c="x") is not None
    assert bytes(session.data) == b"small"

    dead = GcsLikeSession()
    dead.fail_statuses = [503] * 1000
    upload = _upload(dead, deadline=1.0)
    upload.pending.append(b"small")
    started = time.monotonic()
    with pytest.raises(TransientStorageError, match="gave up after 1s"):
        upload.send(total=5, crc32c="x")
    assert time.monotonic() - started < 1.5


def test_lost_session_and_refusals() -> None:
    session = GcsLikeSession()
    session.fail_statuses = [404]
    upload = _upload(session)
    upload.pending.append(b"x")
    with pytest.raises(TransientStorageError, match="session lost"):
        upload.send(total=1, crc32c="x")
    session.fail_statuses = [403]
    with pytest.raises(PermanentStorageError, match="HTTP 403"):
        upload.send(total=1, crc32c="x")
