"""drd.verify.scratch.registry and the temporary-directory environment: a live owner's resources are
never swept, a dead owner's always are, and teardown survives the cancellation that stops a
test."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from drd.verify.scratch.registry import DIR_PREFIX, new_id, register, sweep_leftovers
from drd.verify.scratch.teardown import run_to_completion
from drd.verify.scratch.tempdir import scratch_dir


def records(state: Path) -> list[Path]:
    return sorted((state / "scratch").glob("*.json"))


async def test_live_records_are_left_alone_and_released_ones_vanish(tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with scratch_dir(state, tmp_path, label="billing/db") as directory:
        assert directory.name.startswith(DIR_PREFIX) and directory.is_dir()
        (record,) = records(state)
        data = json.loads(record.read_text())
        assert data["kind"] == "tempdir" and data["path"] == str(directory)
        assert data["label"] == "billing/db"
        # Our own live resource: the sweep (as at a second process's start) keeps it.
        assert await sweep_leftovers(state) == []
        assert directory.is_dir() and records(state) == [record]
    assert not directory.exists() and records(state) == []


async def test_teardown_on_error(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with pytest.raises(RuntimeError):
        async with scratch_dir(state, tmp_path, label="x") as directory:
            (directory / "restored").mkdir()
            (directory / "restored" / "ro").mkdir(mode=0o500)
            raise RuntimeError("restore failed")
    assert not directory.exists() and records(state) == []


def test_a_dead_owners_leftovers_are_swept(tmp_path: Path) -> None:
    state = tmp_path / "state"
    # A process that creates a scratch directory and dies without cleaning up (like kill -9).
    script = textwrap.dedent(
        f"""
        import asyncio, os
        from pathlib import Path
        from drd.verify.scratch.tempdir import scratch_dir

        async def main():
            async with scratch_dir(Path({str(state)!r}), Path({str(tmp_path)!r}), label="x") as d:
                (d / "restored").write_text("data")
                print(d, flush=True)
                os._exit(9)

        asyncio.run(main())
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=60
    )
    assert proc.returncode == 9, proc.stderr
    leftover = Path(proc.stdout.strip())
    assert leftover.is_dir() and len(records(state)) == 1
    removed = asyncio.run(sweep_leftovers(state))
    assert removed == [f"scratch directory {leftover}"]
    assert not leftover.exists() and records(state) == []


async def test_partial_records_and_tampered_records(tmp_path: Path) -> None:
    state = tmp_path / "state"
    directory = state / "scratch"
    directory.mkdir(parents=True)
    (directory / f".{new_id()}.json.partial").write_text("{")  # a crash before the rename
    outside = tmp_path / "precious"
    outside.mkdir()
    (directory / "aaaaaaaaaaaa.json").write_text(
        json.dumps({"id": "aaaaaaaaaaaa", "kind": "tempdir", "path": str(outside)})
    )
    (directory / "bbbbbbbbbbbb.json").write_text("not json")
    assert await sweep_leftovers(state) == []
    assert outside.is_dir()  # not a drd-scratch-* directory: never removed
    assert sorted(p.name for p in directory.iterdir()) == ["aaaaaaaaaaaa.json", "bbbbbbbbbbbb.json"]


async def test_register_then_release_and_abandon(tmp_path: Path) -> None:
    state = tmp_path / "state"
    kept = register(state, new_id(), "tempdir", path=str(tmp_path / f"{DIR_PREFIX}x"))
    kept.abandon()  # could not destroy: the record stays for the next sweep
    assert records(state) == [kept.path]
    gone = register(state, new_id(), "tempdir", path=str(tmp_path / f"{DIR_PREFIX}y"))
    gone.release()
    assert records(state) == [kept.path]
    assert len(await sweep_leftovers(state)) == 1
    assert records(state) == []


async def test_ephemeral_server_record_whose_server_is_gone(tmp_path: Path) -> None:
    root = tmp_path / f"{DIR_PREFIX}{new_id()}"
    (root / "data").mkdir(parents=True)
    (root / "data" / "postmaster.pid").write_text("999999999\n")  # no such process
    state = tmp_path / "state"
    registration = register(
        state,
        new_id(),
        "ephemeral-postgres",
        root=str(root),
        bin_dir="/usr/lib/postgresql/15/bin",
        run_as=None,
    )
    registration.abandon()
    assert await sweep_leftovers(state) == [f"ephemeral PostgreSQL server in {root}"]
    assert not root.exists()


async def test_teardown_survives_cancellation() -> None:
    finished = asyncio.Event()

    async def teardown() -> str:
        await asyncio.sleep(0.2)
        finished.set()
        return "done"

    async def test_body() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            await run_to_completion(teardown())

    task = asyncio.ensure_future(test_body())
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.sleep(0.05)
    task.cancel()  # a second cancellation during teardown (shutdown after a timeout)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished.is_set()
