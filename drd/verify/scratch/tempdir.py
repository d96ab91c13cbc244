"""A temporary directory for restore tests of files and sqlite sources.

`<dir>/drd-scratch-<id>/` (mode 0700), registered before it is created and removed with
everything in it afterwards. The restore's own staging copy lands inside it too, so one
removal takes all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from drd.fsutil import remove_tree
from drd.restore_tests.spec import ScratchSpec
from drd.strategies import get_strategy
from drd.verify.scratch.base import ScratchEnv, ScratchRequest
from drd.verify.scratch.registry import DIR_PREFIX, new_id, register
from drd.verify.scratch.teardown import run_to_completion

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def scratch_dir(
    state_dir: Path, parent: Path | None, *, label: str, owner: str | None = None
) -> AsyncIterator[Path]:
    """A registered scratch directory (0700), handed to `owner` (an OS user) if given."""
    base = parent or Path(tempfile.gettempdir())
    resource_id = new_id()
    path = base / f"{DIR_PREFIX}{resource_id}"
    registration = register(state_dir, resource_id, "tempdir", path=str(path), label=label)
    try:
        os.mkdir(path, 0o700)
        if owner is not None:
            account = pwd.getpwnam(owner)
            os.chown(path, account.pw_uid, account.pw_gid)
        yield path
    finally:
        try:
            await run_to_completion(destroy(registration.record, ()))
        except Exception as exc:
            log.error("could not remove %s (removed at the next start): %s", path, exc)
            registration.abandon()
        else:
            registration.release()


@contextlib.asynccontextmanager
async def open_env(spec: ScratchSpec, request: ScratchRequest) -> AsyncIterator[ScratchEnv]:
    """The tempdir scratch kind: the copy restored into a scratch directory, under the name its
    kind's strategy gives it (Strategy.restored_name)."""
    strategy = get_strategy(request.source_kind)
    async with scratch_dir(
        request.state_dir, spec.dir, label=request.label, owner=strategy.scratch_owner()
    ) as directory:
        restored = directory / strategy.restored_name
        yield ScratchEnv(
            kind=spec.kind,
            target=str(restored),
            restore_options={},
            description=f"scratch directory {directory}",
            resource=str(directory),
            path=restored,
        )


async def destroy(record: Mapping[str, Any], _known_dsns: Sequence[str] = ()) -> None:
    path = Path(str(record["path"]))
    if not path.name.startswith(DIR_PREFIX):
        raise ValueError(f"refusing to remove {path}: not a drd scratch directory")
    await asyncio.to_thread(remove_tree, path)
