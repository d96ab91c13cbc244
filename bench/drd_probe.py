"""Run the drd CLI exactly as its console script does, then record this process's own resource
usage (RUSAGE_SELF) and that of the children it reaped (RUSAGE_CHILDREN: pg_dump, pg_restore).

    python -m bench.drd_probe REPORT.json -- drd arguments...

The report is written even when drd fails, so a failed run still explains itself.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path
from typing import Any


def _usage(who: int) -> dict[str, Any]:
    ru = resource.getrusage(who)
    # Linux reports ru_maxrss in KiB.
    return {"user_s": ru.ru_utime, "sys_s": ru.ru_stime, "maxrss_bytes": ru.ru_maxrss * 1024}


def main(argv: list[str]) -> int:
    report, args = Path(argv[0]), argv[1:]
    if args[:1] == ["--"]:
        args = args[1:]
    code = 1
    try:
        from drd.cli.main import main as drd_main

        code = drd_main(args)
    finally:
        report.write_text(
            json.dumps(
                {
                    "self": _usage(resource.RUSAGE_SELF),
                    "children": _usage(resource.RUSAGE_CHILDREN),
                    "exit": code,
                }
            )
        )
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
