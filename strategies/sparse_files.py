"""Sparse files: which parts of a file hold data (SEEK_DATA/SEEK_HOLE), and the GNU sparse
format 1.0 that carries only those parts in a PAX tar stream.

A sparse member (as GNU tar writes it, so GNU tar, bsdtar and Python's tarfile all read it):
- PAX records `GNU.sparse.major=1`, `GNU.sparse.minor=0`, `GNU.sparse.name=<the real path>`,
  `GNU.sparse.realsize=<the file's size>`;
- the ustar name is a placeholder (`GNUSparseFile.0/<name>`), so that a reader that does not
  know the format extracts a harmless file instead of a wrong one under the real name;
- the member's data starts with the map in decimal text (the number of regions, then offset
  and length of each, one number a line, NUL-padded to a 512-byte block), followed by the
  regions' bytes back to back. A file ending in a hole gets a last region (size, 0), as GNU
  tar writes it.

A file's map is held in memory while it is archived (the tar header needs the member's size up
front); a file with more than MAX_REGIONS data regions keeps the first MAX_REGIONS - 1 and
stores everything from there on as one region, holes included (as zeros): memory stays bounded
and the content is the same.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping

BLOCK = 512
MAX_REGIONS = 65536

#: (offset, length) of each data region
Regions = list[tuple[int, int]]


def data_regions(fd: int, size: int, limit: int = MAX_REGIONS) -> Regions | None:
    """The data regions of an open file of `size` bytes, or None if it has no holes (or the
    filesystem cannot tell: then it is all data). Moves the file offset (read with pread)."""
    if size <= 0:
        return None
    regions: Regions = []
    pos = 0
    try:
        if os.lseek(fd, 0, os.SEEK_HOLE) >= size:
            return None
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # nothing but a hole from pos to the end
                    break
                raise
            if start >= size:
                break
            if len(regions) >= limit - 1:
                regions.append((start, size - start))
                break
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            regions.append((start, end - start))
            pos = end
    except OSError:
        return None
    if not regions or regions[-1][0] + regions[-1][1] < size:
        regions.append((size, 0))
    return regions


def map_block(regions: Regions) -> bytes:
    """The map that precedes a sparse member's data, padded to whole blocks."""
    text = f"{len(regions)}\n" + "".join(f"{off}\n{length}\n" for off, length in regions)
    raw = text.encode("ascii")
    return raw + bytes(-len(raw) % BLOCK)


def stored_size(regions: Regions) -> int:
    """The bytes of a sparse member's data in the stream: the map and every region."""
    return len(map_block(regions)) + sum(length for _, length in regions)


def pax_records(name: str, size: int) -> dict[str, str]:
    return {
        "GNU.sparse.major": "1",
        "GNU.sparse.minor": "0",
        "GNU.sparse.name": name,
        "GNU.sparse.realsize": str(size),
    }


def placeholder_name(name: str) -> str:
    """The ustar name of a sparse member: ASCII, at most 100 bytes, so that tarfile writes no
    `path` record (which would override GNU.sparse.name when read back)."""
    base = name.rsplit("/", 1)[-1].encode("ascii", "replace").decode("ascii").replace("?", "_")
    return f"GNUSparseFile.0/{base}"[:100]


def real_size(pax_headers: Mapping[str, str], default: int) -> int:
    """The file size of a sparse member (tarfile's `size` may be the stored size when a
    `size` record follows the sparse records)."""
    for key in ("GNU.sparse.realsize", "GNU.sparse.size"):
        if key in pax_headers:
            return int(pax_headers[key])
    return default
