"""Writing the HTML pages to files: `drd drill --html FILE` (its page, with the plan's last
drills as stored in its regions) and `drd report --out FILE` (drd.cli.report_command).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from drd import crypto
from drd.config.models import Plan
from drd.errors import UsageError
from drd.storage.base import Storage
from drd.verify.drill import read_stored_report, stored_drill_ids

#: drills shown in a drill page's history
HISTORY_DRILLS = 10


def check_output(option: str, path: Path) -> None:
    """Refuse an output file that cannot be written before any work is done (a drill takes
    minutes; finding out afterwards would throw its page away)."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a directory")
    if not parent.is_dir():
        raise UsageError(f"{option} {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"{option} {path}: directory {parent} is not writable")


def write_output(option: str, path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot write: {exc.strerror or exc}") from None
    print(f"wrote {path}", file=sys.stderr)


async def drill_history(
    plan: Plan, regions: Mapping[str, Storage], keyring: crypto.Keyring
) -> list[dict[str, Any]]:
    """The plan's last drills, as stored in its regions."""
    from drd.daemon.drill_loop import summary

    out = []
    for ident in (await stored_drill_ids(plan, regions))[-HISTORY_DRILLS:]:
        found = await read_stored_report(plan, regions, keyring, ident)
        if found is not None:
            out.append(summary(found))
    return out


async def drill_page(
    plan: Plan,
    regions: Mapping[str, Storage],
    keyring: crypto.Keyring,
    report: Mapping[str, Any],
) -> str:
    """The drill's page, with the plan's last drills as stored in `regions`."""
    from drd.verify.drill_html import render_drill_html

    return render_drill_html(report, await drill_history(plan, regions, keyring))
