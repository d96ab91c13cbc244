"""Reading a restored copy back, in the shape of the dump's restore_metadata()["statistics"],
so a test can compare what a restore wrote with what the dump recorded.

drd's restores check as they go (the gcs-bucket restore compares the digests of what it
uploads with the dump's list; the MySQL restore compares row counts and schema in the staging
copy and again after the hand-over); these readers are the tests' own look at the finished
target.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from typing import Any

from drd.errors import RestoreError
from drd.strategies import gcs_bucket, mysql_client, mysql_stats, mysql_tools
from drd.strategies.file_digests import FILE_LIST_LIMIT, DigestList


async def restored_bucket_statistics(target: str) -> dict[str, Any]:
    """The object list of a restored gs:// prefix, read back from GCS (compare with
    drd.strategies.file_digests.compare)."""
    bucket, prefix, _ = gcs_bucket.open_target(target)
    digests = DigestList(FILE_LIST_LIMIT)
    total = 0
    try:
        pages = await asyncio.to_thread(bucket.pages, prefix)
        while (page := await asyncio.to_thread(gcs_bucket._next_page, pages)) is not None:
            for blob in page:
                # Before any download: a download updates the blob from the response's
                # headers (gcp-storage-emulator drops Content-Encoding from a ranged one).
                props = gcs_bucket._properties(blob)
                data_sha = hashlib.sha256()
                position, size = 0, int(blob.size or 0)
                while position < size:
                    stop = min(position + (8 << 20), size)
                    data = await asyncio.to_thread(
                        blob.download_as_bytes,
                        start=position,
                        end=stop - 1,
                        raw_download=True,
                        checksum=None,
                        timeout=bucket.timeout,
                        retry=bucket.retry,
                    )
                    data_sha.update(data)
                    position = stop
                digests.add(
                    str(blob.name)[len(prefix) :],
                    gcs_bucket.object_digest(data_sha.hexdigest(), props),
                )
                total += size
    finally:
        await asyncio.to_thread(bucket.close)
    return {"objects": digests.as_json(), "bytes": total}


async def restored_mysql_statistics(
    target: str, queries: Mapping[str, str], *, client_bin_dir: str | None = None
) -> dict[str, Any]:
    """A restored MySQL/MariaDB database's row counts, schema and captured query results."""
    tool = await mysql_tools.find_tool("client", client_bin_dir)
    if tool is None:
        raise RestoreError("no mariadb/mysql client found")
    server, dbname = mysql_client.parse_target(target)
    client = mysql_client.Client(server, tool.path)
    stats = await mysql_stats.collect_statistics(client, dbname)
    return {
        "row_counts": stats.row_counts,
        "schema": stats.schema,
        "captured": await mysql_stats.capture_queries(client, dbname, queries),
    }
