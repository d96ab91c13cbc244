"""A scratch prefix in a scratch GCS bucket, for restore tests of gcs-bucket sources.

Each test restores under its own new prefix `<prefix>drd-scratch-<id>/` in the plan's scratch
bucket (restore_test.scratch `{kind: gcs-scratch-bucket, bucket, prefix, project, endpoint,
credentials}`), so the copy is made by the same uploads a real restore makes and read back as
GCS serves it. The prefix is registered before the first object is written and every object
under it is deleted afterwards, however the test ends; a test killed outright leaves a record
that the next start sweeps (listing the prefix and deleting what is there).

The record names the bucket, the prefix, the endpoint and where the credentials come from
(`env:VAR`, `credential:NAME`), never the credentials themselves. drd.config.guard refuses a
scratch prefix that overlaps the source's own objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from drd.restore_tests.spec import ScratchSpec
from drd.verify.scratch.base import ScratchEnv, ScratchRequest
from drd.verify.scratch.registry import DIR_PREFIX, new_id, register
from drd.verify.scratch.teardown import run_to_completion

log = logging.getLogger(__name__)


def scratch_prefix(spec: ScratchSpec, resource_id: str) -> str:
    return f"{spec.gcs_prefix}{DIR_PREFIX}{resource_id}/"


@contextlib.asynccontextmanager
async def open_env(spec: ScratchSpec, request: ScratchRequest) -> AsyncIterator[ScratchEnv]:
    resource_id = new_id()
    prefix = scratch_prefix(spec, resource_id)
    target = spec.gcs_target(prefix)
    shown = f"gs://{spec.bucket}/{prefix}"
    registration = register(
        request.state_dir, resource_id, "gcs-scratch-bucket", target=target, label=request.label
    )
    try:
        yield ScratchEnv(
            kind=spec.kind,
            target=target,
            restore_options={},
            description=f"scratch prefix {shown}",
            resource=shown,
            env={"DRD_RESTORED_GCS_PREFIX": shown},
        )
    finally:
        try:
            removed = await run_to_completion(
                asyncio.to_thread(_delete_prefix, target, resource_id)
            )
        except Exception as exc:
            log.error("could not empty %s (retried at the next start): %s", shown, exc)
            registration.abandon()
        else:
            log.info("scratch prefix %s: %d object(s) deleted", shown, removed)
            registration.release()


def _delete_prefix(target: str, resource_id: str) -> int:
    """Delete every object under the target's prefix (blocking); how many it deleted. Only a
    prefix that ends in this resource's own `drd-scratch-<id>/` is ever emptied."""
    from google.api_core import exceptions as api_exceptions

    from drd.strategies.gcs_bucket import open_target

    bucket, prefix, shown = open_target(target)
    try:
        if not resource_id or not f"/{prefix}".endswith(f"/{DIR_PREFIX}{resource_id}/"):
            raise ValueError(f"refusing to empty {shown}: not drd scratch prefix {resource_id}")
        removed = 0
        for page in bucket.pages(prefix):
            for blob in page:
                try:
                    blob.delete(
                        if_generation_match=blob.generation,
                        timeout=bucket.timeout,
                        retry=bucket.retry,
                    )
                except (api_exceptions.NotFound, api_exceptions.PreconditionFailed):
                    continue  # gone already, or replaced since the listing: not counted
                removed += 1
    finally:
        bucket.close()
    return removed


async def destroy(record: Mapping[str, Any], _known_dsns: Sequence[str] = ()) -> None:
    await asyncio.to_thread(_delete_prefix, str(record["target"]), str(record.get("id", "")))
