"""`python -m bench.catalog`: the catalog at scale, on fake-gcs-server (issue 19, point 3).

N small backups of one source are sealed in memory with drd's own pipeline (fast: the
backup path is bench/cli's business), copied object by object into two buckets of one
fake-gcs-server (two regions), and then, each timed as a real `drd` process:

- `list cold`:   `drd list` with an empty state directory (every manifest read once);
- `list warm`:   `drd list` again (the manifest cache: listing pages only);
- `list +10`:    after 10 new backups, `drd list` (listing pages plus the 10 new manifests);
- `prune P`:     `drd prune` destroying the P oldest backups in both regions.

Beside them, the reference rows: `listing only`, the same two listings with the google client
alone (the floor of any catalog that must see what the regions hold: the list rows' ratios are
against it), and `deletes only`, as many objects as the prune deletes, deleted with the google
client alone 16 at a time (the prune's ratio is against it).
Results go to bench/CATALOG.md (and --json to stdout).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from bench.services import FakeGcs

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
PLAN, SOURCE = "p", "s"
BUCKETS = ("region-a", "region-b")


def _client(endpoint: str) -> Any:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(
        project="bench",
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": endpoint},
    )


async def _seal(count: int, first: datetime, key: str) -> list[tuple[str, bytes]]:
    """`count` backups, one minute apart from `first`, as (key, bytes) of their objects."""
    from drd import crypto
    from drd.layout import SourceRef
    from drd.pipeline.backup import run_backup
    from drd.storage.memory import MemoryStorage
    from tests.support.blob_strategy import BlobOptions, BlobStrategy

    keyring = crypto.Keyring.parse(key, "bench")
    memory = MemoryStorage("a", chunk_size=1 << 20)
    ref = SourceRef(PLAN, SOURCE)
    for i in range(count):
        options = BlobOptions(name=SOURCE, kind="blob", size=2000, seed=i, chunk=2000)
        await run_backup(
            ref,
            BlobStrategy(options),
            [memory],
            keyring,
            min_copies=1,
            segment_size=1 << 20,
            clock=functools.partial(lambda at: at, first + timedelta(minutes=i)),
        )
    return [(info.key, await memory.get(info.key)) for info in await memory.list("")]


def _upload(endpoint: str, objects: Sequence[tuple[str, bytes]]) -> None:
    client = _client(endpoint)

    def put(job: tuple[str, tuple[str, bytes]]) -> None:
        bucket, (key, data) = job
        client.bucket(bucket).blob(f"drd/{key}").upload_from_string(data)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(put, [(b, o) for b in BUCKETS for o in objects]))


def _write_config(root: Path, endpoint: str) -> Path:
    (root / "plans").mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    plan = {
        "name": PLAN,
        "owner": "sre@example.com",
        "reviewed_on": datetime.now(UTC).date().isoformat(),
        "targets": {"rpo": "6h", "rto": "1h"},
        "schedule": {"every": "4h"},
        "storage": {"regions": ["a", "b"], "min_copies": 2},
        "retention": {"max_age": "14d"},
        "sources": [{"name": SOURCE, "kind": "files", "path": str(root / "data")}],
    }
    (root / "plans" / "p.yaml").write_text(yaml.safe_dump(plan))
    regions = [
        {
            "name": name,
            "url": f"gs://{bucket}/drd",
            "project": "bench",
            "endpoint": endpoint,
            "credentials": {"source": "anonymous"},
        }
        for name, bucket in zip(("a", "b"), BUCKETS, strict=True)
    ]
    config = {
        "state_dir": str(root / "state"),
        "plans": ["plans/*.yaml"],
        "keys": {"source": "env", "name": "DRD_KEYS"},
        "regions": regions,
    }
    path = root / "drd.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _timed_drd(config: Path, key: str, *args: str) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRD_")}
    env.update(DRD_KEYS=key, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "drd.cli.main", "--config", str(config), *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"drd {' '.join(args)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return elapsed


def _listing_only(endpoint: str) -> float:
    client = _client(endpoint)
    started = time.monotonic()
    for bucket in BUCKETS:
        sum(1 for _ in client.list_blobs(bucket, prefix="drd/"))
    return time.monotonic() - started


def _deletes_only(endpoint: str, count: int) -> float:
    """The prune's floor: `count` objects deleted with the google client alone, 16 at a time
    (what a prune deletes: a manifest and a data object per backup and region)."""
    client = _client(endpoint)
    client.create_bucket("floor-deletes")
    names = [f"o/{i:06d}" for i in range(count)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(
            pool.map(
                lambda n: client.bucket("floor-deletes").blob(n).upload_from_string(b"x"), names
            )
        )
        started = time.monotonic()
        list(pool.map(lambda n: client.bucket("floor-deletes").blob(n).delete(), names))
    return time.monotonic() - started


def run(backups: int, prune: int, work: Path) -> dict[str, Any]:
    from drd import crypto

    key = crypto.generate_key()
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    # The `prune` oldest are past the 14-day max_age, the rest well inside it.
    old_start = now - timedelta(days=20)
    young = backups - prune
    young_start = now - timedelta(days=13)
    server = FakeGcs("BENCH", work / "fake-gcs.log").start()
    try:
        for bucket in BUCKETS:
            server.create_bucket(bucket)
        objects = asyncio.run(_seal(prune, old_start, key))
        objects += asyncio.run(_seal(young, young_start, key))
        started = time.monotonic()
        _upload(server.endpoint, objects)
        upload = time.monotonic() - started
        config = _write_config(work, server.endpoint)
        rows: dict[str, float] = {"listing only": _listing_only(server.endpoint)}
        rows["list cold"] = _timed_drd(config, key, "list", f"{PLAN}/{SOURCE}", "--json")
        rows["list warm"] = _timed_drd(config, key, "list", f"{PLAN}/{SOURCE}", "--json")
        newer = asyncio.run(_seal(10, young_start + timedelta(minutes=young + 1), key))
        _upload(server.endpoint, newer)
        rows["list +10"] = _timed_drd(config, key, "list", f"{PLAN}/{SOURCE}", "--json")
        deletes = 2 * prune * len(BUCKETS)
        rows[f"deletes only ({deletes} objects)"] = _deletes_only(server.endpoint, deletes)
        rows[f"prune {prune}"] = _timed_drd(config, key, "prune", PLAN)
        left = len([b for b in _client(server.endpoint).list_blobs(BUCKETS[0], prefix="drd/")])
    finally:
        server.stop()
    return {
        "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "backups": backups,
        "pruned": prune,
        "objects_per_region": len(objects) + len(newer),
        "objects_left_per_region": left,
        "upload_seconds": round(upload, 2),
        "seconds": {k: round(v, 3) for k, v in rows.items()},
    }


def markdown(result: dict[str, Any]) -> str:
    listing = result["seconds"]["listing only"]
    deletes = next(v for k, v in result["seconds"].items() if k.startswith("deletes only"))
    lines = [
        "# drd catalog at scale",
        "",
        "Generated by `python -m bench.catalog`; see its docstring for the method. Do not edit "
        "by hand.",
        "",
        f"- date: {result.get('date') or f'{datetime.now(UTC):%Y-%m-%d %H:%M} UTC'}",
        f"- {result['backups']} backups of one source in two fake-gcs-server regions "
        f"({result['objects_per_region']} objects per region); one process each",
        "",
        "| run | wall s | x its floor |",
        "|---|---|---|",
    ]
    for name, seconds in result["seconds"].items():
        floor = deletes if name.startswith(("prune", "deletes")) else listing
        lines.append(f"| {name} | {seconds:.2f} | {seconds / floor:.2f}x |")
    seconds = result["seconds"]
    prune = next((v for k, v in seconds.items() if k.startswith("prune")), None)
    lines += [
        "",
        "## Targets (issue 19)",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        f"| `drd list` of {result['backups']} backups after the first run <= 3 s | "
        f"{seconds['list warm']:.2f} s | {'yes' if seconds['list warm'] <= 3 else 'no'} |",
        f"| a first run that grows with listing pages plus new manifests only | "
        f"+10 backups: {seconds['list +10']:.2f} s vs {seconds['list warm']:.2f} s warm | "
        f"{'yes' if seconds['list +10'] <= 1.5 * seconds['list warm'] else 'no'} |",
    ]
    if prune is not None:
        lines.append(
            f"| a prune of {result['pruned']} backups <= 20 s | {prune:.2f} s "
            f"({prune / deletes:.2f}x the bare deletes) | {'yes' if prune <= 20 else 'no'} |"
        )
    lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.catalog", description=__doc__)
    parser.add_argument("--backups", type=int, default=5000)
    parser.add_argument("--prune", type=int, default=1500)
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "CATALOG.md")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not 0 < args.prune < args.backups:
        parser.error("--prune must be between 1 and --backups - 1")
    with tempfile.TemporaryDirectory(prefix="drd-bench-catalog-") as tmp:
        result = run(args.backups, args.prune, Path(tmp))
    args.out.write_text(markdown(result))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
