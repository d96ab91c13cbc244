"""Issue 15 (points 1, 4 and 5 for gcs-bucket sources): restore tests of a bucket prefix on a
real fake-gcs-server, into a local scratch directory (the default, no cloud) and into a scratch
prefix of a scratch bucket on another server; the objects check reads the copy back where it
is; nothing is left behind, even by a test killed outright; `drd validate` refuses a scratch
prefix among the source's own objects; `drd restore` into a local directory at 3 a.m."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drd.restore_tests import builtin
from drd.strategies.gcs_bucket import read_prefix
from drd.verify.scratch.registry import register, sweep_leftovers
from tests.integration.strategies.test_gcs_bucket import OBJECTS, client, put_objects, strategy_for
from tests.support.drdenv import DrdEnv
from tests.support.fakegcs import FakeGcsServer, StartRegions
from tests.support.gcs_emulator import StorageEmulator

pytestmark = pytest.mark.integration


def gcs_source(server: FakeGcsServer) -> dict[str, Any]:
    return {
        "name": "uploads",
        "kind": "gcs-bucket",
        "bucket": "src-bucket",
        "prefix": "data/",
        "endpoint": server.endpoint,
        "credentials": {"source": "anonymous"},
    }


def scratch_spec(server: FakeGcsServer, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "gcs-scratch-bucket",
        "bucket": "scratch-bucket",
        "endpoint": server.endpoint,
        "credentials": {"source": "anonymous"},
        **extra,
    }


def objects_in(server: FakeGcsServer, bucket: str, prefix: str = "") -> list[str]:
    return sorted(b.name for b in client(server).list_blobs(bucket, prefix=prefix))


def make_env(tmp_path: Path, source: FakeGcsServer, **plan_extra: Any) -> DrdEnv:
    env = DrdEnv(tmp_path)
    env.add_local_region("a")
    env.add_local_region("b")
    env.add_plan("media", [gcs_source(source)], **plan_extra)
    env.write()
    return env


def the_report(proc: Any) -> dict[str, Any]:
    (report,) = json.loads(proc.stdout)["reports"]
    assert isinstance(report, dict)
    return report


@pytest.fixture(params=["fake-gcs-server", "gcp-storage-emulator"])
def servers(request: pytest.FixtureRequest, gcs_regions: StartRegions) -> Iterator[tuple[Any, Any]]:
    """A source and a scratch GCS, both of one implementation: each test runs on both."""
    if request.param == "fake-gcs-server":
        source, scratch = gcs_regions(2, ["SOURCE", "SCRATCH"])
        started: list[StorageEmulator] = []
    else:
        started = [StorageEmulator().start(), StorageEmulator().start()]
        source, scratch = started
    try:
        put_objects(source, "src-bucket", "data/")
        scratch.create_bucket("scratch-bucket")
        yield source, scratch
    finally:
        for emulator in started:
            emulator.stop()


def test_default_scratch_is_a_local_directory(
    tmp_path: Path, servers: tuple[FakeGcsServer, FakeGcsServer]
) -> None:
    source, _ = servers
    env = make_env(tmp_path, source)
    env.ok("validate")
    env.ok("backup", "media/uploads")
    report = the_report(env.ok("restore-test", "media", "--json"))
    assert report["result"] == "passed", report
    assert report["scratch"]["kind"] == "tempdir"
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["integrity"]["status"] == "passed"
    objects = checks["objects"]
    assert objects["status"] == "passed", objects
    assert f"{len(OBJECTS)} objects" in objects["coverage"]
    assert "metadata" in objects["compared"] and "CRC32C" in objects["compared"]
    assert not Path(report["scratch"]["resource"]).exists()
    assert not list((env.root / "state" / "scratch").glob("*.json"))


def test_scratch_bucket_holds_the_copy_as_gcs_serves_it(
    tmp_path: Path, servers: tuple[FakeGcsServer, FakeGcsServer]
) -> None:
    source, scratch = servers
    client(scratch).bucket("scratch-bucket").blob("keep/me").upload_from_string(b"not drd's")
    env = make_env(tmp_path, source, restore_test={"scratch": {"uploads": scratch_spec(scratch)}})
    env.ok("validate")
    env.ok("backup", "media/uploads")
    command = (
        "import os, sys; from google.cloud import storage; "
        "from google.auth.credentials import AnonymousCredentials; "
        f"c = storage.Client(project='t', credentials=AnonymousCredentials(), "
        f"client_options={{'api_endpoint': '{scratch.endpoint}'}}); "
        "b, _, p = os.environ['DRD_RESTORED_GCS_PREFIX'][5:].partition('/'); "
        f"sys.exit(len(list(c.list_blobs(b, prefix=p))) != {len(OBJECTS)})"
    )
    env.plans["media"]["restore_test"]["checks"] = {
        "uploads": [{"name": "count", "command": [sys.executable, "-c", command]}]
    }
    env.write()
    report = the_report(env.ok("restore-test", "media", "--json"))
    assert report["result"] == "passed", report
    assert report["scratch"]["kind"] == "gcs-scratch-bucket"
    resource = report["scratch"]["resource"]
    assert resource.startswith("gs://scratch-bucket/drd-restore-tests/drd-scratch-")
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["objects"]["status"] == "passed", checks["objects"]
    assert resource in checks["objects"]["coverage"]
    assert checks["count"]["status"] == "passed", checks["count"]
    # the scratch prefix is emptied; what drd did not write is untouched
    assert objects_in(scratch, "scratch-bucket") == ["keep/me"]
    assert objects_in(source, "src-bucket", "data/") == sorted(f"data/{n}" for n in OBJECTS)
    assert not list((env.root / "state" / "scratch").glob("*.json"))


def test_a_changed_scratch_copy_fails_the_objects_check(
    tmp_path: Path, servers: tuple[FakeGcsServer, FakeGcsServer]
) -> None:
    """The objects check reads the scratch prefix back as GCS serves it: a copy with one
    object's content or metadata changed (a lifecycle rule, a hostile writer) fails, naming
    the object."""
    source, scratch = servers
    # What a backup of the source records: the list the restore test compares with.
    dumper = strategy_for(source)

    async def dump() -> None:
        async for _ in dumper.dump():
            pass

    asyncio.run(dump())
    expected = dumper.restore_metadata()["statistics"]["objects"]
    bucket = client(scratch).bucket("scratch-bucket")
    for case, (changed, data, metadata) in {
        "content": ("top.txt", b"changed", None),
        "metadata": ("dir/nested/deep/file.json", None, {"owner": "someone else"}),
    }.items():
        prefix = f"drd-restore-tests/{case}/"
        for name, spec in OBJECTS.items():
            blob = bucket.blob(prefix + name)
            blob.metadata = metadata if name == changed and metadata else spec.get("metadata")
            for key in ("content_encoding", "cache_control"):
                if key in spec:
                    setattr(blob, key, spec[key])
            body = data if name == changed and data is not None else spec["data"]
            blob.upload_from_string(body, content_type=spec["content_type"])
        target = f"gs://scratch-bucket/{prefix}?endpoint={scratch.endpoint}&credentials=anonymous"
        found, total, problems = read_prefix(target)
        result = builtin.objects(expected, found, total, problems, where=target)
        assert result.status == "failed" and changed in (result.detail or ""), (case, result)
        # the untouched copy passes: the check is not failing for some other reason
        untouched = f"gs://src-bucket/data/?endpoint={source.endpoint}&credentials=anonymous"
        found, total, problems = read_prefix(untouched)
        assert builtin.objects(expected, found, total, problems, where="x").status == "passed"


def test_a_leftover_scratch_prefix_is_swept(
    tmp_path: Path, servers: tuple[FakeGcsServer, FakeGcsServer]
) -> None:
    """A test killed outright leaves its record; the next start empties its prefix."""
    _, scratch = servers
    state = tmp_path / "state"
    prefix = "drd-restore-tests/drd-scratch-0123456789ab/"
    bucket = client(scratch).bucket("scratch-bucket")
    for name in ("a", "b/c", "d/"):
        bucket.blob(prefix + name).upload_from_string(b"left")
    bucket.blob("drd-restore-tests/other").upload_from_string(b"keep")
    target = f"gs://scratch-bucket/{prefix}?endpoint={scratch.endpoint}&credentials=anonymous"
    registration = register(
        state, "0123456789ab", "gcs-scratch-bucket", target=target, label="media/uploads"
    )
    registration.abandon()  # as a killed owner's lock is dropped by the kernel
    removed = asyncio.run(sweep_leftovers(state))
    assert removed == ["scratch prefix gs://scratch-bucket/" + prefix]
    assert objects_in(scratch, "scratch-bucket") == ["drd-restore-tests/other"]


def test_validate_refuses_a_scratch_prefix_among_the_source_objects(
    tmp_path: Path, servers: tuple[FakeGcsServer, FakeGcsServer]
) -> None:
    source, _ = servers
    spec = {**scratch_spec(source), "bucket": "src-bucket", "prefix": "data/tests/"}
    env = make_env(tmp_path, source, restore_test={"scratch": {"uploads": spec}})
    proc = env.run("validate")
    assert proc.returncode == 3, proc.stdout + proc.stderr  # ConfigError
    out = proc.stdout + proc.stderr
    assert "restore_test.scratch.uploads.prefix" in out and "overlaps" in out


def test_restore_into_a_local_directory(
    tmp_path: Path, servers: tuple[FakeGcsServer, FakeGcsServer]
) -> None:
    source, _ = servers
    env = make_env(tmp_path, source)
    env.ok("backup", "media/uploads")
    target = tmp_path / "restored"
    env.ok("restore", "media/uploads", "--to", str(target))
    assert (target / "top.txt").read_bytes() == OBJECTS["top.txt"]["data"]
    assert (target / "dir" / "big.bin").read_bytes() == OBJECTS["dir/big.bin"]["data"]
    index = [json.loads(x) for x in (target / ".drd-gcs-objects.jsonl").read_text().splitlines()]
    by_name = {e["name"]: e for e in index}
    assert set(by_name) == set(OBJECTS)
    assert by_name["top.txt"]["properties"]["metadata"] == {"a": "1"}
    assert by_name["dir/gz.txt"]["properties"]["content_encoding"] == "gzip"
    assert by_name["trailing/"]["file"].startswith(".drd-gcs-objects/")


def test_a_record_naming_a_prefix_not_its_own_is_never_emptied(
    tmp_path: Path, servers: tuple[FakeGcsServer, FakeGcsServer]
) -> None:
    """A registry record is a file in the state directory: one edited to point at some other
    prefix (the source's objects, another test's) must not get it emptied."""
    source, _ = servers
    state = tmp_path / "state"
    target = f"gs://src-bucket/data/?endpoint={source.endpoint}&credentials=anonymous"
    registration = register(state, "0123456789ab", "gcs-scratch-bucket", target=target, label="x")
    registration.abandon()
    assert asyncio.run(sweep_leftovers(state)) == []
    assert objects_in(source, "src-bucket", "data/") == sorted(f"data/{n}" for n in OBJECTS)
    assert list((state / "scratch").glob("*.json"))  # kept, for a person to look at
