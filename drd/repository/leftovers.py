"""Removing leftovers of interrupted backups (a kill -9, a crash, a cancelled upload).

Only called while holding the source's lock: then no backup of that source is in flight on
this host, so every backup id without a manifest in a region is dead work, whatever its age.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from drd.layout import SourceRef
from drd.repository.catalog import build_catalog
from drd.storage.base import Storage

log = logging.getLogger(__name__)


async def remove_orphans(ref: SourceRef, regions: Sequence[Storage]) -> int:
    """Delete objects of `ref` that belong to no committed manifest; return how many."""
    catalog = await build_catalog(regions, None, ref.prefix)
    by_name = {r.name: r for r in regions}
    removed = 0
    for orphan in catalog.orphans:
        for key in orphan.keys:
            try:
                await by_name[orphan.region].delete(key)
                removed += 1
            except Exception as exc:
                log.warning("region %s: could not remove leftover %s: %s", orphan.region, key, exc)
        log.info(
            "region %s: removed leftovers of interrupted backup %s@%s",
            orphan.region,
            ref,
            orphan.backup_id,
        )
    for storage in regions:
        remove_partials = getattr(storage, "remove_partials", None)
        if remove_partials is not None:
            removed += await remove_partials(ref.prefix, older_than=0.0)
    return removed
