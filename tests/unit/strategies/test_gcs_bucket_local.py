"""A gcs-bucket archive restored into a local directory and read back (the tempdir restore test
of gcs-bucket sources): names a filesystem cannot take, properties kept in the index, a
tampered or truncated copy found, nothing left behind by a failed restore."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from drd.errors import RestoreError, TargetExists
from drd.restore_tests import builtin
from drd.strategies import get_strategy
from drd.strategies.file_digests import DigestList
from drd.strategies.gcs_bucket_local import INDEX, ODD_NAMES, plain_path, read_directory
from drd.strategies.gcs_tar import BLOCK, PAX, member_header, object_digest, padding

MTIME = 1_700_000_000

OBJECTS: dict[str, dict[str, Any]] = {
    "a": {"data": b"file a", "props": {"content_type": "text/plain", "metadata": {"k": "v"}}},
    "a/b": {"data": b"under a", "props": {"metadata": {}}},  # "a" is a file already
    "dir/": {"data": b"", "props": {"content_type": "application/x-directory", "metadata": {}}},
    "x//y": {"data": b"double slash", "props": {"metadata": {}}},
    "../escape": {"data": b"never outside", "props": {"metadata": {}}},
    "ünï/файл 🦀.bin": {"data": os.urandom(3000), "props": {"metadata": {"o": "ü"}}},
    ".drd-gcs-objects.jsonl": {
        "data": b"an object named like the index",
        "props": {"metadata": {}},
    },
    "big.bin": {
        "data": os.urandom(200_000),
        "props": {"cache_control": "no-cache", "metadata": {}},
    },
}


def crc32c_b64(data: bytes) -> str:
    from drd.digests import Crc32c

    crc = Crc32c()
    crc.update(data)
    return crc.b64()


def archive(objects: dict[str, dict[str, Any]]) -> bytes:
    out = bytearray()
    for name, spec in objects.items():
        data, props = spec["data"], spec["props"]
        pax = {f"{PAX}name": name, f"{PAX}crc32c": spec.get("crc", crc32c_b64(data))}
        for key, value in props.items():
            if key != "metadata":
                pax[f"{PAX}{key}"] = value
        pax[f"{PAX}metadata"] = json.dumps(props["metadata"], sort_keys=True)
        out += member_header(name, len(data), MTIME, pax) + data + padding(len(data))
    out += bytes(2 * BLOCK)
    return bytes(out)


def expected_list(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    digests = DigestList()
    for name, spec in objects.items():
        digests.add(name, object_digest(hashlib.sha256(spec["data"]).hexdigest(), spec["props"]))
    return digests.as_json()


async def chunks(data: bytes, size: int = 7000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def metadata(objects: dict[str, dict[str, Any]] = OBJECTS) -> dict[str, Any]:
    return {"format": "gcs-tar-pax", "statistics": {"objects": expected_list(objects)}}


async def restore(target: Path, data: bytes, meta: dict[str, Any] | None = None) -> Any:
    strategy = get_strategy("gcs-bucket")
    return await strategy.restore(chunks(data), str(target), meta or metadata())


def test_plain_paths() -> None:
    assert plain_path("dir/file.txt") == "dir/file.txt"
    for odd in ("", "dir/", "a//b", "../x", "a/./b", ".drd-gcs-objects/x", "x" * 256, "a\0b"):
        assert plain_path(odd) is None, odd


async def test_restore_and_read_back(tmp_path: Path) -> None:
    target = tmp_path / "objects"
    outcome = await restore(target, archive(OBJECTS))
    assert outcome.details["objects"] == len(OBJECTS)
    assert (target / "a").read_bytes() == b"file a"
    assert (target / "ünï" / "файл 🦀.bin").read_bytes() == OBJECTS["ünï/файл 🦀.bin"]["data"]
    assert os.stat(target / "a").st_mtime == MTIME
    assert not (tmp_path / "escape").exists()
    index = [json.loads(line) for line in (target / INDEX).read_text().splitlines()]
    by_name = {entry["name"]: entry for entry in index}
    assert set(by_name) == set(OBJECTS)
    for odd in ("a/b", "dir/", "x//y", "../escape", ".drd-gcs-objects.jsonl"):
        assert by_name[odd]["file"].startswith(ODD_NAMES + "/"), odd
        assert (target / by_name[odd]["file"]).read_bytes() == OBJECTS[odd]["data"]
    assert by_name["a"]["properties"] == OBJECTS["a"]["props"]
    assert by_name["big.bin"]["properties"]["cache_control"] == "no-cache"
    # the staging directory was renamed, nothing else left next to the target
    assert sorted(p.name for p in tmp_path.iterdir()) == ["objects"]

    read = read_directory(target)
    assert read.problems == []
    result = builtin.objects(
        metadata()["statistics"]["objects"], read.digests, read.bytes, read.problems, where="x"
    )
    assert result.status == "passed", result
    assert result.coverage and f"{len(OBJECTS)} objects" in result.coverage


@pytest.mark.parametrize("how", ["content", "removed", "extra", "properties", "outside"])
async def test_a_changed_copy_fails_the_objects_check(tmp_path: Path, how: str) -> None:
    target = tmp_path / "objects"
    await restore(target, archive(OBJECTS))
    if how == "content":
        (target / "big.bin").write_bytes(b"changed")
    elif how == "removed":
        (target / "a").unlink()
    elif how == "extra":
        (target / "planted").write_bytes(b"x")
    elif how == "outside":
        (tmp_path / "elsewhere").write_bytes(b"file a")  # the same bytes, out of the copy
        lines = (target / INDEX).read_text().splitlines()
        entries = [json.loads(line) for line in lines]
        for entry in entries:
            if entry["name"] == "a":
                (target / entry["file"]).unlink()
                entry["file"] = "../elsewhere"
        (target / INDEX).write_text("".join(json.dumps(e) + "\n" for e in entries))
    else:
        lines = (target / INDEX).read_text().splitlines()
        entries = [json.loads(line) for line in lines]
        for entry in entries:
            if entry["name"] == "a":
                entry["properties"]["content_type"] = "text/html"
        (target / INDEX).write_text("".join(json.dumps(e) + "\n" for e in entries))
    read = read_directory(target)
    result = builtin.objects(
        metadata()["statistics"]["objects"], read.digests, read.bytes, read.problems, where="x"
    )
    assert result.status == "failed"
    named = {
        "content": "big.bin",
        "removed": "a",
        "extra": "planted",
        "properties": "a",
        "outside": "a",
    }[how]
    assert named in (result.detail or ""), result.detail


async def test_a_wrong_crc_fails_the_restore_and_leaves_nothing(tmp_path: Path) -> None:
    bad = dict(OBJECTS)
    bad["a"] = {**OBJECTS["a"], "crc": crc32c_b64(b"something else")}
    with pytest.raises(RestoreError, match="crc32c"):
        await restore(tmp_path / "objects", archive(bad))
    assert list(tmp_path.iterdir()) == []


async def test_a_truncated_archive_fails_and_leaves_nothing(tmp_path: Path) -> None:
    data = archive(OBJECTS)
    with pytest.raises(RestoreError, match="ended"):
        await restore(tmp_path / "objects", data[: len(data) // 2])
    assert list(tmp_path.iterdir()) == []


async def test_an_object_missing_from_the_archive_fails_the_restore(tmp_path: Path) -> None:
    fewer = {k: v for k, v in OBJECTS.items() if k != "a"}
    with pytest.raises(RestoreError, match="a"):
        await restore(tmp_path / "objects", archive(fewer), metadata(OBJECTS))
    assert list(tmp_path.iterdir()) == []


async def test_a_non_empty_target_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "objects"
    target.mkdir()
    (target / "keep").write_text("mine")
    with pytest.raises(TargetExists):
        await restore(target, archive(OBJECTS))
    assert (target / "keep").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    await restore(empty, archive(OBJECTS))
    assert (empty / INDEX).is_file()
