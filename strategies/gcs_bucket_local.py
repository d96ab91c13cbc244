"""A gcs-bucket backup restored into a local directory, and read back from one.

For the 3 a.m. look at what a bucket held (no cloud needed) and for the `tempdir` restore
test. The directory holds

    <name>                       each object whose name is a plain relative path, as a file
                                 (mtime = the object's last update)
    .drd-gcs-objects/<sha256>    each other object: names GCS allows but a filesystem does
                                 not take as a path ("a//b", "../x", "dir/" placeholders, a
                                 name that is both an object and a "folder" of others, ...)
    .drd-gcs-objects.jsonl       the index: one JSON line per object with its exact name, the
                                 file holding it, its size, crc32c, md5 and properties
                                 (content type, encoding, ..., custom metadata)

so nothing GCS knows about an object is lost, and the index is what a later upload needs.
Written into a staging directory next to the target and renamed into place once every object
is written and matches its crc32c and the backup's object list: a failed restore leaves no
target behind. Files are created exclusively and never followed through a symlink.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from drd.digests import Crc32c
from drd.errors import RestoreError, TargetExists
from drd.fsutil import remove_tree
from drd.strategies.base import RestoreOutcome
from drd.strategies.file_digests import FILE_LIST_LIMIT, DigestList
from drd.strategies.file_digests import compare as compare_digests
from drd.strategies.gcs_tar import (
    PAX,
    Reader,
    member_properties,
    object_digest,
    padding,
    read_member,
)

INDEX = ".drd-gcs-objects.jsonl"
ODD_NAMES = ".drd-gcs-objects"
_NAME_MAX = 255  # bytes per path component on every filesystem drd restores onto
_BIG_WRITE = 64 << 10  # pieces above this are written off the event loop


def plain_path(name: str) -> str | None:
    """The relative path an object is restored at, if its name is one; None otherwise."""
    if not name or name.startswith(".drd-gcs") or "\0" in name:
        return None
    parts = name.split("/")
    for part in parts:
        if part in ("", ".", "..") or len(part.encode("utf-8", "surrogateescape")) > _NAME_MAX:
            return None
    return name


def _odd_path(name: str) -> str:
    return f"{ODD_NAMES}/{hashlib.sha256(name.encode('utf-8', 'surrogateescape')).hexdigest()}"


def _create(root: Path, rel: str) -> int:
    """An exclusively created file at root/rel (parents made, never through a symlink)."""
    path = root / rel
    os.makedirs(path.parent, mode=0o755, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)


def _open_for(root: Path, name: str) -> tuple[str, int]:
    """Where an object goes (its plain path, else the odd-names directory) and its open file.

    Names are restored in listing order, so "a" is a file before "a/b" needs it as a
    directory: the later one then goes to the odd-names directory."""
    rel = plain_path(name)
    if rel is not None:
        try:
            return rel, _create(root, rel)
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            pass
    rel = _odd_path(name)
    return rel, _create(root, rel)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _staging_for(target: Path) -> Path:
    return target.parent / f".{target.name}.drd-staging-{secrets.token_hex(4)}"


def _check_target(target: Path) -> None:
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise TargetExists(f"restore into {target}: exists and is not a directory")
    if target.is_dir() and any(target.iterdir()):
        raise TargetExists(f"restore into {target}: the directory is not empty")


def _prepare(target: Path) -> tuple[Path, Path]:
    """(the absolute target, its new staging directory) once the target can be restored into."""
    target = Path(os.path.abspath(target))
    _check_target(target)
    if not target.parent.is_dir():
        raise RestoreError(f"restore into {target}: the parent directory does not exist")
    staging = _staging_for(target)
    os.mkdir(staging, 0o700)
    return target, staging


def _open_index(staging: Path) -> TextIO:
    return open(staging / INDEX, "x", encoding="utf-8")


async def restore_to_directory(
    chunks: AsyncIterator[bytes], target: Path, metadata: Mapping[str, Any]
) -> RestoreOutcome:
    """Restore the archive's objects into `target` (module docstring)."""
    target, staging = _prepare(target)
    where = f"restore into {target}"
    digests = DigestList(FILE_LIST_LIMIT)
    total = 0
    odd = 0
    try:
        with _open_index(staging) as index:
            reader = Reader(chunks)
            while (member := await read_member(reader)) is not None:
                name, size, pax = member
                rel, sha, crc = await _write_member(staging, reader, name, size, where)
                expected_crc = pax.get(f"{PAX}crc32c")
                if expected_crc and crc != expected_crc:
                    raise RestoreError(f"{where}: {name}: content does not match its crc32c")
                props = member_properties(pax, f"{where}: {name}")
                mtime = float(pax.get("mtime", 0) or 0)
                if mtime:
                    os.utime(staging / rel, (mtime, mtime), follow_symlinks=False)
                odd += rel.startswith(ODD_NAMES + "/")
                line = {
                    "name": name,
                    "file": rel,
                    "size": size,
                    "crc32c": expected_crc or crc,
                    "md5": pax.get(f"{PAX}md5"),
                    "generation": pax.get(f"{PAX}generation"),
                    "properties": props,
                }
                index.write(json.dumps(line, sort_keys=True, ensure_ascii=False) + "\n")
                digests.add(name, object_digest(sha, props))
                total += size
            await reader.drain()
            index.flush()
            os.fsync(index.fileno())
        expected = (metadata.get("statistics") or {}).get("objects")
        if isinstance(expected, dict):
            problems = compare_digests(expected, digests)
            if problems:
                raise RestoreError(f"{where}: {'; '.join(problems)}")
        _check_target(target)  # nothing appeared there meanwhile
        os.replace(staging, target)
    except BaseException:
        await asyncio.shield(asyncio.to_thread(remove_tree, staging))
        raise
    return RestoreOutcome(
        target=str(target),
        details={"objects": digests.count, "bytes": total, "odd_names": odd, "index": INDEX},
    )


async def _write_member(
    root: Path, reader: Reader, name: str, size: int, where: str
) -> tuple[str, str, str]:
    """One object's content into its file; (its path, sha256 hex, crc32c base64)."""
    try:
        rel, fd = _open_for(root, name)
    except OSError as exc:
        raise RestoreError(f"{where}: {name}: cannot create its file: {exc}") from None
    crc, sha = Crc32c(), hashlib.sha256()
    try:
        async for piece in reader.pieces(size):
            crc.update(piece)
            sha.update(piece)
            if len(piece) > _BIG_WRITE:
                await asyncio.to_thread(_write_all, fd, piece)
            else:
                _write_all(fd, piece)
        await reader.read_exact(len(padding(size)))
    finally:
        os.close(fd)
    return rel, sha.hexdigest(), crc.b64()


# ---------------------------------------------------------------------------------------------
# Reading a restored directory back (the restore test's objects check)


@dataclass
class ReadBack:
    """What a restored directory or scratch prefix holds, as the backup lists it."""

    digests: DigestList
    bytes: int
    #: what does not add up besides the list: a file the index names but that is missing,
    #: a crc32c that does not match the bytes, a file the index does not name
    problems: list[str]


def _hash_file(path: Path) -> tuple[str, str, int]:
    crc, sha = Crc32c(), hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as f:
        while block := f.read(1 << 20):
            crc.update(block)
            sha.update(block)
            size += len(block)
    return sha.hexdigest(), crc.b64(), size


def read_directory(root: Path) -> ReadBack:
    """The objects of a directory restore_to_directory wrote, read from the files themselves."""
    digests = DigestList(FILE_LIST_LIMIT)
    problems: list[str] = []
    indexed: set[str] = set()
    try:
        index = open(root / INDEX, encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as exc:
        return ReadBack(digests, 0, [f"cannot read the index {INDEX}: {exc.strerror or exc}"])
    with index:
        total = _read_index(root, index, digests, problems, indexed)
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if rel != INDEX and not path.is_dir() and rel not in indexed:
            problems.append(f"{rel}: a file no object of the backup accounts for")
    return ReadBack(digests, total, problems)


def _read_index(
    root: Path, lines: Iterable[str], digests: DigestList, problems: list[str], indexed: set[str]
) -> int:
    """Each index line's object, hashed from its file (the index is read line by line: it has a
    line per object, and a bucket may have millions)."""
    total = 0
    for number, text in enumerate(lines, start=1):
        try:
            entry = json.loads(text)
            name, rel, props = str(entry["name"]), str(entry["file"]), dict(entry["properties"])
        except (ValueError, KeyError, TypeError):
            problems.append(f"{INDEX} line {number}: not an index entry")
            continue
        if plain_path(rel) != rel and rel != _odd_path(name):
            # Only where restore_to_directory puts an object: never a path out of the copy.
            problems.append(f"{name}: the index names {rel!r}, not where it was restored")
            continue
        indexed.add(rel)
        try:
            sha, crc, size = _hash_file(root / rel)
        except OSError as exc:
            problems.append(f"{name}: its file {rel} cannot be read: {exc.strerror or exc}")
            continue
        if entry.get("crc32c") and crc != entry["crc32c"]:
            problems.append(f"{name}: the file does not match the object's crc32c")
        if entry.get("size") is not None and size != entry["size"]:
            problems.append(f"{name}: {size} bytes, the object had {entry['size']}")
        digests.add(name, object_digest(sha, props))
        total += size
    return total
