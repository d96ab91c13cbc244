"""The scratch directory a recovered cluster is started in (drd.verify.scratch.recovered_postgres):
private, with drd's own socket-only pg_hba.conf and loopback settings, removed afterwards, and
removed by the next start's sweep when the drd that made it was killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from drd.verify.scratch.recovered_postgres import recovered_scratch
from drd.verify.scratch.registry import registry_dir, sweep_leftovers

BIN = Path("/usr/lib/postgresql/15/bin")


async def test_a_private_directory_with_a_socket_only_hba_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with recovered_scratch(state, bin_dir=BIN, run_as=None, parent=tmp_path) as scratch:
        root = scratch.root
        assert root.stat().st_mode & 0o777 == 0o700
        assert scratch.socket_dir.stat().st_mode & 0o777 == 0o700
        hba = (root / "pg_hba.conf").read_text().splitlines()
        assert [line for line in hba if not line.startswith("#")] == ["local all all trust"]
        options = scratch.server_options()
        for setting in ("listen_addresses=127.0.0.1", "jit=off", "archive_mode=off"):
            assert setting in options
        assert f"hba_file={root / 'pg_hba.conf'}" in options
        assert f"host={scratch.socket_dir}" in scratch.dsn("postgres", "postgres")
        assert list(registry_dir(state).glob("*.json"))
    assert not root.exists()
    assert list(registry_dir(state).glob("*.json")) == []


async def test_what_a_killed_drd_left_is_removed_by_the_next_sweep(tmp_path: Path) -> None:
    state = tmp_path / "state"
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from pathlib import Path
        from drd.verify.scratch.recovered_postgres import recovered_scratch

        async def main():
            async with recovered_scratch(
                Path({str(state)!r}), bin_dir=Path({str(BIN)!r}), run_as=None,
                parent=Path({str(tmp_path)!r}),
            ) as scratch:
                print(scratch.root, flush=True)
                await asyncio.sleep(60)

        asyncio.run(main())
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        root = Path(proc.stdout.readline().strip())
        assert root.is_dir()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert root.is_dir()  # nothing ran on the way out

    swept = await sweep_leftovers(state)

    assert len(swept) == 1, swept
    assert not root.exists()
    assert list(registry_dir(state).glob("*.json")) == []
