"""Removing leftovers of interrupted backups (a kill -9, a crash, a cancelled upload).

Only called while holding the source's lock: then no backup of that source is in flight on
this host, so every backup id without a manifest in ANY region is dead work, whatever its age.
Data of a backup committed in some region is never a leftover, even where its own manifest is
missing (a kill -9 between the manifest writes, a lost object): repair gives that region its
manifest back. While a region cannot be listed, nothing is removed: what it holds is unknown.
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
    if catalog.region_errors:
        log.warning(
            "%s: leftovers not removed: region(s) %s cannot be listed, and may hold the "
            "manifest of what looks like a leftover elsewhere",
            ref,
            ", ".join(sorted(catalog.region_errors)),
        )
        return 0
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
