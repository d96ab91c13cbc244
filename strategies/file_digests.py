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

Trees (the files strategy) also record every entry's metadata (`entries`, `devices`,
`hardlinks`, see TreeDigests): for each entry its type (file, dir, symlink, fifo, chr, blk),
permission bits, owner and group (by name, `#id` where the id has no name), mtime in
nanoseconds, symlink target or device numbers, and its xattrs (POSIX ACLs included) split in
two: `xattrs` (user.*, system.*) and `xattrs_privileged` (trusted.*, security.*, which only
root can read and write). Stored per aspect as an order-independent sum (as `tree`), and for
trees of at most FILE_LIST_LIMIT entries as a short per-entry digest of each aspect, so that a
mismatch names the entries and the aspects that differ. Device nodes are kept apart (a
restore not running as root cannot create them); hard links as the digest of each group of
paths sharing an inode.
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drd.strategies import file_xattrs, sparse_files

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


_ZEROS = memoryview(bytes(1 << 20))


def hash_zeros(h: Any, n: int) -> None:
    """Feed `n` zero bytes to the hash `h` (a hole of a sparse file)."""
    while n > 0:
        step = min(n, len(_ZEROS))
        h.update(_ZEROS[:step])
        n -= step


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    """sha256 of a file's content; the holes of a sparse file are hashed as the zeros they
    read as, without reading them."""
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        regions = None
        if st.st_blocks * 512 < st.st_size:
            regions = sparse_files.data_regions(fd, st.st_size)
        if regions is None:
            regions = [(0, st.st_size)]
        pos = 0
        for offset, length in regions:
            hash_zeros(h, offset - pos)
            pos = offset
            while pos < offset + length:
                data = os.pread(fd, min(chunk, offset + length - pos), pos)
                if not data:
                    return h.hexdigest()  # it shrank while being hashed
                h.update(data)
                pos += len(data)
        if regions == [(0, st.st_size)]:  # it may have grown: hash what is there now
            while data := os.pread(fd, chunk, pos):
                h.update(data)
                pos += len(data)
    finally:
        os.close(fd)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Entry metadata

#: what is compared for every entry, in the order of the per-entry digests
ASPECTS = ("type", "mode", "owner", "mtime", "target", "xattrs", "xattrs_privileged")
#: aspects a process that is not root cannot restore (and so does not compare)
PRIVILEGED_ASPECTS = frozenset({"owner", "xattrs_privileged"})
_SHORT = 8  # hex digits per aspect in a per-entry digest
DEVICE_KINDS = ("chr", "blk")


def kind_of(mode: int) -> str:
    for test, name in (
        (stat.S_ISREG, "file"),
        (stat.S_ISDIR, "dir"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISCHR, "chr"),
        (stat.S_ISBLK, "blk"),
    ):
        if test(mode):
            return name
    return "socket" if stat.S_ISSOCK(mode) else "other"


def owner_text(uid: int, uname: str, gid: int, gname: str) -> str:
    """`user:group` by name, `#id` for an id without a name (a restore maps owners by name
    where it can, as GNU tar does)."""
    return f"{uname or f'#{uid}'}:{gname or f'#{gid}'}"


def _xattr_digest(items: list[tuple[str, bytes]]) -> str:
    if not items:
        return ""
    h = hashlib.sha256()
    for name, value in items:
        encoded = name.encode("utf-8", "surrogateescape")
        h.update(len(encoded).to_bytes(4, "big") + encoded)
        h.update(len(value).to_bytes(4, "big") + value)
    return h.hexdigest()


@dataclass(frozen=True)
class Entry:
    """The metadata of one entry of a tree, as archived or as restored."""

    kind: str
    #: permission bits (S_IMODE); not compared for symlinks
    mode: int
    owner: str
    mtime_ns: int
    #: a symlink's target; a device node's "major,minor"
    target: str = ""
    xattrs: Mapping[str, bytes] = field(default_factory=dict)

    def aspects(self) -> dict[str, str]:
        items = sorted(self.xattrs.items())
        return {
            "type": self.kind,
            "mode": "" if self.kind == "symlink" else f"{self.mode:o}",
            "owner": self.owner,
            "mtime": str(self.mtime_ns),
            "target": display_path(self.target),
            "xattrs": _xattr_digest([i for i in items if not file_xattrs.is_privileged(i[0])]),
            "xattrs_privileged": _xattr_digest(
                [i for i in items if file_xattrs.is_privileged(i[0])]
            ),
        }


def _entry_hash(name: str, aspect: str, value: str) -> int:
    data = "\0".join((name, aspect, value)).encode("utf-8", "surrogateescape")
    return int.from_bytes(hashlib.sha256(data).digest(), "big")


class EntryList:
    """Accumulates entries' metadata: a count per type, an order-independent sum per aspect,
    and (up to `limit` entries) `path -> "<type>:<aspect digests>"`."""

    def __init__(self, limit: int = FILE_LIST_LIMIT) -> None:
        self._limit = limit
        self.count = 0
        self.types: dict[str, int] = {}
        self.with_xattrs = 0
        self.with_acls = 0
        self._sums = dict.fromkeys(ASPECTS, 0)
        self.entries: dict[str, str] | None = {}

    def add(self, rel: str, entry: Entry) -> None:
        name = display_path(rel)
        aspects = entry.aspects()
        for aspect, value in aspects.items():
            self._sums[aspect] = (self._sums[aspect] + _entry_hash(name, aspect, value)) % _MOD
        self.count += 1
        self.types[entry.kind] = self.types.get(entry.kind, 0) + 1
        self.with_xattrs += bool(entry.xattrs)
        self.with_acls += any(file_xattrs.is_acl(n) for n in entry.xattrs)
        if self.entries is not None:
            if len(self.entries) >= self._limit:
                self.entries = None
            else:
                short = (
                    hashlib.sha256(aspects[a].encode("utf-8", "surrogateescape")).hexdigest()[
                        :_SHORT
                    ]
                    for a in ASPECTS[1:]
                )
                self.entries[name] = ":".join((entry.kind, *short))

    @property
    def sums(self) -> dict[str, str]:
        return {a: f"{v:064x}" for a, v in self._sums.items()}

    def as_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "types": dict(sorted(self.types.items())),
            "with_xattrs": self.with_xattrs,
            "with_acls": self.with_acls,
            "aspects": self.sums,
            "entries": dict(sorted(self.entries.items())) if self.entries is not None else None,
        }


class TreeDigests(DigestList):
    """A tree's file contents (the DigestList part) and the metadata of every entry."""

    def __init__(self, limit: int = FILE_LIST_LIMIT) -> None:
        super().__init__(limit)
        self.entries = EntryList(limit)
        self.devices = EntryList(limit)
        self._groups: dict[tuple[int, int], list[str]] = {}

    def add_entry(self, rel: str, entry: Entry) -> None:
        (self.devices if entry.kind in DEVICE_KINDS else self.entries).add(rel, entry)

    def add_link(self, key: tuple[int, int], rel: str) -> None:
        """A path of a regular file with several links (key: st_dev, st_ino)."""
        self._groups.setdefault(key, []).append(display_path(rel))

    def hardlinks(self) -> dict[str, Any]:
        total = 0
        groups = 0
        for names in self._groups.values():
            if len(names) > 1:
                groups += 1
                data = "\0".join(sorted(names)).encode("utf-8", "surrogateescape")
                total = (total + int.from_bytes(hashlib.sha256(data).digest(), "big")) % _MOD
        return {"groups": groups, "digest": f"{total:064x}"}

    def as_json(self) -> dict[str, Any]:
        return {
            **super().as_json(),
            "entries": self.entries.as_json(),
            "devices": self.devices.as_json(),
            "hardlinks": self.hardlinks(),
        }


class Names:
    """uid/gid -> name lookups, cached ("" when the id has no name)."""

    def __init__(self) -> None:
        self._users: dict[int, str] = {}
        self._groups: dict[int, str] = {}

    def user(self, uid: int) -> str:
        if uid not in self._users:
            try:
                self._users[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                self._users[uid] = ""
        return self._users[uid]

    def group(self, gid: int) -> str:
        if gid not in self._groups:
            try:
                self._groups[gid] = grp.getgrgid(gid).gr_name
            except KeyError:
                self._groups[gid] = ""
        return self._groups[gid]

    def owner(self, st: os.stat_result) -> str:
        return owner_text(st.st_uid, self.user(st.st_uid), st.st_gid, self.group(st.st_gid))


def _entry_of(path: str, st: os.stat_result, names: Names) -> Entry:
    kind = kind_of(st.st_mode)
    target = ""
    if kind == "symlink":
        target = os.readlink(path)
    elif kind in DEVICE_KINDS:
        target = f"{os.major(st.st_rdev)},{os.minor(st.st_rdev)}"
    xattrs, _ = file_xattrs.read(path)
    return Entry(kind, stat.S_IMODE(st.st_mode), names.owner(st), st.st_mtime_ns, target, xattrs)


def tree_digests(root: Path, limit: int = FILE_LIST_LIMIT) -> TreeDigests:
    """Hash every regular file under `root` and record every entry's metadata (symlinks are
    not followed, special files never opened). Blocking."""
    out = TreeDigests(limit)
    names = Names()
    base = str(root)
    out.add_entry(".", _entry_of(base, os.stat(base), names))
    stack = [("", base)]
    while stack:
        reldir, directory = stack.pop()
        with os.scandir(directory) as it:
            children = sorted(it, key=lambda e: e.name)
        for child in children:
            rel = reldir + child.name
            st = child.stat(follow_symlinks=False)
            if stat.S_ISREG(st.st_mode):
                out.add(rel, file_sha256(child.path))
                if st.st_nlink > 1:
                    out.add_link((st.st_dev, st.st_ino), rel)
            out.add_entry(rel, _entry_of(child.path, st, names))
            if stat.S_ISDIR(st.st_mode):
                stack.append((rel + "/", child.path))
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


# ---------------------------------------------------------------------------------------------
# Comparing a restored tree with what was archived

_ASPECT_WORDS = {
    "type": "type",
    "mode": "mode",
    "owner": "owner",
    "mtime": "mtime (ns)",
    "target": "symlink target / device numbers",
    "xattrs": "xattrs/ACLs",
    "xattrs_privileged": "trusted.*/security.* xattrs (capabilities, labels)",
}


@dataclass
class TreeComparison:
    """What differs (empty when nothing does), what was compared and what was not."""

    problems: list[str]
    compared: list[str]
    not_compared: list[str]


def _counts(types: Mapping[str, Any]) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in sorted(types.items())) or "none"


def _listed(paths: list[str], show: int) -> str:
    more = f" and {len(paths) - show} more" if len(paths) > show else ""
    return ", ".join(paths[:show]) + more


def _compare_entries(
    expected: Mapping[str, Any], actual: EntryList, skip: set[str], label: str, show: int
) -> list[str]:
    problems: list[str] = []
    if expected.get("count") != actual.count:
        problems.append(f"{actual.count} {label} restored, {expected.get('count')} archived")
    listed = expected.get("entries")
    types = expected.get("types") or {}
    if dict(types) != actual.types and not isinstance(listed, Mapping):
        # (with a list, the entries themselves are named below)
        problems.append(
            f"{label} by type: archived {_counts(types)}, restored {_counts(actual.types)}"
        )
    named = False
    if isinstance(listed, Mapping) and actual.entries is not None:
        got = actual.entries
        # Regular files missing or extra are named by the content comparison already.
        missing = sorted(p for p in listed if p not in got and not listed[p].startswith("file:"))
        extra = sorted(p for p in got if p not in listed and not got[p].startswith("file:"))
        named = any(p not in got for p in listed) or any(p not in listed for p in got)
        changed: list[str] = []
        for path in sorted(set(listed) & set(got)):
            want, have = str(listed[path]).split(":"), got[path].split(":")
            differing = [
                aspect
                for i, aspect in enumerate(ASPECTS)
                if aspect not in skip and (want[i : i + 1] != have[i : i + 1])
            ]
            if differing:
                changed.append(f"{path} ({', '.join(differing)})")
        for what, paths in ((f"{label} missing", missing), (f"unexpected {label}", extra)):
            if paths:
                problems.append(f"{what}: {_listed(paths, show)}")
        if changed:
            problems.append(f"metadata differs: {_listed(changed, show)}")
        named = named or bool(changed)
    sums = expected.get("aspects") or {}
    differing = [a for a in ASPECTS if a not in skip and sums.get(a) != actual.sums[a]]
    if differing and not named and expected.get("count") == actual.count:
        why = "" if isinstance(listed, Mapping) else " (too many to list which)"
        problems.append(f"{', '.join(differing)} differ for some {label}{why}")
    return problems


def compare_tree(
    expected: Mapping[str, Any], actual: TreeDigests, *, privileged: bool, show: int = 10
) -> TreeComparison:
    """Compare a restored tree with the statistics the dump recorded: file contents, then (if
    the backup has them) every entry's metadata, device nodes and hard links. A restore that
    does not run as root could not set owners, privileged xattrs or device nodes: those are
    then not compared, and the result says so."""
    problems = compare(dict(expected), actual, show)
    compared = [f"content (sha256) of {expected.get('count')} regular files"]
    not_compared: list[str] = []
    entries = expected.get("entries")
    if not isinstance(entries, Mapping):
        not_compared.append("entry metadata (the backup predates it)")
        return TreeComparison(problems, compared, not_compared)
    skip = set() if privileged else set(PRIVILEGED_ASPECTS)
    problems += _compare_entries(entries, actual.entries, skip, "entries", show)
    aspects = ", ".join(_ASPECT_WORDS[a] for a in ASPECTS if a not in skip)
    extra = []
    if entries.get("with_xattrs"):
        extra.append(
            f"{entries['with_xattrs']} with xattrs, {entries.get('with_acls', 0)} with ACLs"
        )
    compared.append(
        f"{aspects} of {entries.get('count')} entries ({_counts(entries.get('types') or {})}"
        + "".join(f"; {e}" for e in extra)
        + ")"
    )
    devices = expected.get("devices")
    if isinstance(devices, Mapping):
        wanted = int(devices.get("count") or 0)
        if privileged or not wanted:
            problems += _compare_entries(devices, actual.devices, set(), "device nodes", show)
            if wanted:
                compared.append(f"{wanted} device nodes (numbers and metadata)")
        else:
            not_compared.append(f"{wanted} device node(s) (only root can create them)")
    links = expected.get("hardlinks")
    if isinstance(links, Mapping):
        got_links = actual.hardlinks()
        if dict(links) != got_links:
            problems.append(
                f"hard links differ: {links.get('groups')} groups of paths sharing an inode "
                f"archived, {got_links['groups']} restored"
                + (" (different paths)" if links.get("groups") == got_links["groups"] else "")
            )
        elif got_links["groups"]:
            compared.append(f"{got_links['groups']} hard-link groups")
    if not privileged:
        not_compared.append(
            "owners and trusted.*/security.* xattrs (the restore does not run as root)"
        )
    return TreeComparison(problems, compared, not_compared)
