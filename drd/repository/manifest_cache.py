"""Manifests already read, so that a catalog build reads only the new ones.

Building the catalog lists every region (a page per thousand objects) and used to read every
manifest copy as well: one request per backup and region, every time (`drd list` of 5,000
backups on GCS: 49 s). Manifests are written once and never changed (drd writes them
create-only), so a copy whose listing shows the same key, size and CRC32C as one read before
in the same region is that copy: its bytes are taken from here, and verified with the keyring
as if just read (nothing is trusted that the key did not authenticate). A region's copy is
never taken for another region's: each is read once itself.

What the listing's identity cannot tell: a hostile region may replace a manifest with forged
bytes crafted to the same size and CRC32C. drd never uses those bytes (the catalog holds the
verified ones), so restores are not affected; the scrub (drd.retention.scrub, `drd check
--read-data`) builds its catalog without a cache and reads every copy, which finds it.

The cache lives in memory for the process (the daemon builds catalogs all day), and a command
that names a state directory also keeps it there (`<state_dir>/cache/manifests.json`, 0600,
written atomically; manifests are sealed, their public half holds no secret), so the next
`drd list` starts warm. Entries of keys that a full listing of their prefix no longer shows are
dropped, so the cache never outgrows what the repository holds.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path

from drd.storage.base import ObjectInfo

log = logging.getLogger(__name__)

CACHE_FILE = "cache/manifests.json"
_FORMAT = 2  # 1 was keyed by key alone
#: a manifest is a few KiB; a cache entry far larger than one is not a manifest worth keeping
_MAX_RAW = 1 << 20


class ManifestCache:
    """(region, key) -> (size, checksum, bytes) of manifests read before (module docstring).

    By region: a copy is only ever taken for the one read in that very region, so a copy
    another region holds (a region added later, a copy repair wrote) is read once itself."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._entries: dict[tuple[str, str], tuple[int, str, bytes]] = {}
        self._dirty = False
        self._saving = threading.Lock()
        #: the file at `path` is still to be read (keep_in defers it to the first build)
        self._unread = False
        self.hits = 0
        self.misses = 0

    # -- use ------------------------------------------------------------------------------

    def lookup(self, region: str, info: ObjectInfo) -> bytes | None:
        """The bytes of the manifest copy `info` lists in `region`, if they were read before."""
        found = self._entries.get((region, info.key))
        if found is None or not info.checksum or found[:2] != (info.size, info.checksum):
            self.misses += 1
            return None
        self.hits += 1
        return found[2]

    def store(self, region: str, info: ObjectInfo, raw: bytes) -> None:
        """Remember a copy just read in `region` (and verified by the caller)."""
        if not info.checksum or info.size != len(raw) or len(raw) > _MAX_RAW:
            return  # no identity to check it by, or not what the listing said
        entry = (info.size, info.checksum, raw)
        if self._entries.get((region, info.key)) != entry:
            self._entries[(region, info.key)] = entry
            self._dirty = True

    def keep_only(self, prefix: str, listed: Iterable[tuple[str, str]]) -> None:
        """Forget manifests under `prefix` that a complete listing (of `(region, key)`) no
        longer shows."""
        keep = set(listed)
        gone = [k for k in self._entries if k[1].startswith(prefix) and k not in keep]
        for key in gone:
            del self._entries[key]
        self._dirty |= bool(gone)

    def clear(self) -> None:
        """Forget everything (the file, if any, is rewritten at the next save)."""
        self._dirty |= bool(self._entries)
        self._entries.clear()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    # -- persistence ----------------------------------------------------------------------

    @classmethod
    def load(cls, state_dir: Path) -> ManifestCache:
        """The cache kept in `state_dir`; empty when there is none or it cannot be read (a
        cache is never a reason to fail)."""
        return cls.from_file(state_dir / CACHE_FILE)

    @classmethod
    def from_file(cls, path: Path) -> ManifestCache:
        cache = cls(path)
        try:
            document = json.loads(path.read_bytes())
            if document.get("format") != _FORMAT:
                return cache
            for region, key, size, checksum, raw in document["manifests"]:
                entry = (int(size), str(checksum), base64.b64decode(raw))
                cache._entries[(str(region), str(key))] = entry
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("manifest cache %s ignored (it is rebuilt): %s", path, exc)
            cache._entries.clear()
        return cache

    def read_file(self) -> None:
        """Merge the file at `path` in, once, if keep_in deferred it (blocking: in a thread)."""
        if not self._unread or self.path is None:
            return
        self._unread = False
        loaded = ManifestCache.from_file(self.path)
        for where, entry in loaded._entries.items():
            self._entries.setdefault(where, entry)

    def snapshot(self) -> bytes | None:
        """What save() writes, taken now (in the event loop, where the cache changes); None
        when there is nothing new to write."""
        if self.path is None or not self._dirty:
            return None
        document = {
            "format": _FORMAT,
            "manifests": [
                [region, key, size, checksum, base64.b64encode(raw).decode()]
                for (region, key), (size, checksum, raw) in sorted(self._entries.items())
            ],
        }
        self._dirty = False  # set again by any change after this snapshot
        return json.dumps(document, separators=(",", ":")).encode()

    def write(self, data: bytes) -> None:
        """Write a snapshot to the file (blocking: in a thread), atomically, one writer at a
        time in this process and each through its own temporary file; a failure only warns."""
        assert self.path is not None
        with self._saving:
            temp: Path | None = None
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
                temp = Path(name)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(temp, self.path)
            except OSError as exc:
                log.warning("manifest cache %s not saved: %s", self.path, exc)
                self._dirty = True
                if temp is not None:
                    with contextlib.suppress(OSError):
                        temp.unlink()

    def save(self) -> None:
        """Snapshot and write (blocking)."""
        data = self.snapshot()
        if data is not None:
            self.write(data)


#: the process's own cache, shared by every catalog build that is not given another
PROCESS_CACHE = ManifestCache()


def keep_in(state_dir: Path) -> None:
    """From now on the process's cache is also kept in `state_dir`: read at the first catalog
    build (a command that builds none, `drd validate`, reads nothing), merged with what the
    process holds, and saved by each build that read something new."""
    PROCESS_CACHE.path = state_dir / CACHE_FILE
    PROCESS_CACHE._unread = True
