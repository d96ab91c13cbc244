"""`drd wal-fetch --socket`: the restore_command of a recovery drd started and serves WAL to
(drd.pipeline.pitr.WalServer). A foundation module of the standard library only: it runs once per
WAL
file, in the restored server's process tree, and must start fast and need nothing of drd's
(no keys, no regions, no third-party packages).

Exit codes are restore_command's: 0 the file was written, 1 the archive does not have it
(PostgreSQL tries its own pg_wal or ends recovery), 126 recovery must stop (a gap, or no intact
copy: PostgreSQL aborts on codes above 125 instead of ending recovery early).
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

FETCH_OK = 0
FETCH_MISSING = 1
FETCH_FATAL = 126


def fetch_over_socket(socket_path: str, name: str, destination: str) -> int:
    """Ask the WalServer at `socket_path` for WAL file `name`; write it to `destination`.
    Returns the exit code restore_command must give (module docstring)."""

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(600)
            sock.connect(socket_path)
            sock.sendall(name.encode("ascii") + b"\n")
            stream = sock.makefile("rb")
            status = stream.readline().decode("utf-8", "replace").strip()
            word, _, rest = status.partition(" ")
            if word == "MISSING":
                return FETCH_MISSING
            if word != "OK":
                print(f"drd wal-fetch: {rest or status or 'no answer'}", file=sys.stderr)
                return FETCH_FATAL
            size = int(rest)
            data = stream.read(size)
    except (OSError, ValueError) as exc:
        print(f"drd wal-fetch: {socket_path}: {exc}", file=sys.stderr)
        return FETCH_FATAL
    if len(data) != size:
        print(f"drd wal-fetch: {name}: the answer was cut short", file=sys.stderr)
        return FETCH_FATAL
    path = Path(destination)
    temp = path.with_name(f".{path.name}.drd-{os.getpid()}")
    with open(temp, "wb") as out:
        out.write(data)
    os.replace(temp, path)
    return FETCH_OK
