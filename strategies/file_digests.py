"""Per-file sha256 digests of a directory tree, for the files restore test.

At backup time the files strategy hashes every regular file's content exactly as it went into
the archive; after a restore the restored tree is hashed the same way and the two compared.

The manifest must stay small whatever the tree's size, so what is stored is:
- `count` and `tree`: the number of files and an order-independent digest of the whole list
  (the sum, mod 2**256, of sha256(path NUL file-digest) over all files). Order-independent
  because the dump's walk order (depth first, names sorted per directory) and any later walk
  need not agree; a sum is enough here because the archive itself is authenticated end to end:
  this digest checks the restore, not an adversary.
- `files`: path -> sha256 for trees of at most FILE_LIST_LIMIT files, so that a mismatch can
  name the files that differ; larger trees record only the count and the tree digest.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

#: trees with more files keep only the count and the tree digest (about 100 bytes per file)
FILE_LIST_LIMIT = 4096
ALGORITHM = "sha256"
_MOD = 1 << 256


def display_path(rel: str) -> str:
    """A relative path as valid UTF-8 text (undecodable bytes shown as \\xNN escapes), the same
    on both sides: it becomes a JSON key in the sealed manifest."""
    return rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class DigestList:
    """Accumulates (path, digest) pairs into the compact form described above."""

    def __init__(self, limit: int = FILE_LIST_LIMIT) -> None:
        self._limit = limit
        self.count = 0
        self._sum = 0
        self.files: dict[str, str] | None = {}

    def add(self, rel: str, hexdigest: str) -> None:
        name = display_path(rel)
        entry = hashlib.sha256(name.encode() + b"\0" + bytes.fromhex(hexdigest)).digest()
        self._sum = (self._sum + int.from_bytes(entry, "big")) % _MOD
        self.count += 1
        if self.files is not None:
            if len(self.files) >= self._limit:
                self.files = None  # too many to list: count and tree digest only
            else:
                self.files[name] = hexdigest

    @property
    def tree(self) -> str:
        return f"{self._sum:064x}"

    def as_json(self) -> dict[str, Any]:
        return {
            "algorithm": ALGORITHM,
            "count": self.count,
            "tree": self.tree,
            "files": dict(sorted(self.files.items())) if self.files is not None else None,
        }


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(chunk):
            h.update(data)
    return h.hexdigest()


def tree_digests(root: Path, limit: int = FILE_LIST_LIMIT) -> DigestList:
    """Hash every regular file under `root` (symlinks are not followed). Blocking."""
    out = DigestList(limit)
    base = str(root)
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                out.add(os.path.relpath(path, base).replace(os.sep, "/"), file_sha256(path))
    return out


def compare(expected: dict[str, Any], actual: DigestList, show: int = 10) -> list[str]:
    """What differs between the digests recorded at backup time and a restored tree (empty
    when they match)."""
    problems: list[str] = []
    if expected.get("count") != actual.count:
        problems.append(f"{actual.count} files restored, {expected.get('count')} archived")
    listed = expected.get("files")
    if isinstance(listed, dict) and actual.files is not None:
        missing = sorted(set(listed) - set(actual.files))
        extra = sorted(set(actual.files) - set(listed))
        changed = sorted(p for p in set(listed) & set(actual.files) if listed[p] != actual.files[p])
        for label, paths in (("missing", missing), ("unexpected", extra), ("different", changed)):
            if paths:
                more = f" and {len(paths) - show} more" if len(paths) > show else ""
                problems.append(f"{label}: {', '.join(paths[:show])}{more}")
    if expected.get("tree") != actual.tree and not problems:
        why = "" if isinstance(listed, dict) else " (too many files to list which ones)"
        problems.append(f"the tree digest differs{why}")
    return problems
