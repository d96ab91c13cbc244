"""The escape hatch: a command run against the restored copy; its exit status decides.

It runs in drd.yaml's directory with where-to-find-the-copy in its environment (PG* variables
and DRD_RESTORED_DSN for a database, DRD_RESTORED_PATH for a file or tree) plus DRD_PLAN,
DRD_SOURCE, DRD_BACKUP_ID and DRD_BACKUP_CAPTURED_AT. Nothing else of drd's environment that
names a database or a key reaches it: DRD_* and PG* variables inherited by drd are removed, so a
check can never connect to the source by accident. It runs in a process group of its own, killed
as a whole when it times out or the test is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping
from pathlib import Path

from drd.restore_tests.results import CheckResult
from drd.restore_tests.spec import CheckSpec
from drd.secret_source import child_environment

_OUTPUT_TAIL = 2000


def command_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """The check's environment: drd's own without secrets, DRD_* and the source's connection
    (PG*, DATABASE_URL), plus where the restored copy is."""
    inherited = [k for k in os.environ if k.startswith("PG") or k == "DATABASE_URL"]
    return child_environment(extra, drop=inherited)


async def _drain(stream: asyncio.StreamReader, tail: bytearray) -> None:
    while data := await stream.read(65536):
        tail += data
        del tail[:-_OUTPUT_TAIL]


async def command_check(
    check: CheckSpec, name: str, env: Mapping[str, str], cwd: Path
) -> CheckResult:
    command = check.command
    assert command is not None
    argv = list(command) if isinstance(command, list) else ["/bin/sh", "-c", command]
    shown = command if isinstance(command, str) else " ".join(command)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=command_environment(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        return CheckResult(
            name,
            "command",
            "failed",
            critical=check.critical,
            expected="exit status 0",
            actual="could not start",
            detail=f"{argv[0]}: {exc.strerror or exc}",
            query=shown,
        )
    tail = bytearray()
    assert proc.stdout is not None
    try:
        await _drain(proc.stdout, tail)
        returncode = await proc.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise
    output = tail.decode("utf-8", "replace").strip()
    ok = returncode == 0
    return CheckResult(
        name,
        "command",
        "passed" if ok else "failed",
        critical=check.critical,
        expected="exit status 0",
        actual=f"exit status {returncode}",
        detail=(output[-500:] if not ok else ""),
        query=shown,
    )
