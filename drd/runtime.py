"""Assembling what commands and the daemon run with: the keyring, the wrapped regions, and the
daemon loops' `Services`.

This is the one place where storage wrappers are composed, so every region behaves the same
whichever command opened it. There is one wrapper, for metrics (drd.storage.instrumented).
Retries are not a wrapper: the GCS backend retries its own transient failures within its
`retry_deadline`, and the daemon retries a backup job that failed transiently, whole
(drd.daemon.service); commands do not retry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

from drd import crypto
from drd.clock import Clock, utcnow
from drd.config.models import Config
from drd.errors import UsageError
from drd.keys import load_keyring
from drd.metrics import Metrics
from drd.progress import ProgressBoard
from drd.storage.base import Storage
from drd.storage.health import RegionHealth
from drd.storage.instrumented import ObservedStorage
from drd.storage.regions import RegionSpec, open_region, parse_storage_arg


@dataclass(frozen=True, kw_only=True)
class Services:
    """What the daemon's loops run with, assembled once (drd.daemon.service): the config, the
    opened regions by name, the keyring, the metrics, the clock, and the board where running
    jobs show their progress (drd.progress)."""

    cfg: Config
    regions: Mapping[str, Storage]
    keyring: crypto.Keyring
    metrics: Metrics = field(default_factory=Metrics)
    clock: Clock = utcnow
    progress: ProgressBoard = field(default_factory=ProgressBoard)

    @property
    def state_dir(self) -> Path:
        return self.cfg.state_dir

    @property
    def base_dir(self) -> Path:
        """The config file's directory, where restore-test commands run."""
        return self.cfg.path.parent


def keyring_for(cfg: Config | None, keys: str | None) -> crypto.Keyring:
    """`--keys SOURCE[:NAME]` wins over the config's `keys:`; the fallback is env DRD_KEYS."""
    if keys:
        source, _, name = keys.partition(":")
        return load_keyring(source, name or None)
    if cfg is not None:
        return load_keyring(cfg.keys.source, cfg.keys.name)
    return load_keyring("env", "DRD_KEYS")


def region_specs(cfg: Config | None, storage_args: Sequence[str]) -> list[RegionSpec]:
    if storage_args:
        specs = [parse_storage_arg(a) for a in storage_args]
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise UsageError("--storage: region names collide; name them NAME=URL")
        return specs
    if cfg is None:
        raise UsageError("no regions: give --config or --storage")
    return [r.spec() for r in cfg.regions]


async def open_regions(
    stack: AsyncExitStack,
    cfg: Config | None,
    storage_args: Sequence[str],
    *,
    metrics: Metrics | None = None,
    health: RegionHealth | None = None,
) -> list[Storage]:
    """The regions, each wrapped for metrics and, with `health`, for drd_region_up."""
    base = cfg.path.parent if cfg is not None else Path.cwd()
    observe = None
    if metrics is not None:
        counter = metrics.storage_operations

        def observe(region: str, op: str, result: str) -> None:
            counter.labels(region, op, result).inc()

    regions: list[Storage] = []
    for spec in region_specs(cfg, storage_args):
        storage = ObservedStorage(open_region(spec, base), observe, health)
        stack.push_async_callback(storage.close)
        regions.append(storage)
    return regions
