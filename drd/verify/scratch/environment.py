"""The scratch environment a restore test restores into, whatever its kind.

`open_scratch` turns a plan's ScratchSpec into a ScratchEnv (drd.verify.scratch.base): what
Strategy.restore() gets as its target (and options), where the checks find the restored copy,
and the environment variables a command check gets. The scratch kind's own module sets it up
(base.OPENERS). An ephemeral PostgreSQL server is drd's own: the roles the backup refers to are
created there (NOLOGIN, no privileges beyond the dump's) and the copy keeps its owners and
grants, policies and user mappings, as a DR restore would. On a `postgres-server` (shared by
every test, the roles cluster-wide) databases are restored without owners and grants
(`owners="drop"`); roles that policies or user mappings name must exist there. Checks read as
the server's superuser.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from drd.restore_tests.spec import ScratchSpec
from drd.verify.scratch.base import ScratchEnv, ScratchRequest, opener


@contextlib.asynccontextmanager
async def open_scratch(
    spec: ScratchSpec,
    source_kind: str,
    metadata: Mapping[str, Any],
    *,
    state_dir: Path,
    label: str,
    source: Any = None,
) -> AsyncIterator[ScratchEnv]:
    """The scratch environment for restoring a backup of `source_kind`; destroyed on exit.
    `source` (its SourceOptions) is needed by kinds that act with its credentials (cloudsql)."""
    request = ScratchRequest(source_kind, metadata, state_dir, label, source)
    async with opener(spec.kind)(spec, request) as env:
        yield env
