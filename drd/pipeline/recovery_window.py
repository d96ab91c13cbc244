"""The recovery window of every physical PostgreSQL source in a catalog, for `drd list`: from
the end of its oldest base backup (the earliest consistent point) to its newest archived WAL,
with the gaps that cut it.

Read from what `drd list` already has (the catalog, verified with the key) plus one listing of
each source's WAL archive per region; nothing is decrypted but the manifests. Without the key
a base backup's WAL range is sealed, so the window is unknown and the listing says so.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from drd.layout import SourceRef
from drd.pipeline.pitr import Window, Windows, base_backups, format_when
from drd.repository.catalog import Catalog
from drd.repository.wal import follow, list_archive
from drd.storage.base import Storage
from drd.strategies.postgres_physical import KIND


def physical_sources(catalog: Catalog) -> list[SourceRef]:
    refs = {e.ref for e in catalog.entries if e.public is not None and e.public.kind == KIND}
    return sorted(refs, key=str)


async def catalog_windows(catalog: Catalog, regions: Sequence[Storage]) -> list[Windows]:
    """Every physical source's windows (module docstring), in source order."""
    refs = physical_sources(catalog)
    archives = await asyncio.gather(*(list_archive(regions, ref) for ref in refs))
    out = []
    for ref, archive in zip(refs, archives, strict=True):
        bases, unusable = base_backups(catalog.for_source(ref))
        windows = [
            Window(b, follow(archive, b.system_id, b.end_segment, b.segment_size)) for b in bases
        ]
        out.append(Windows(ref, windows, archive, unusable, dict(archive.region_errors)))
    return out


def window_lines(found: Sequence[Windows]) -> list[str]:
    """One line per source; the base backups' own windows below it when a gap cuts it."""
    lines = []
    for w in found:
        head = f"recovery window {w.ref}: "
        if w.start is None or w.end is None:
            why = "; ".join(sorted(set(w.unusable.values()))) or "no base backup"
            lines.append(head + f"none ({why})")
            continue
        gaps = w.gaps()
        text = f"{format_when(w.start)} .. {format_when(w.end)}"
        if gaps:
            text += f", GAP{'S' if len(gaps) > 1 else ''}: WAL {', '.join(gaps)} missing everywhere"
        lines.append(head + text)
        if gaps:
            lines += [f"  {one.describe()}" for one in w.windows]
        for backup_id, why in sorted(w.unusable.items()):
            lines.append(f"  base backup {backup_id} not usable: {why}")
    return lines


def window_json(w: Windows) -> dict[str, Any]:
    return {
        "plan": w.ref.plan,
        "source": w.ref.source,
        "start": w.start.isoformat() if w.start else None,
        "end": w.end.isoformat() if w.end else None,
        "gaps": w.gaps(),
        "windows": [one.as_json() for one in w.windows],
        "unusable": dict(w.unusable),
    }
