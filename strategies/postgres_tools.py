"""Finding pg_dump, pg_restore and friends of the right major version (past Debian's
pg_wrapper), and reading their versions."""

from __future__ import annotations

import asyncio
import glob
import os
import re
import shutil
from dataclasses import dataclass


@dataclass(frozen=True)
class _Tool:
    path: str
    version: str
    version_tuple: tuple[int, ...]

    @property
    def major(self) -> int:
        return self.version_tuple[0]


_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+(?:\.\d+)*)")


def parse_version(text: str) -> tuple[str, tuple[int, ...]] | None:
    """('15.20', (15, 20)) from `pg_dump --version` output."""
    m = _VERSION_RE.search(text)
    if m is None:
        return None
    return m.group(1), tuple(int(p) for p in m.group(1).split("."))


async def _probe(path: str) -> _Tool | None:
    try:
        proc = await asyncio.create_subprocess_exec(
            path,
            "--version",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError:
        return None
    out, _ = await proc.communicate()
    parsed = parse_version(out.decode("utf-8", "replace"))
    if proc.returncode != 0 or parsed is None:
        return None
    return _Tool(path, parsed[0], parsed[1])


_PG_WRAPPER = "pg_wrapper"


def _candidates(name: str, bin_dir: str | None) -> list[str]:
    if bin_dir is not None:
        candidates = [os.path.join(bin_dir, name)]
    else:
        candidates = [
            *sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")),
            *sorted(glob.glob(f"/usr/pgsql-*/bin/{name}")),
            f"/usr/local/pgsql/bin/{name}",
        ]
        on_path = shutil.which(name)
        if on_path is not None:
            candidates.append(on_path)
    seen: set[str] = set()
    unique: list[str] = []
    for c in candidates:
        real = os.path.realpath(c)
        if os.access(c, os.X_OK) and real not in seen:
            seen.add(real)
            unique.append(c)
    # Debian's /usr/bin/pg_* is pg_wrapper, a Perl script that runs one of the
    # /usr/lib/postgresql/*/bin binaries listed above anyway: probing it costs a Perl start
    # (~0.1-0.5 s, on every backup and restore) and finds nothing new.
    direct = [c for c in unique if os.path.basename(os.path.realpath(c)) != _PG_WRAPPER]
    return direct or unique


async def find_tool(name: str, bin_dir: str | None = None) -> _Tool | None:
    """The newest `name` (pg_dump, pg_restore) on this machine, or the one in `bin_dir`."""
    unique = _candidates(name, bin_dir)
    tools = [t for t in await asyncio.gather(*(_probe(c) for c in unique)) if t is not None]
    if not tools:
        return None
    # The newest; on a tie the earlier candidate (the versioned directory) wins.
    return max(tools, key=lambda t: t.version_tuple)


# ---------------------------------------------------------------------------------------------
# Facts about the source, recorded at dump time
