"""GcsBucketStrategy between two real fake-gcs-server processes (a source and a scratch one).

Issue 6, must-hold 4: a prefix with nested names and metadata, backed up from one server and
restored into another, has the identical object list, content and metadata."""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from drd.errors import IntegrityError, RestoreError, SourceError, TargetExists
from drd.strategies import get_strategy
from drd.strategies.file_digests import compare
from drd.strategies.gcs_bucket import GcsBucketOptions, GcsBucketStrategy
from tests.support.drdenv import DrdEnv
from tests.support.fakegcs import FakeGcsServer, StartRegions
from tests.support.restored import restored_bucket_statistics

pytestmark = pytest.mark.integration

BIG = os.urandom(1_300_000)
OBJECTS: dict[str, dict[str, Any]] = {
    "top.txt": {"data": b"hello\n", "content_type": "text/plain", "metadata": {"a": "1"}},
    "dir/nested/deep/file.json": {
        "data": b'{"x": 1}',
        "content_type": "application/json",
        "metadata": {"owner": "team-ü", "empty": ""},
    },
    "dir/ünïcode naïve/файл 🦀.bin": {"data": os.urandom(5000), "content_type": None},
    "dir/empty": {"data": b"", "content_type": "application/x-empty"},
    "dir/big.bin": {"data": BIG, "content_type": "application/octet-stream"},
    "dir/gz.txt": {
        "data": b"\x1f\x8b\x08\x00not really gzip",
        "content_type": "text/plain",
        "content_encoding": "gzip",
        "cache_control": "no-cache",
    },
    "trailing/": {"data": b"", "content_type": "application/x-directory"},
}


def client(server: FakeGcsServer) -> storage.Client:
    return storage.Client(
        project="test",
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": server.endpoint},
    )


def put_objects(server: FakeGcsServer, bucket: str, prefix: str) -> None:
    server.create_bucket(bucket)
    b = client(server).bucket(bucket)
    for name, spec in OBJECTS.items():
        blob = b.blob(prefix + name)
        blob.metadata = spec.get("metadata")
        for key in ("content_encoding", "cache_control"):
            if key in spec:
                setattr(blob, key, spec[key])
        blob.upload_from_string(spec["data"], content_type=spec["content_type"])
    b.blob("elsewhere/not-included.txt").upload_from_string(b"outside the prefix")


def listing(server: FakeGcsServer, bucket: str, prefix: str) -> dict[str, Any]:
    out = {}
    for blob in client(server).list_blobs(bucket, prefix=prefix):
        out[blob.name[len(prefix) :]] = {
            "data": blob.download_as_bytes(raw_download=True),
            "content_type": blob.content_type,
            "content_encoding": blob.content_encoding,
            "cache_control": blob.cache_control,
            "metadata": blob.metadata or {},
            "crc32c": blob.crc32c,
            "md5": blob.md5_hash,
        }
    return out


def target(server: FakeGcsServer, bucket: str, prefix: str) -> str:
    return f"gs://{bucket}/{prefix}?endpoint={server.endpoint}&credentials=anonymous"


@pytest.fixture
def two_servers(gcs_regions: StartRegions) -> Iterator[tuple[FakeGcsServer, FakeGcsServer]]:
    source, scratch = gcs_regions(2, ["SOURCE", "SCRATCH"])
    put_objects(source, "src-bucket", "data/")
    scratch.create_bucket("scratch-bucket")
    yield source, scratch


def strategy_for(server: FakeGcsServer, **extra: Any) -> GcsBucketStrategy:
    return GcsBucketStrategy(
        GcsBucketOptions(
            name="assets",
            bucket="src-bucket",
            prefix="data",
            endpoint=server.endpoint,
            credentials={"source": "anonymous"},
            chunk_size=256 * 1024,
            **extra,
        )
    )


async def replay(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for c in chunks:
        yield c


async def test_round_trip_between_two_servers(
    two_servers: tuple[FakeGcsServer, FakeGcsServer],
) -> None:
    source, scratch = two_servers
    strategy = strategy_for(source)
    chunks = [c async for c in strategy.dump()]
    assert max(len(c) for c in chunks) <= 1_300_000  # ranged reads, not whole objects
    meta = strategy.restore_metadata()
    assert meta["objects"] == len(OBJECTS)
    assert meta["bytes"] == sum(len(o["data"]) for o in OBJECTS.values())
    assert set(meta["statistics"]["objects"]["files"]) == set(OBJECTS)

    # Any tar tool can read the archive; DRD.gcs.* PAX records carry the properties.
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks)), mode="r|") as tar:
        members = {m.pax_headers["DRD.gcs.name"]: m for m in tar}
    assert set(members) == set(OBJECTS)
    assert json.loads(members["top.txt"].pax_headers["DRD.gcs.metadata"]) == {"a": "1"}

    outcome = await GcsBucketStrategy.restore(
        replay(chunks), target(scratch, "scratch-bucket", "restored/x"), meta
    )
    assert outcome.details["objects"] == len(OBJECTS)
    original = listing(source, "src-bucket", "data/")
    restored = listing(scratch, "scratch-bucket", "restored/x/")
    assert restored == original
    assert restored["dir/big.bin"]["data"] == BIG
    assert restored["dir/nested/deep/file.json"]["metadata"] == {"owner": "team-ü", "empty": ""}

    # What a restore test reads back equals what the dump recorded.
    stats = await restored_bucket_statistics(target(scratch, "scratch-bucket", "restored/x"))
    from drd.strategies.file_digests import DigestList

    digests = DigestList()
    for name, digest in stats["objects"]["files"].items():
        digests.add(name, digest)
    assert compare(meta["statistics"]["objects"], digests) == []


async def test_target_prefix_must_be_empty(
    two_servers: tuple[FakeGcsServer, FakeGcsServer],
) -> None:
    source, scratch = two_servers
    strategy = strategy_for(source)
    chunks = [c async for c in strategy.dump()]
    client(scratch).bucket("scratch-bucket").blob("taken/keep.txt").upload_from_string(b"mine")
    with pytest.raises(TargetExists):
        await GcsBucketStrategy.restore(
            replay(chunks), target(scratch, "scratch-bucket", "taken"), strategy.restore_metadata()
        )
    assert list(listing(scratch, "scratch-bucket", "taken/")) == ["keep.txt"]


async def test_failure_mid_stream_removes_what_was_written(
    two_servers: tuple[FakeGcsServer, FakeGcsServer],
) -> None:
    source, scratch = two_servers
    strategy = strategy_for(source)
    chunks = [c async for c in strategy.dump()]
    data = b"".join(chunks)
    cut = data.index(BIG[:64]) + 300_000  # inside the big object, after several others

    async def broken() -> AsyncIterator[bytes]:
        yield data[:cut]
        raise IntegrityError("segment 3 failed authentication")

    with pytest.raises(IntegrityError):
        await GcsBucketStrategy.restore(
            broken(), target(scratch, "scratch-bucket", "partial"), strategy.restore_metadata()
        )
    assert listing(scratch, "scratch-bucket", "") == {}


async def test_an_object_someone_else_created_meanwhile_is_never_deleted(
    two_servers: tuple[FakeGcsServer, FakeGcsServer],
) -> None:
    """Someone writes an object under a name the restore is about to create: drd's upload is
    refused (never replaces it), the restore fails, and its clean-up deletes what drd created
    and nothing else."""
    source, scratch = two_servers
    strategy = strategy_for(source)
    data = b"".join([c async for c in strategy.dump()])
    bucket = client(scratch).bucket("scratch-bucket")

    async def raced() -> AsyncIterator[bytes]:
        yield data[:4096]  # the first object's header: the restore is under way
        bucket.blob("raced/top.txt").upload_from_string(b"someone else's")
        yield data[4096:]

    with pytest.raises(RestoreError):
        await GcsBucketStrategy.restore(
            raced(), target(scratch, "scratch-bucket", "raced"), strategy.restore_metadata()
        )
    left = listing(scratch, "scratch-bucket", "raced/")
    assert list(left) == ["top.txt"] and left["top.txt"]["data"] == b"someone else's"


async def test_credentials_rules_and_errors(gcs_region: FakeGcsServer) -> None:
    assert get_strategy("gcs-bucket") is GcsBucketStrategy
    with pytest.raises(ValueError):
        GcsBucketOptions(name="a", bucket="b-1", credentials={"source": "env"})
    with pytest.raises(ValueError, match="loopback"):
        GcsBucketOptions(
            name="a",
            bucket="bkt",
            endpoint="http://example.com",
            credentials={"source": "anonymous"},
        )
    # anonymous without a loopback endpoint: refused when the job runs
    strategy = GcsBucketStrategy(
        GcsBucketOptions(name="a", bucket="bkt", credentials={"source": "anonymous"})
    )
    with pytest.raises(SourceError, match="loopback"):
        [c async for c in strategy.dump()]
    # a missing bucket: a clear SourceError
    missing = GcsBucketStrategy(
        GcsBucketOptions(
            name="a",
            bucket="no-such-bucket",
            endpoint=gcs_region.endpoint,
            credentials={"source": "anonymous"},
            timeout=2,
        )
    )
    with pytest.raises(SourceError, match="listing failed"):
        [c async for c in missing.dump()]


def test_round_trip_through_the_cli(tmp_path: Path, gcs_regions: StartRegions) -> None:
    """Two local regions for the backup; the source and the scratch bucket on two servers."""
    source, scratch = gcs_regions(2, ["SOURCE", "SCRATCH"])
    put_objects(source, "src-bucket", "data/")
    scratch.create_bucket("scratch-bucket")
    env = DrdEnv(tmp_path)
    env.add_local_region("a")
    env.add_local_region("b")
    env.add_plan(
        "assets",
        [
            {
                "name": "bucket",
                "kind": "gcs-bucket",
                "bucket": "src-bucket",
                "prefix": "data/",
                "endpoint": source.endpoint,
                "credentials": {"source": "anonymous"},
            }
        ],
    )
    env.ok("validate")
    env.ok("backup", "assets/bucket")
    for path in env.stored_files():
        assert b"team-" not in path.read_bytes()
    env.ok("restore", "assets/bucket", "--to", target(scratch, "scratch-bucket", "copy"))
    assert listing(scratch, "scratch-bucket", "copy/") == listing(source, "src-bucket", "data/")
    proc = env.run("restore", "assets/bucket", "--to", target(scratch, "scratch-bucket", "copy"))
    assert proc.returncode == 9, proc.stderr
